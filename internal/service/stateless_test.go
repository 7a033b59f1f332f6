package service_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// tokenStepper runs a stateless handshake, each call on the next of hcs:
// every step lands on another replica than the one before.
type tokenStepper struct {
	hcs    []pb.HandshakeClient
	start  *pb.StartHandshakeRequest
	calls  int
	id     string
	token  []byte
	tokens [][]byte // each step's token, in order
}

func (s *tokenStepper) step(input []byte) (*pb.HandshakeStep, error) {
	hc := s.hcs[s.calls%len(s.hcs)]
	s.calls++
	var out *pb.HandshakeStep
	var err error
	if s.calls == 1 {
		out, err = hc.StartHandshake(context.Background(), &pb.StartHandshakeRequest{Config: s.start.GetConfig(), Input: input, Stateless: true})
	} else {
		out, err = hc.StepHandshake(context.Background(), &pb.StepHandshakeRequest{Id: s.id, Input: input, StateToken: s.token})
	}
	if err != nil {
		return nil, err
	}
	s.id, s.token = out.GetId(), out.GetStateToken()
	if out.GetState() == pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		if len(s.token) == 0 {
			return nil, fmt.Errorf("NEED_INPUT step without a state token")
		}
		s.tokens = append(s.tokens, s.token)
	} else if len(s.token) > 0 {
		return nil, fmt.Errorf("%v step with a state token", out.GetState())
	}
	return out, nil
}

// statelessReplicas starts n replicas holding the same keys (an ECDSA and
// an RSA one) and the same step-token keys.
func statelessReplicas(t *testing.T, n int, opts service.Options) ([]*servicetest.Replica, []pb.HandshakeClient, servicetest.ServerKey, servicetest.ServerKey) {
	var ec, rsa servicetest.ServerKey
	replicas := servicetest.StartReplicas(t, n, opts, func(s *servicetest.Server) {
		ec = s.ServerKey(t, "ec", "p256-sec1.pem", "ec.test")
		rsa = s.ServerKey(t, "rsa", "rsa2048-pkcs1.pem", "rsa.test")
		// The step-token key is made on first use: here, so that the
		// copies of the store all hold it.
		_, err := pb.NewHandshakeClient(s.Conn).StartHandshake(context.Background(), &pb.StartHandshakeRequest{
			Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "ec"}}}, Stateless: true})
		require.NoError(t, err)
	})
	hcs := make([]pb.HandshakeClient, n)
	for i, r := range replicas {
		conn, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		hcs[i] = pb.NewHandshakeClient(conn)
	}
	return replicas, hcs, ec, rsa
}

// TestStatelessHandshakeAcrossReplicas: a Go crypto/tls client completes
// stateless handshakes whose every step runs on another replica, for TLS
// 1.3 (with and without HelloRetryRequest and client authentication) and
// TLS 1.2 (RSA key exchange, ECDHE); application data flows with the keys.
// A replica that never saw the handshake continues it; none holds it.
func TestStatelessHandshakeAcrossReplicas(t *testing.T) {
	_, hcs, ec, rsa := statelessReplicas(t, 3, service.Options{})
	client := testPKI(t).clients["edge"]
	clientCert, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	require.NoError(t, err)
	cases := []struct {
		name   string
		key    servicetest.ServerKey
		client *tls.Config
		config *pb.HandshakeConfig
		steps  int // StartHandshake and StepHandshake calls
	}{
		{"TLS13-ECDSA", ec, &tls.Config{MinVersion: tls.VersionTLS13}, nil, 2},
		{"TLS13-HRR", ec, &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}},
			&pb.HandshakeConfig{Groups: []uint32{uint32(tls.CurveP256)}}, 3},
		{"TLS13-client-auth", rsa, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{clientCert}},
			&pb.HandshakeConfig{ClientAuth: pb.ClientAuth_CLIENT_AUTH_REQUIRED, ClientCaPem: string(testPKI(t).ca.PEM)}, 2},
		{"TLS12-RSA-kx", rsa, &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}, nil, 2},
		{"TLS12-ECDHE-ECDSA", ec, &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}}, nil, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.config
			if cfg == nil {
				cfg = &pb.HandshakeConfig{}
			}
			cfg.Keys = []*pb.KeyRef{{Key: tc.key.ID}}
			tc.client.RootCAs, tc.client.ServerName = tc.key.Pool, tc.key.Name
			st := &tokenStepper{hcs: hcs, start: &pb.StartHandshakeRequest{Config: cfg}}
			state, r := runClient(t, tc.client, func() stepper { return st })
			require.True(t, state.HandshakeComplete)
			assert.Equal(t, tc.name == "TLS13-HRR", r.session.GetHelloRetryRequest())
			// crypto/tls sends no record_size_limit (RFC 8449): full records.
			assert.EqualValues(t, 1<<14, r.session.GetRecordPlaintextLimit())
			if tc.name == "TLS13-client-auth" {
				assert.Len(t, r.session.GetPeerCertificates(), 1)
			}
			assert.GreaterOrEqual(t, st.calls, tc.steps, "steps, each on another replica")
			for _, hc := range hcs {
				_, err := hc.GetHandshake(context.Background(), &pb.GetHandshakeRequest{Id: st.id})
				assert.Equal(t, codes.NotFound, status.Code(err), "a replica holds a stateless handshake")
			}
		})
	}
}

// replayingStepper sends every step of a stateless handshake twice, the
// second time to another replica: the replay repeats the step.
type replayingStepper struct {
	tokenStepper
	t        *testing.T
	replayed int
}

func (s *replayingStepper) step(input []byte) (*pb.HandshakeStep, error) {
	token, id := s.token, s.id
	out, err := s.tokenStepper.step(input)
	if err != nil || s.calls == 1 {
		return out, err
	}
	again, err := s.hcs[s.calls%len(s.hcs)].StepHandshake(context.Background(), &pb.StepHandshakeRequest{Id: id, Input: input, StateToken: token})
	require.NoError(s.t, err, "replayed step")
	s.replayed++
	assert.Equal(s.t, out.GetState(), again.GetState())
	assert.Equal(s.t, out.GetConsumed(), again.GetConsumed())
	if out.GetState() == pb.HandshakeState_HANDSHAKE_STATE_COMPLETE {
		assert.Equal(s.t, out.GetSession().GetKeys().GetClientApplicationTrafficSecret(), again.GetSession().GetKeys().GetClientApplicationTrafficSecret(),
			"a replayed completion derives the same session")
	}
	return out, nil
}

// TestStatelessTokenRules: the replay rules of stateless.go, each enforced.
func TestStatelessTokenRules(t *testing.T) {
	ctx := context.Background()
	server := func(ttl time.Duration) (*secureServer, pb.HandshakeClient, func(*testing.T) *pb.HandshakeStep) {
		s := startSecure(t, secureOptions{handshake: service.HandshakeOptions{SessionTTL: ttl}})
		s.adminImport(t, "key-a", "p256-sec1.pem", nil)
		pool := service.AttachSelfSigned(t, s.vault, "key-a")
		edge := pb.NewHandshakeClient(s.dial(t, "edge"))
		cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}
		hello := service.GoClientHello(t, pool)
		return s, edge, func(t *testing.T) *pb.HandshakeStep {
			out, err := edge.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: hello, Stateless: true})
			require.NoError(t, err)
			require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, out.GetState())
			require.NotEmpty(t, out.GetStateToken())
			return out
		}
	}
	s, edge, start := server(time.Minute)
	admin := pb.NewHandshakeClient(s.dial(t, "admin"))
	code := func(err error) codes.Code { return status.Code(err) }

	t.Run("bound to the caller", func(t *testing.T) {
		out := start(t)
		_, err := admin.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{21}, StateToken: out.GetStateToken()})
		assert.Equal(t, codes.PermissionDenied, code(err), "%v", err)
	})
	t.Run("bound to the session id", func(t *testing.T) {
		a, b := start(t), start(t)
		_, err := edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: b.GetId(), Input: []byte{21}, StateToken: a.GetStateToken()})
		assert.Equal(t, codes.InvalidArgument, code(err), "%v", err)
	})
	t.Run("sealed", func(t *testing.T) {
		out := start(t)
		for _, i := range []int{0, 5, len(out.GetStateToken()) / 2, len(out.GetStateToken()) - 1} {
			bad := append([]byte(nil), out.GetStateToken()...)
			bad[i] ^= 1
			_, err := edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{21}, StateToken: bad})
			assert.Equal(t, codes.InvalidArgument, code(err), "byte %d flipped: %v", i, err)
		}
	})
	t.Run("expiry fixed at the start", func(t *testing.T) {
		_, edge, start := server(2 * time.Second)
		out := start(t)
		// A step before the expiry does not extend it.
		step, err := edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{22, 3, 3}, StateToken: out.GetStateToken()})
		require.NoError(t, err)
		require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, step.GetState(), "%v", step.GetAlert())
		assert.True(t, step.GetExpireTime().AsTime().Equal(out.GetExpireTime().AsTime()), "a step moved the expiry")
		time.Sleep(time.Until(out.GetExpireTime().AsTime()) + 10*time.Millisecond)
		_, err = edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{1}, StateToken: step.GetStateToken()})
		assert.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
	})
	t.Run("no token after the end", func(t *testing.T) {
		out := start(t)
		failed, err := edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte("GET / HTTP/1.1\r\n\r\n"), StateToken: out.GetStateToken()})
		require.NoError(t, err)
		assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_FAILED, failed.GetState())
		assert.Empty(t, failed.GetStateToken())
		_, err = edge.GetHandshake(ctx, &pb.GetHandshakeRequest{Id: out.GetId()})
		assert.Equal(t, codes.NotFound, code(err))
		_, err = edge.AbortHandshake(ctx, &pb.AbortHandshakeRequest{Id: out.GetId()})
		assert.Equal(t, codes.NotFound, code(err))
	})
	t.Run("a changed chain ends it", func(t *testing.T) {
		out := start(t)
		service.AttachSelfSigned(t, s.vault, "key-a")
		_, err := edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{21}, StateToken: out.GetStateToken()})
		assert.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		assert.ErrorContains(t, err, "certificate chains or its configuration changed")
	})
	t.Run("a disabled version ends it", func(t *testing.T) {
		out := start(t)
		_, err := s.kv(t, "admin").RotateKey(ctx, &pb.RotateKeyRequest{Key: "key-a"})
		require.NoError(t, err)
		_, err = s.kv(t, "admin").DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: "key-a", Version: 1})
		require.NoError(t, err)
		_, err = edge.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: out.GetId(), Input: []byte{21}, StateToken: out.GetStateToken()})
		assert.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		assert.ErrorContains(t, err, "DISABLED")
	})
	var created bool
	for _, e := range s.auditEntries(t) {
		created = created || e.Operation == "step_token_keys.rotate" && strings.Contains(e.Detail, "step-token key")
	}
	assert.True(t, created, "the step-token key's creation was not audited")
}

// TestStatelessReplay: a token sent again repeats its step, on another
// replica, up to the same session.
func TestStatelessReplay(t *testing.T) {
	_, hcs, ec, _ := statelessReplicas(t, 2, service.Options{})
	st := &replayingStepper{t: t, tokenStepper: tokenStepper{hcs: hcs, start: &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: ec.ID}}}}}}
	runClient(t, &tls.Config{RootCAs: ec.Pool, ServerName: ec.Name}, func() stepper { return st })
	assert.Positive(t, st.replayed)
}

// TestStatelessSessionCap: a stateless handshake holds a session slot while
// one of its calls runs, not between them.
func TestStatelessSessionCap(t *testing.T) {
	ctx := context.Background()
	s := startServerWith(t, 2, time.Minute)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hc := s.handshakeClient(t)
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	held, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err)
	_, err = hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err)
	_, err = hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Stateless: true})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "a stateless start past the cap: %v", err)
	_, err = hc.AbortHandshake(ctx, &pb.AbortHandshakeRequest{Id: held.GetId()})
	require.NoError(t, err)
	var tokens []*pb.HandshakeStep
	for range 5 {
		out, err := hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Stateless: true})
		require.NoError(t, err)
		tokens = append(tokens, out)
	}
	_, err = hc.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg})
	require.NoError(t, err, "stateless handshakes between steps held a slot")
	_, err = hc.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: tokens[0].GetId(), Input: []byte{22}, StateToken: tokens[0].GetStateToken()})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "a stateless step past the cap: %v", err)
}

// restTokenStepper runs a stateless handshake over REST, protobuf JSON in
// both directions.
type restTokenStepper struct {
	t      *testing.T
	s      *testServer
	config *pb.HandshakeConfig
	id     string
	token  []byte
}

func (r *restTokenStepper) step(input []byte) (*pb.HandshakeStep, error) {
	var path string
	var req proto.Message
	if r.id == "" {
		path, req = "/v1/handshakes", &pb.StartHandshakeRequest{Config: r.config, Input: input, Stateless: true}
	} else {
		path, req = "/v1/handshakes/"+r.id+":step", &pb.StepHandshakeRequest{Input: input, StateToken: r.token}
	}
	body, err := protojson.Marshal(req)
	require.NoError(r.t, err)
	code, raw := r.s.restCall(r.t, "POST", path, body, nil)
	if code != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", code, raw)
	}
	out := &pb.HandshakeStep{}
	require.NoError(r.t, protojson.Unmarshal(raw, out))
	r.id, r.token = out.GetId(), out.GetStateToken()
	return out, nil
}

// TestStatelessOverREST: the REST mapping carries stateless handshakes,
// and a bad token gets the HTTP status of its gRPC code.
func TestStatelessOverREST(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.test")
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	for _, vers := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		st := &restTokenStepper{t: t, s: s, config: cfg}
		state, _ := runClient(t, &tls.Config{RootCAs: key.pool, ServerName: key.name, MinVersion: vers, MaxVersion: vers}, func() stepper { return st })
		assert.Equal(t, vers, state.Version)
	}
	st := &restTokenStepper{t: t, s: s, config: cfg}
	_, err := st.step(service.GoClientHello(t, key.pool))
	require.NoError(t, err)
	st.token[len(st.token)-1] ^= 1
	_, err = st.step([]byte{21})
	assert.ErrorContains(t, err, "HTTP 400")
}
