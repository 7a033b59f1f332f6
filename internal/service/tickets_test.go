package service_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// startTicketServer starts a development service with session tickets on.
func startTicketServer(t testing.TB, opts service.TicketOptions) *testServer {
	t.Helper()
	srv := servicetest.Start(t, service.Options{Tickets: &opts})
	return &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
}

func TestSealOpenTicket(t *testing.T) {
	s := startTicketServer(t, service.TicketOptions{Deployment: "test"})
	ctx := context.Background()
	importFixture(t, s, "web", "p256-pkcs8.pem")
	importFixture(t, s, "api", "ed25519-pkcs8.pem")
	assert.Zero(t, servicetest.Metric(t, http.DefaultClient, s.rest, "handshaked_ticket_keys"), "a ticket key before the first ticket")

	sealed, err := s.kv.SealTicket(ctx, &pb.SealTicketRequest{Key: "web", Plaintext: []byte("session state")})
	require.NoError(t, err)
	assert.EqualValues(t, 7*24*3600, sealed.GetLifetimeSeconds())
	assert.NotContains(t, string(sealed.GetTicket()), "session state")
	opened, err := s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "web", Ticket: sealed.GetTicket()})
	require.NoError(t, err)
	assert.True(t, opened.GetAccepted())
	assert.Equal(t, []byte("session state"), opened.GetPlaintext())

	// A ticket opens only for the key it was sealed for, and untampered.
	opened, err = s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "api", Ticket: sealed.GetTicket()})
	require.NoError(t, err)
	assert.False(t, opened.GetAccepted(), "a ticket of key web opened for key api")
	assert.Empty(t, opened.GetPlaintext())
	tampered := bytes.Clone(sealed.GetTicket())
	tampered[len(tampered)-1] ^= 1
	opened, err = s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "web", Ticket: tampered})
	require.NoError(t, err)
	assert.False(t, opened.GetAccepted(), "a tampered ticket")

	// Caller mistakes.
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"seal: no such key", func() error {
			_, err := s.kv.SealTicket(ctx, &pb.SealTicketRequest{Key: "nope", Plaintext: []byte("x")})
			return err
		}, codes.NotFound},
		{"open: no such key", func() error {
			_, err := s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "nope", Ticket: sealed.GetTicket()})
			return err
		}, codes.NotFound},
		{"seal: empty plaintext", func() error {
			_, err := s.kv.SealTicket(ctx, &pb.SealTicketRequest{Key: "web"})
			return err
		}, codes.InvalidArgument},
		{"seal: plaintext too large", func() error {
			_, err := s.kv.SealTicket(ctx, &pb.SealTicketRequest{Key: "web", Plaintext: make([]byte, keyvault.MaxTicketPlaintext+1)})
			return err
		}, codes.InvalidArgument},
		{"open: ticket too large", func() error {
			_, err := s.kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "web", Ticket: make([]byte, keyvault.MaxTicketBytes+1)})
			return err
		}, codes.InvalidArgument},
	} {
		assert.Equal(t, tc.code.String(), status.Code(tc.call()).String(), tc.name)
	}

	// The same through REST.
	var restSealed struct {
		Ticket          []byte `json:"ticket"`
		LifetimeSeconds int    `json:"lifetimeSeconds"`
	}
	mustRest(t, s, http.MethodPost, "/v1/keys/web:sealTicket", map[string]any{"plaintext": base64.StdEncoding.EncodeToString([]byte("rest state"))}, &restSealed)
	require.NotEmpty(t, restSealed.Ticket)
	var restOpened struct {
		Accepted  bool   `json:"accepted"`
		Plaintext []byte `json:"plaintext"`
	}
	mustRest(t, s, http.MethodPost, "/v1/keys/web:openTicket", map[string]any{"ticket": restSealed.Ticket}, &restOpened)
	assert.True(t, restOpened.Accepted)
	assert.Equal(t, []byte("rest state"), restOpened.Plaintext)
	mustRest(t, s, http.MethodPost, "/v1/keys/api:openTicket", map[string]any{"ticket": restSealed.Ticket}, &restOpened)
	assert.False(t, restOpened.Accepted)
	code, body := s.restCall(t, http.MethodPost, "/v1/keys/web:sealTicket", map[string]any{}, nil)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	code, body = s.restCall(t, http.MethodPost, "/v1/keys/nope:openTicket", map[string]any{"ticket": restSealed.Ticket}, nil)
	assert.Equal(t, http.StatusNotFound, code, "%s", body)

	assert.Equal(t, 1.0, servicetest.Metric(t, http.DefaultClient, s.rest, "handshaked_ticket_keys"))
	assert.Equal(t, 1.0, servicetest.Metric(t, http.DefaultClient, s.rest, `handshaked_ticket_key_changes_total{change="created"}`))
	assert.Equal(t, 2.0, servicetest.Metric(t, http.DefaultClient, s.rest, `handshaked_tickets_sealed_total{via="api"}`))
	assert.Equal(t, 2.0, servicetest.Metric(t, http.DefaultClient, s.rest, `handshaked_tickets_opened_total{outcome="accepted",via="api"}`))
	assert.Equal(t, 3.0, servicetest.Metric(t, http.DefaultClient, s.rest, `handshaked_tickets_opened_total{outcome="rejected",via="api"}`))
}

func TestTicketsOff(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "web", "p256-pkcs8.pem")
	_, err := s.kv.SealTicket(context.Background(), &pb.SealTicketRequest{Key: "web", Plaintext: []byte("x")})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	_, err = s.kv.OpenTicket(context.Background(), &pb.OpenTicketRequest{Key: "web", Ticket: []byte("x")})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
}

// TestTicketKeyRotationAudited seals across a rotation and past the
// retirement of the first key: each change is in the audit log and the
// metrics, and the retired key's tickets are refused.
func TestTicketKeyRotationAudited(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	const rotation, lifetime = time.Hour, 2 * time.Hour
	s := startSecure(t, secureOptions{tickets: &service.TicketOptions{Deployment: "audit", Rotation: rotation, Lifetime: lifetime, Now: clock.Now}})
	s.adminImport(t, "web", "p256-pkcs8.pem", nil)
	kv := s.kv(t, "admin")
	ctx := context.Background()
	seal := func(state string) []byte {
		t.Helper()
		r, err := kv.SealTicket(ctx, &pb.SealTicketRequest{Key: "web", Plaintext: []byte(state)})
		require.NoError(t, err)
		return r.GetTicket()
	}
	accepted := func(ticket []byte) bool {
		t.Helper()
		r, err := kv.OpenTicket(ctx, &pb.OpenTicketRequest{Key: "web", Ticket: ticket})
		require.NoError(t, err)
		return r.GetAccepted()
	}
	first := seal("first")
	clock.Add(rotation)
	second := seal("second")
	assert.True(t, accepted(first), "a ticket of the previous key across the rotation")
	assert.Len(t, s.vault.TicketKeys(), 2)
	clock.Add(lifetime)
	third := seal("third") // rotates again and retires the first key
	assert.False(t, accepted(first), "a ticket of a retired key")
	assert.True(t, accepted(second))
	assert.True(t, accepted(third))
	assert.Len(t, s.vault.TicketKeys(), 2)

	var changes []string
	for _, e := range s.auditEntries(t) {
		switch e.Operation {
		case "ticket_keys.rotate", "ticket_keys.retire":
			changes = append(changes, e.Operation)
			assert.Equal(t, "OK", e.Outcome)
			assert.Regexp(t, `^ticket key [0-9a-f]{8} (created|retired) \(created .*, seals until .*, accepted until .*\); \d ticket keys held$`, e.Detail)
		case "KeyVault.OpenTicket":
			assert.Equal(t, "web", e.Key)
			assert.Contains(t, []string{"ticket accepted", "ticket rejected"}, e.Detail)
		}
	}
	assert.Equal(t, []string{"ticket_keys.rotate", "ticket_keys.rotate", "ticket_keys.retire", "ticket_keys.rotate"}, changes)
	assert.Equal(t, 3.0, servicetest.Metric(t, s.httpClient(t, ""), s.restURL, `handshaked_ticket_key_changes_total{change="created"}`))
	assert.Equal(t, 1.0, servicetest.Metric(t, s.httpClient(t, ""), s.restURL, `handshaked_ticket_key_changes_total{change="retired"}`))
}

// TestHandshakeResumptionAudited: through an edge stepping unary calls in
// production mode, a client's second connection resumes; its audit entry
// says so, and the handshakes' private-key operations stay at one.
func TestHandshakeResumptionAudited(t *testing.T) {
	s := startSecure(t, secureOptions{tickets: &service.TicketOptions{Deployment: "audit"}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	pool := service.AttachSelfSigned(t, s.vault, "key-a")
	front := startEdge(t, s, "key-a", pool, true)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	connect := func() bool {
		t.Helper()
		c, err := tls.Dial("tcp", front.l.Addr().String(), cfg)
		require.NoError(t, err)
		defer c.Close()
		server := <-front.conns
		defer server.Close()
		_, err = server.Write([]byte{1})
		require.NoError(t, err)
		// Reading takes in the TLS 1.3 NewSessionTicket sent before it.
		_, err = io.ReadFull(c, make([]byte, 1))
		require.NoError(t, err)
		return c.ConnectionState().DidResume
	}
	metrics := s.httpClient(t, "")
	signs := func() float64 {
		return servicetest.MetricSum(t, metrics, s.restURL, "handshaked_key_operation_seconds_count", `operation="sign"`, `source="handshake"`)
	}
	require.False(t, connect())
	require.Equal(t, 1.0, signs())
	assert.True(t, connect())
	assert.True(t, connect())
	assert.Equal(t, 1.0, signs(), "a resumed handshake signed")
	assert.Equal(t, 2.0, servicetest.Metric(t, metrics, s.restURL, `handshaked_handshakes_resumed_total{version="TLS 1.3"}`))
	assert.Equal(t, 2.0, servicetest.Metric(t, metrics, s.restURL, `handshaked_tickets_opened_total{outcome="accepted",via="handshake"}`))
	assert.Positive(t, servicetest.Metric(t, metrics, s.restURL, `handshaked_tickets_sealed_total{via="handshake"}`))

	var completed []string
	for _, e := range s.auditEntries(t) {
		if strings.HasPrefix(e.Detail, "HANDSHAKE_STATE_COMPLETE") {
			completed = append(completed, e.Detail)
		}
	}
	assert.Equal(t, []string{"HANDSHAKE_STATE_COMPLETE", "HANDSHAKE_STATE_COMPLETE resumed", "HANDSHAKE_STATE_COMPLETE resumed"}, completed)
}
