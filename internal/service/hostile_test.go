package service_test

// Attacks of issue 13, each reproduced on loopback at the sizes or
// scaled down with the same ratio to the limits, each showing the attack
// fails and other callers (the admin) are served throughout.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

// adminSigns checks that the admin is served while an attack goes on.
func adminSigns(t *testing.T, s *secureServer, admin pb.KeyVaultClient) {
	t.Helper()
	_, err := admin.Sign(context.Background(), signReq("key-a", p256Scheme))
	require.NoError(t, err, "the admin is not served during the attack")
}

// openIdle opens n streams as who, on conns connections, and sends nothing.
// It returns how many the service refused with RESOURCE_EXHAUSTED once
// want of them have been refused, and the others' errors as they end.
func openIdle(t *testing.T, s *secureServer, who string, conns, n int) (refused <-chan error, ended <-chan error) {
	t.Helper()
	refusedC, endedC := make(chan error, n), make(chan error, n)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	clients := make([]pb.KeyVaultClient, conns)
	for i := range clients {
		clients[i] = s.kv(t, who)
	}
	for i := range n {
		st, err := clients[i%conns].SignStream(ctx)
		require.NoError(t, err)
		go func() {
			_, err := st.Recv()
			if status.Code(err) == codes.ResourceExhausted {
				refusedC <- err
			} else {
				endedC <- err
			}
		}()
	}
	return refusedC, endedC
}

func receive(t *testing.T, c <-chan error, n int, what string) []error {
	t.Helper()
	var out []error
	timeout := time.After(30 * time.Second)
	for len(out) < n {
		select {
		case err := <-c:
			out = append(out, err)
		case <-timeout:
			require.FailNow(t, "timed out", "%s: %d of %d", what, len(out), n)
		}
	}
	return out
}

// TestNoGrantStreamFlood (issue 13 item 2): an identity with no grants
// opens more idle SignStreams, on two connections, than the service has
// in-flight slots (the 1,100 against 1,024, scaled to 35 against
// 32). Only its own share of streams stays open, unary calls are not
// touched, the admin signs and a TLS client gets through the edge
// throughout, and its idle streams end after the idle timeout, after which
// its share is free again.
func TestNoGrantStreamFlood(t *testing.T) {
	s := startSecure(t, secureOptions{limits: service.Limits{
		MaxInFlight: 32, MaxStreams: 32, StreamIdleTimeout: 2 * time.Second,
	}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	pool := service.AttachSelfSigned(t, s.vault, "key-a")
	admin := s.kv(t, "admin")
	edge := s.kv(t, "edge")
	// The edge in front, over the stream and over unary steps.
	fronts := []*edgeFront{startEdge(t, s, "key-a", pool, false), startEdge(t, s, "key-a", pool, true)}

	refused, ended := openIdle(t, s, "nobody", 2, 35)
	receive(t, refused, 35-8, "streams past nobody's share of 8 refused")
	adminSigns(t, s, admin)
	fronts[0].tlsClientServed(t, "streamed, during the no-grant stream flood")
	fronts[1].tlsClientServed(t, "unary, during the no-grant stream flood")
	_, err := edge.Sign(context.Background(), signReq("key-a", p256Scheme))
	require.NoError(t, err, "the edge is not served during the flood")
	// Another identity still opens streams, and they work.
	st, err := edge.SignStream(context.Background())
	require.NoError(t, err)
	require.NoError(t, st.Send(&pb.SignStreamRequest{Request: signReq("key-a", p256Scheme)}))
	resp, err := st.Recv()
	require.NoError(t, err)
	require.NotNil(t, resp.GetResponse(), "edge's stream: %v", resp.GetError())
	require.NoError(t, st.CloseSend())

	// Idle, nobody's streams end; then its share is free again.
	for _, err := range receive(t, ended, 8, "idle streams ended") {
		assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "idle stream: %v", err)
	}
	refused, _ = openIdle(t, s, "nobody", 1, 9)
	receive(t, refused, 1, "a second flood past the share refused")
	adminSigns(t, s, admin)
}

// TestEdgeCannotExhaustTheService (issue 13 item 1, service side): one
// identity, however busy, holds at most its share of the handshake streams
// and sessions; the admin's handshakes and signatures go on.
func TestEdgeCannotExhaustTheService(t *testing.T) {
	s := startSecure(t, secureOptions{
		limits:    service.Limits{MaxInFlight: 32, MaxStreams: 32},
		handshake: service.HandshakeOptions{MaxSessions: 40},
	})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	service.AttachSelfSigned(t, s.vault, "key-a")
	admin := s.kv(t, "admin")
	start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The edge opens handshake streams and never sends the ClientHello.
	hc := pb.NewHandshakeClient(s.dial(t, "edge"))
	refused := make(chan error, 12)
	for range 12 {
		st, err := hc.Stream(ctx)
		require.NoError(t, err)
		require.NoError(t, st.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: start}}))
		go func() {
			if _, err := st.Recv(); status.Code(err) == codes.ResourceExhausted {
				refused <- err
			}
		}()
	}
	receive(t, refused, 12-8, "streams past the edge's share of 8 refused")
	// Its unary sessions stop at its share of the sessions left.
	var err error
	for i := 0; i < 40 && err == nil; i++ {
		_, err = hc.StartHandshake(ctx, start)
	}
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "the edge filled the session store: %v", err)
	adminHS := pb.NewHandshakeClient(s.dial(t, "admin"))
	_, err = adminHS.StartHandshake(ctx, start)
	require.NoError(t, err, "the admin cannot start a handshake")
	adminSigns(t, s, admin)
}

func auditSize(t *testing.T, s *secureServer) int64 {
	t.Helper()
	fi, err := os.Stat(s.audit)
	require.NoError(t, err)
	return fi.Size()
}

// maxAuditLine bounds one audit line, whatever the request held: every
// field is cut to at most a few hundred bytes.
const maxAuditLine = 4 << 10

// TestAuditBoundedPerRefusedCall (issue 13 item 3): a Sign with a 3 MB key
// id and no certificate, and a StartHandshake with 200,000 key refs from an
// identity, add a bounded amount to the audit log per call; a flood of
// callers without a certificate is audited at their own tight rate, and the
// admin is served throughout.
func TestAuditBoundedPerRefusedCall(t *testing.T) {
	s := startSecure(t, secureOptions{limits: service.Limits{Rate: 1e6, Burst: 1e6, UnauthenticatedRate: 5}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	admin := s.kv(t, "admin")
	ctx := context.Background()
	huge := strings.Repeat("k", 3<<20)

	anonymous := s.kv(t, "")
	before := auditSize(t, s)
	const calls = 20
	for range calls {
		_, err := anonymous.Sign(ctx, signReq(huge, p256Scheme))
		assert.Contains(t, []codes.Code{codes.Unauthenticated, codes.ResourceExhausted}, status.Code(err), "%v", err)
	}
	grown := auditSize(t, s) - before
	assert.LessOrEqual(t, grown, int64(calls*maxAuditLine), "the audit log grew %d bytes for %d refused calls", grown, calls)
	adminSigns(t, s, admin)

	refs := make([]*pb.KeyRef, 200_000)
	for i := range refs {
		refs[i] = &pb.KeyRef{Key: "k" + strconv.Itoa(i%10)}
	}
	before = auditSize(t, s)
	_, err := pb.NewHandshakeClient(s.dial(t, "nobody")).StartHandshake(ctx, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: refs}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.LessOrEqual(t, auditSize(t, s)-before, int64(maxAuditLine))

	// A flood without a certificate: at most the burst and the rate's
	// worth is audited (5/s, burst 10 in all, a quarter per address).
	before = auditSize(t, s)
	begin := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				anonymous.Sign(ctx, signReq("key-a", p256Scheme))
			}
		})
	}
	wg.Wait()
	audited := 0
	for _, e := range s.auditEntries(t) {
		if e.Outcome == "UNAUTHENTICATED" && !e.Time.Before(begin) {
			audited++
		}
	}
	elapsed := time.Since(begin).Seconds()
	assert.LessOrEqual(t, float64(audited), 10+5*elapsed/4+1, "%d refusals audited in %.1fs", audited, elapsed)
	assert.LessOrEqual(t, auditSize(t, s)-before, int64(audited*maxAuditLine))
	adminSigns(t, s, admin)
}

// TestListingHidesUnseenKeys (issue 13 item 4): paging the listing one key
// at a time, an identity with no grants sees no key and no token carrying
// an id; the edge sees its two keys and nothing of the others; a token is
// good only for the caller it was given to; and creating over an existing
// key the caller cannot see is PERMISSION_DENIED, not ALREADY_EXISTS.
func TestListingHidesUnseenKeys(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ids := []string{"key-a", "key-rsa", "secret-1", "secret-2", "secret-3", "team-key"}
	for _, id := range ids {
		labels := map[string]string(nil)
		if id == "team-key" {
			labels = map[string]string{"team": "a"}
		}
		s.adminImport(t, id, "p256-pkcs8.pem", labels)
	}
	ctx := context.Background()
	page := func(kv pb.KeyVaultClient) (seen []string, tokens []string) {
		token := ""
		for range len(ids) + 2 {
			resp, err := kv.ListKeys(ctx, &pb.ListKeysRequest{PageSize: 1, PageToken: token})
			require.NoError(t, err)
			for _, k := range resp.GetKeys() {
				seen = append(seen, k.GetId())
			}
			if token = resp.GetNextPageToken(); token == "" {
				return seen, tokens
			}
			tokens = append(tokens, token)
		}
		require.FailNow(t, "the listing does not end")
		return nil, nil
	}
	leaks := func(tokens []string) {
		for _, tok := range tokens {
			raw, _ := base64.RawURLEncoding.DecodeString(tok)
			for _, id := range ids {
				assert.NotContains(t, string(raw), id, "a page token carries a key id")
				assert.NotContains(t, tok, id)
			}
		}
	}
	seen, tokens := page(s.kv(t, "nobody"))
	assert.Empty(t, seen)
	assert.Empty(t, tokens, "no key to show, yet a next page")
	seen, tokens = page(s.kv(t, "edge"))
	assert.Equal(t, []string{"key-a", "key-rsa"}, seen)
	leaks(tokens)
	seen, _ = page(s.kv(t, "admin"))
	assert.Equal(t, ids, seen)

	// REST, as the issue found it.
	r := s.rest(t, "nobody", "GET", "/v1/keys?pageSize=1", nil, nil)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.status)
	assert.JSONEq(t, `{"keys":[],"nextPageToken":""}`, string(r.body))

	// A token is the caller's: the manager cannot use the edge's.
	edgeFirst, err := s.kv(t, "edge").ListKeys(ctx, &pb.ListKeysRequest{PageSize: 1})
	require.NoError(t, err)
	require.NotEmpty(t, edgeFirst.GetNextPageToken())
	_, err = s.kv(t, "manager").ListKeys(ctx, &pb.ListKeysRequest{PageSize: 1, PageToken: edgeFirst.GetNextPageToken()})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	// The manager may create keys labelled team=a: over a key it cannot
	// see, as over one it has no right on; over its own, ALREADY_EXISTS.
	manager := s.kv(t, "manager")
	create := func(id string) error {
		_, err := manager.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519, Labels: map[string]string{"team": "a"}})
		return err
	}
	assert.Equal(t, codes.PermissionDenied, status.Code(create("secret-1")), "creating over an unseen key")
	assert.Equal(t, codes.AlreadyExists, status.Code(create("team-key")), "creating over its own key")
	assert.NoError(t, create("team-new"))
}

// TestRevocationStopsSessionsInProgress (issue 13 item 5): the edge starts
// a unary session and a stream; its grant is removed and the policy
// reloaded; the next step of each is PERMISSION_DENIED, and the unary
// session is gone.
func TestRevocationStopsSessionsInProgress(t *testing.T) {
	s := startSecure(t, secureOptions{})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	pool := service.AttachSelfSigned(t, s.vault, "key-a")
	hello := service.GoClientHello(t, pool)
	ctx := context.Background()
	hc := pb.NewHandshakeClient(s.dial(t, "edge"))
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}

	// Before revocation both go through.
	ok, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err)
	out, err := hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: ok.GetId(), Input: hello})
	require.NoError(t, err)
	require.NotEmpty(t, out.GetOutput(), "the server's flight")

	unary, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err)
	stream, err := hc.Stream(ctx)
	require.NoError(t, err)
	// The start carries the ClientHello, so its answer shows the stream's
	// session is running before the policy changes.
	require.NoError(t, stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: cfg, Input: hello}}}))
	flight, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, flight.GetState())

	revoked := strings.Replace(testPolicy, `"keys": ["key-a", "key-rsa"]`, `"keys": ["key-rsa"]`, 1)
	require.NotEqual(t, testPolicy, revoked)
	writeFile(t, s.policy, []byte(revoked), 0o644)
	require.NoError(t, s.srv.Reload())

	var rid requestID
	_, err = hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: unary.GetId(), Input: hello}, rid.opt())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "unary step after revocation: %v", err)
	assert.Equal(t, "PERMISSION_DENIED", s.auditFor(t, rid.String())[0].Outcome)
	_, err = hc.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: unary.GetId()})
	assert.Equal(t, codes.NotFound, status.Code(err), "the revoked session lives on: %v", err)

	require.NoError(t, stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: hello}}))
	_, err = stream.Recv()
	require.Equal(t, codes.PermissionDenied, status.Code(err), "stream input after revocation: %v", err)
}

// sessionsGauge reads handshaked_handshake_sessions from /metrics.
func sessionsGauge(t *testing.T, s *secureServer) float64 {
	t.Helper()
	resp, err := s.httpClient(t, "").Get(s.restURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^handshaked_handshake_sessions (\S+)$`).FindSubmatch(body)
	require.NotNil(t, m, "no sessions gauge")
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// partialClientHello is the start of a ClientHello that announces 65,000
// bytes and sends n: the engine must buffer it all and wait.
func partialClientHello(n int) []byte {
	msg := append([]byte{1, 0, 0xfd, 0xe8}, make([]byte, n-4)...)
	var out []byte
	for len(msg) > 0 {
		c := min(len(msg), 16000)
		out = append(out, 22, 3, 1, byte(c>>8), byte(c))
		out = append(out, msg[:c]...)
		msg = msg[c:]
	}
	return out
}

// TestSessionFloodPerIdentity (issue 13 item 6): one identity fills its
// share of the sessions, not the store, and of the input that unfinished
// handshakes may buffer (the 10,000 sessions and 64 KiB
// ClientHellos, scaled to 40 sessions and 32 KiB against a 256 KiB bound);
// the admin starts handshakes throughout; and the sessions gauge falls as
// the sessions expire.
func TestSessionFloodPerIdentity(t *testing.T) {
	// Long enough that the calls filling the edge's shares, slow on a
	// loaded machine (over a second seen), all come before its first
	// sessions expire and free their places.
	const ttl = 5 * time.Second
	s := startSecure(t, secureOptions{handshake: service.HandshakeOptions{MaxSessions: 40, SessionTTL: ttl, MaxInput: 256 << 10}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	service.AttachSelfSigned(t, s.vault, "key-a")
	ctx := context.Background()
	edge := pb.NewHandshakeClient(s.dial(t, "edge"))
	admin := pb.NewHandshakeClient(s.dial(t, "admin"))
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}

	// Input: 32 KiB held by each unfinished handshake; the edge's share
	// is 64 KiB.
	input := partialClientHello(32<<10 - 64) // with its record headers, within 32 KiB
	for i := range 2 {
		out, err := edge.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input})
		require.NoError(t, err, "session %d", i)
		require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, out.GetState())
	}
	_, err := edge.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input})
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "past the edge's input share: %v", err)
	_, err = admin.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input})
	require.NoError(t, err, "the admin's input refused for the edge's")

	// Sessions: the edge stops at its share of 10.
	started := 2
	for ; started < 40; started++ {
		if _, err = edge.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg}); err != nil {
			break
		}
	}
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.LessOrEqual(t, started, 10, "the edge held %d sessions", started)
	_, err = admin.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err, "the admin cannot start a handshake")
	assert.Greater(t, sessionsGauge(t, s), 0.0)

	// Expiry frees the sessions, and the gauge says so, with no new call.
	require.Eventually(t, func() bool { return sessionsGauge(t, s) == 0 }, ttl+10*time.Second, 100*time.Millisecond,
		"the sessions gauge stays up after the sessions expired")
	_, err = edge.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: input})
	require.NoError(t, err, "the edge's share is not free after expiry")
}

// TestDevelopmentModeRefusesCrossSite (issue 13 item 9): the issue's
// request (text/plain body, foreign Host, foreign Origin) does not sign
// with the development keys, nor does any one of its three traits; the
// same request as a local JSON client sends it does.
func TestDevelopmentModeRefusesCrossSite(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "dev-ec", "p256-sec1.pem")
	body := `{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","message":"aGk="}`
	send := func(contentType, host, origin string) int {
		req, err := http.NewRequest("POST", s.rest+"/v1/keys/dev-ec:sign", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		if host != "" {
			req.Host = host
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	port := s.rest[strings.LastIndex(s.rest, ":"):]
	assert.Equal(t, http.StatusOK, send("application/json", "", ""))
	assert.Equal(t, http.StatusOK, send("application/json; charset=utf-8", "localhost"+port, "http://localhost"+port))
	assert.Equal(t, http.StatusOK, send("application/json", "[::1]"+port, ""))
	assert.NotEqual(t, http.StatusOK, send("text/plain", "evil.example", "http://evil.example"), "the issue's request")
	assert.Equal(t, http.StatusUnsupportedMediaType, send("text/plain", "", ""))
	assert.Equal(t, http.StatusUnsupportedMediaType, send("application/x-www-form-urlencoded", "", ""))
	assert.Equal(t, http.StatusForbidden, send("application/json", "evil.example", ""), "DNS rebinding")
	assert.Equal(t, http.StatusForbidden, send("application/json", "", "http://evil.example"), "cross-site")
	assert.Equal(t, http.StatusForbidden, send("application/json", "", "null"), "an opaque origin")
}

// TestProductionRefusesCrossSite (issue 13 item 9, production): a page a
// certificate holder's browser visits cannot make it sign: a body that is
// not JSON and a foreign Origin are refused; the same call with the
// service's own Origin, or none, signs.
func TestProductionRefusesCrossSite(t *testing.T) {
	s := startSecure(t, secureOptions{})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	body := `{"scheme":"SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256","message":"aGk="}`
	send := func(contentType, origin string) int {
		req, err := http.NewRequest("POST", s.restURL+"/v1/keys/key-a:sign", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := s.httpClient(t, "edge").Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusOK, send("application/json", ""))
	assert.Equal(t, http.StatusOK, send("application/json", s.restURL), "the service's own origin")
	assert.Equal(t, http.StatusUnsupportedMediaType, send("text/plain", ""))
	assert.Equal(t, http.StatusForbidden, send("application/json", "https://evil.example"))
	assert.Equal(t, http.StatusForbidden, send("application/json", "null"))
}

// TestUnauthenticatedStreamsAndConnections (issue 13 item 10): health
// Watch streams without a certificate are capped per address (the issue's
// 10,000 scaled to 20 against 16); a TCP peer that never finishes its TLS
// handshake is cut at the handshake timeout; past the connection cap new
// connections wait until one closes. The admin is served throughout.
func TestUnauthenticatedStreamsAndConnections(t *testing.T) {
	s := startSecure(t, secureOptions{limits: service.Limits{HandshakeTimeout: 3 * time.Second, MaxConnections: 8}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	admin := s.kv(t, "admin")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	health := healthpb.NewHealthClient(s.dial(t, ""))
	refused := make(chan error, 20)
	for range 20 {
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		go func() {
			for {
				if _, err := w.Recv(); err != nil {
					refused <- err
					return
				}
			}
		}()
	}
	for _, err := range receive(t, refused, 20-16, "watches past 16 per address refused") {
		assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	}
	adminSigns(t, s, admin)

	// A silent TCP peer is cut after the handshake timeout.
	silent, err := net.Dial("tcp", s.grpcAddr)
	require.NoError(t, err)
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = silent.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the server kept a connection with no TLS handshake")

	// The connection cap: with 8 silent peers connected (more than the
	// slots left beside the admin's and the health connections), a new
	// TLS client is not even answered until the silent ones are cut.
	for range 8 {
		c, err := net.Dial("tcp", s.grpcAddr)
		require.NoError(t, err)
		defer c.Close()
	}
	tlsDial := func(timeout time.Duration) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", s.grpcAddr, &tls.Config{
			RootCAs: s.pki.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"},
			Certificates: s.clientTLS(t, "admin").Certificates,
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	assert.Error(t, tlsDial(500*time.Millisecond), "a connection past the cap was served")
	adminSigns(t, s, admin)
	require.Eventually(t, func() bool { return tlsDial(time.Second) == nil }, 20*time.Second, 100*time.Millisecond,
		"connections are not accepted again once the silent ones are cut")
}

// TestInvalidUTF8IsBadRequest (issue 13 item 11): a path or a page token
// that is not UTF-8 is the caller's mistake, 400, not 500.
func TestInvalidUTF8IsBadRequest(t *testing.T) {
	s := startServer(t)
	for _, path := range []string{"/v1/keys?pageToken=%ff", "/v1/keys/%ff", "/v1/keys/%c3%28/publicKey", "/v1/handshakes/%ff"} {
		code, body := s.restCall(t, "GET", path, nil, nil)
		assert.Equal(t, http.StatusBadRequest, code, "%s: %s", path, body)
		assert.Contains(t, string(body), `"code":3`, path)
	}
	code, _ := s.restCall(t, "GET", fmt.Sprintf("/v1/keys?pageToken=%s", "bm90LWEtdG9rZW4"), nil, nil)
	assert.Equal(t, http.StatusBadRequest, code, "a token this service did not give")
}
