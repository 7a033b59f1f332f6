package service_test

// Issue 13 asks that a real TLS client through the edge, not only the
// admin, be served during each flood. These helpers put a real
// clients/go/edge listener in front of the production-mode test service,
// its SDK connection authenticated by the edge's client certificate.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

// edgeFront is an edge listener on loopback terminating TLS with key, and
// the connections it accepts.
type edgeFront struct {
	l     *edge.Listener
	conns chan net.Conn
	pool  *x509.CertPool // trusts the key's certificate
}

// startEdge starts an edge in front of s whose SDK client dials the
// service with the edge's mutual-TLS certificate, as in production. Unary
// steps the handshakes with StartHandshake/StepHandshake, else the
// stream.
func startEdge(t *testing.T, s *secureServer, key string, pool *x509.CertPool, unary bool) *edgeFront {
	t.Helper()
	client, err := handshaked.Dial(s.grpcAddr, handshaked.WithTLS(s.clientTLS(t, "edge")))
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e := &edgeFront{conns: make(chan net.Conn, 4), pool: pool, l: edge.NewListener(inner, &edge.Config{
		Client: client, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key}}}, Unary: unary,
		HandshakeTimeout: 5 * time.Second,
	})}
	t.Cleanup(func() { e.l.Close() })
	go func() {
		for {
			c, err := e.l.Accept()
			if err != nil {
				close(e.conns)
				return
			}
			e.conns <- c
		}
	}()
	return e
}

// tlsClientServed checks that a crypto/tls client completes a handshake
// through the edge and exchanges application data both ways.
func (e *edgeFront) tlsClientServed(t *testing.T, what string) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{RootCAs: e.pool, ServerName: "localhost"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", e.l.Addr().String())
	require.NoError(t, err, "%s: a TLS client's handshake through the edge failed", what)
	client := nc.(*tls.Conn)
	defer client.Close()
	require.NoError(t, client.SetDeadline(time.Now().Add(5*time.Second)))

	var server net.Conn
	select {
	case c, ok := <-e.conns:
		require.True(t, ok, "%s: the edge listener closed", what)
		server = c
	case <-time.After(5 * time.Second):
		require.FailNow(t, "the edge accepted no connection", what)
	}
	defer server.Close()
	require.NoError(t, server.SetDeadline(time.Now().Add(5*time.Second)))

	ping, pong := []byte("ping: "+what), []byte("pong: "+what)
	_, err = client.Write(ping)
	require.NoError(t, err, what)
	got := make([]byte, len(ping))
	_, err = io.ReadFull(server, got)
	require.NoError(t, err, "%s: the edge read", what)
	assert.Equal(t, ping, got, what)
	_, err = server.Write(pong)
	require.NoError(t, err, "%s: the edge write", what)
	got = make([]byte, len(pong))
	_, err = io.ReadFull(client, got)
	require.NoError(t, err, "%s: the client read", what)
	assert.Equal(t, pong, got, what)
}

// TestSessionFloodByAnotherIdentity (issue 13 item 6): another identity
// with use on the edge's key (the manager here) fills its share of the
// sessions and of the input that unfinished handshakes may buffer; the
// edge's TLS clients, over the stream and over unary steps, and the
// admin's Sign are served throughout.
func TestSessionFloodByAnotherIdentity(t *testing.T) {
	policy := `{"grants": [
  {"identities": ["` + idEdge + `"], "rights": ["use"], "keys": ["key-a"]},
  {"identities": ["` + idManager + `"], "rights": ["use"], "keys": ["key-a"]},
  {"identities": ["` + idAdmin + `"], "rights": ["admin"]}
]}`
	const maxSessions = 40
	s := startSecure(t, secureOptions{policy: policy, handshake: service.HandshakeOptions{
		MaxSessions: maxSessions, MaxInput: 256 << 10,
	}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	pool := service.AttachSelfSigned(t, s.vault, "key-a")
	admin := s.kv(t, "admin")
	fronts := []*edgeFront{startEdge(t, s, "key-a", pool, false), startEdge(t, s, "key-a", pool, true)}
	for _, f := range fronts {
		f.tlsClientServed(t, "before the flood")
	}

	// The flood: unfinished handshakes, each holding 32 KiB of a
	// ClientHello, until the manager's input share (64 KiB) is spent;
	// then sessions without input until its session share is.
	ctx := context.Background()
	flooder := pb.NewHandshakeClient(s.dial(t, "manager"))
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}
	input := partialClientHello(32<<10 - 64)
	var err error
	held := 0
	for ; held < maxSessions; held++ {
		if _, err = flooder.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input}); err != nil {
			break
		}
	}
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "the manager's input is not capped: %v", err)
	for ; held < maxSessions; held++ {
		if _, err = flooder.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg}); err != nil {
			break
		}
	}
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "the manager's sessions are not capped: %v", err)

	for i, f := range fronts {
		f.tlsClientServed(t, []string{"streamed, during the session flood", "unary, during the session flood"}[i])
	}
	adminSigns(t, s, admin)
}
