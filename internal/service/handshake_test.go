package service_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

func (s *testServer) handshakeClient(t testing.TB) pb.HandshakeClient {
	t.Helper()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewHandshakeClient(conn)
}

// runClient runs a crypto/tls client against a relay on loopback TCP and
// checks application data in both directions with the returned keys.
func runClient(t *testing.T, cfg *tls.Config, newStepper func() stepper) (tls.ConnectionState, *relayed) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		r   *relayed
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		r, err := relay(c, newStepper())
		if err != nil {
			c.Close()
			done <- result{err: err}
			return
		}
		// Echo one message back, then close cleanly.
		msg, err := r.readData()
		if err == nil {
			err = r.write(23, append([]byte("echo: "), msg...))
		}
		if err == nil {
			err = r.closeNotify()
		}
		done <- result{r, err}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), cfg)
	if err != nil {
		res := <-done
		t.Fatalf("client handshake: %v (relay: %v)", err, res.err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte("ping from the client")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 100)
	// The echo and the close_notify may arrive in one Read: n > 0 with EOF.
	n, err := io.ReadFull(conn, got[:len("echo: ping from the client")])
	if err != nil {
		res := <-done
		t.Fatalf("client read: %v (relay: %v)", err, res.err)
	}
	if string(got[:n]) != "echo: ping from the client" {
		t.Fatalf("client got %q", got[:n])
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("relay: %v", res.err)
	}
	return conn.ConnectionState(), res.r
}

// TestHandshakeThroughService: Go's crypto/tls client completes handshakes
// through the service over each transport (gRPC stream, gRPC unary, REST),
// for TLS 1.3 and TLS 1.2 with RSA key exchange and ECDHE, with SNI picking
// among two keys and ALPN; application data flows both ways with the
// returned keys through the shared record package.
func TestHandshakeThroughService(t *testing.T) {
	s := startServer(t)
	rsaKey := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.test")
	ecKey := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	start := func(suites ...uint16) *pb.StartHandshakeRequest {
		cfg := &pb.HandshakeConfig{
			Keys:          []*pb.KeyRef{{Key: rsaKey.id}, {Key: ecKey.id}},
			AlpnProtocols: []string{"h2", "http/1.1"},
		}
		for _, id := range suites {
			cfg.CipherSuites = append(cfg.CipherSuites, uint32(id))
		}
		return &pb.StartHandshakeRequest{Config: cfg}
	}
	transports := map[string]func(*pb.StartHandshakeRequest) func() stepper{
		"grpc-stream": func(req *pb.StartHandshakeRequest) func() stepper {
			return func() stepper {
				stream, err := hc.Stream(context.Background())
				if err != nil {
					t.Error(err)
				}
				return &streamStepper{stream: stream, start: req}
			}
		},
		"grpc-unary": func(req *pb.StartHandshakeRequest) func() stepper {
			return func() stepper { return &unaryStepper{hc: hc, start: req} }
		},
		"rest": func(req *pb.StartHandshakeRequest) func() stepper {
			return func() stepper { return &restStepper{t: t, s: s, start: req} }
		},
	}
	cases := []struct {
		name    string
		key     serverKey
		version uint16
		suite   uint16
	}{
		{"TLS13-ECDSA", ecKey, tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256},
		{"TLS13-RSA-CHACHA", rsaKey, tls.VersionTLS13, tls.TLS_CHACHA20_POLY1305_SHA256},
		{"TLS12-RSA-kx", rsaKey, tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
		{"TLS12-ECDHE-ECDSA", ecKey, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
		{"TLS12-ECDHE-RSA-CHACHA", rsaKey, tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256},
	}
	for tname, transport := range transports {
		for _, tc := range cases {
			t.Run(tname+"/"+tc.name, func(t *testing.T) {
				cfg := &tls.Config{
					ServerName: tc.key.name, RootCAs: tc.key.pool, NextProtos: []string{"http/1.1"},
					MinVersion: tc.version, MaxVersion: tc.version,
				}
				req := start()
				if tc.version == tls.VersionTLS12 {
					cfg.CipherSuites = []uint16{tc.suite}
				} else {
					req = start(tc.suite, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
				}
				state, r := runClient(t, cfg, transport(req))
				if state.Version != tc.version || state.CipherSuite != tc.suite || state.NegotiatedProtocol != "http/1.1" {
					t.Fatalf("client negotiated %x %s %q", state.Version, tls.CipherSuiteName(state.CipherSuite), state.NegotiatedProtocol)
				}
				sess := r.session
				if sess.GetServerName() != tc.key.name || sess.GetAlpnProtocol() != "http/1.1" || uint16(sess.GetCipherSuite()) != tc.suite {
					t.Fatalf("service reported %v", sess)
				}
			})
		}
	}
}

func TestHandshakeSessionLifecycle(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	ctx := context.Background()
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	started, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if started.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT || started.GetId() == "" || started.GetExpireTime() == nil {
		t.Fatalf("start: %v", started)
	}
	got, err := hc.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: started.GetId()})
	if err != nil || got.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		t.Fatalf("get: %v %v", got, err)
	}
	// Garbage from the "client" fails the handshake with an alert to send,
	// as a FAILED step (status OK), not an RPC error.
	failed, err := hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: started.GetId(), Input: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	if failed.GetState() != pb.HandshakeState_HANDSHAKE_STATE_FAILED || len(failed.GetAlert().GetRecord()) == 0 || failed.GetAlert().GetName() == "" {
		t.Fatalf("garbage: %v", failed)
	}
	_, err = hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: started.GetId(), Input: []byte{22}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("step after failure: %v", err)
	}
	got, err = hc.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: started.GetId()})
	if err != nil || got.GetState() != pb.HandshakeState_HANDSHAKE_STATE_FAILED {
		t.Fatalf("get after failure: %v %v", got, err)
	}
	if _, err := hc.AbortHandshake(ctx, &pb.AbortHandshakeRequest{Id: started.GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: started.GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after abort: %v", err)
	}
}

// TestHandshakeSessionCapAndExpiry: past the cap StartHandshake is
// RESOURCE_EXHAUSTED; an expired session is NOT_FOUND and frees its slot.
func TestHandshakeSessionCapAndExpiry(t *testing.T) {
	// Long enough that the calls filling the cap, slow on a loaded
	// machine, all come before the first session expires.
	const ttl = 2 * time.Second
	s := startServerWith(t, 3, ttl)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	ctx := context.Background()
	req := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}}
	var first *pb.HandshakeStep
	for i := 0; i < 3; i++ {
		out, err := hc.StartHandshake(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = out
		}
	}
	if _, err := hc.StartHandshake(ctx, req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("past the cap: %v", err)
	}
	// A stream counts against the same cap.
	stream, err := hc.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: req}})
	if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream past the cap: %v", err)
	}
	time.Sleep(time.Until(first.GetExpireTime().AsTime()))
	if _, err := hc.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: first.GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("expired session: %v", err)
	}
	// Its slot is freed by a timer at its expiry, which a loaded machine
	// runs late.
	require.Eventually(t, func() bool {
		_, err := hc.StartHandshake(ctx, req)
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "the expired session's slot is not freed")
}

func TestHandshakeBadInput(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	bare := uniqueID("bare")
	importFixture(t, s, bare, "p384-sec1.pem")
	hc := s.handshakeClient(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  *pb.HandshakeConfig
		want codes.Code
	}{
		{"no keys", &pb.HandshakeConfig{}, codes.InvalidArgument},
		{"unknown key", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "no-such-key"}}}, codes.NotFound},
		{"key without a chain", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: bare}}}, codes.FailedPrecondition},
		{"unknown suite", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, CipherSuites: []uint32{0x0005}}, codes.InvalidArgument},
		{"unknown group", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, Groups: []uint32{0x1234}}, codes.InvalidArgument},
		{"empty ALPN name", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, AlpnProtocols: []string{""}}, codes.InvalidArgument},
		{"client auth without roots", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, ClientAuth: pb.ClientAuth_CLIENT_AUTH_REQUIRED}, codes.InvalidArgument},
		{"garbage roots", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, ClientAuth: pb.ClientAuth_CLIENT_AUTH_REQUIRED, ClientCaPem: "junk"}, codes.InvalidArgument},
		{"min above max", &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, MinVersion: pb.TLSVersion_TLS_VERSION_1_3, MaxVersion: pb.TLSVersion_TLS_VERSION_1_2}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: tc.cfg})
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			checkRESTStatus(t, s, "POST", "/v1/handshakes", map[string]any{"config": tc.cfg}, tc.want)
		})
	}
	if _, err := hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown session: %v", err)
	}
	big := bytes.Repeat([]byte{22}, 300<<10)
	started, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: started.GetId(), Input: big}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("oversized input: %v", err)
	}
	// The stream: a first message that is not start is INVALID_ARGUMENT.
	stream, err := hc.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: []byte{22}}})
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "start") {
		t.Fatalf("stream without start: %v", err)
	}
}

// TestSessionKeysReturnedOnce: after the completing step, GetHandshake shows
// the negotiated parameters but never the session keys.
func TestSessionKeysReturnedOnce(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	st := &unaryStepper{hc: hc, start: &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}}}
	_, r := runClient(t, &tls.Config{ServerName: key.name, RootCAs: key.pool}, func() stepper { return st })
	if r.session.GetKeys().GetClientApplicationTrafficSecret() == nil {
		t.Fatal("the completing step carried no keys")
	}
	got, err := hc.GetHandshake(context.Background(), &pb.GetHandshakeRequest{Id: st.id})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetState() != pb.HandshakeState_HANDSHAKE_STATE_COMPLETE || got.GetSession().GetServerName() != key.name ||
		got.GetSession().GetCipherSuite() != r.session.GetCipherSuite() {
		t.Fatalf("GetHandshake after completion: %v", got)
	}
	if got.GetSession().GetKeys() != nil {
		t.Fatal("GetHandshake returned the session keys again")
	}
}
