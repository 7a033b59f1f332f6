package service_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// muxClient is one Multiplex stream, its answers sorted by handshake
// number as they come.
type muxClient struct {
	t      testing.TB
	stream pb.Handshake_MultiplexClient
	cancel context.CancelFunc
	sendMu sync.Mutex
	mu     sync.Mutex
	byN    map[uint64]chan *pb.MultiplexResponse
	order  []uint64 // the numbers of the answers, as they came
	ended  chan error
}

func openMux(t testing.TB, hc pb.HandshakeClient) *muxClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := hc.Multiplex(ctx)
	require.NoError(t, err)
	m := &muxClient{t: t, stream: stream, cancel: cancel, byN: map[uint64]chan *pb.MultiplexResponse{}, ended: make(chan error, 1)}
	t.Cleanup(cancel)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				m.ended <- err
				return
			}
			m.mu.Lock()
			m.order = append(m.order, resp.GetHandshake())
			m.mu.Unlock()
			m.answers(resp.GetHandshake()) <- resp
		}
	}()
	return m
}

func (m *muxClient) answers(n uint64) chan *pb.MultiplexResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byN[n] == nil {
		m.byN[n] = make(chan *pb.MultiplexResponse, 64)
	}
	return m.byN[n]
}

func (m *muxClient) send(n uint64, req *pb.MultiplexRequest) {
	m.sendMu.Lock()
	defer m.sendMu.Unlock()
	req.Handshake = n
	require.NoError(m.t, m.stream.Send(req))
}

func (m *muxClient) start(n uint64, cfg *pb.HandshakeConfig, input []byte) {
	m.send(n, &pb.MultiplexRequest{Request: &pb.MultiplexRequest_Start{Start: &pb.StartHandshakeRequest{Config: cfg, Input: input}}})
}

func (m *muxClient) input(n uint64, input []byte) {
	m.send(n, &pb.MultiplexRequest{Request: &pb.MultiplexRequest_Input{Input: input}})
}

func (m *muxClient) abort(n uint64) {
	m.send(n, &pb.MultiplexRequest{Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}})
}

// next is the next answer for handshake n.
func (m *muxClient) next(n uint64) *pb.MultiplexResponse {
	m.t.Helper()
	select {
	case resp := <-m.answers(n):
		return resp
	case err := <-m.ended:
		m.ended <- err
		require.FailNow(m.t, "the multiplex stream ended", "waiting for handshake %d: %v", n, err)
	case <-time.After(20 * time.Second):
		require.FailNow(m.t, "no answer", "for handshake %d", n)
	}
	return nil
}

// step is the next answer for n, which must be a step.
func (m *muxClient) step(n uint64) *pb.HandshakeStep {
	m.t.Helper()
	resp := m.next(n)
	require.NotNil(m.t, resp.GetStep(), "handshake %d: %v", n, resp)
	return resp.GetStep()
}

// errCode is the code of the next answer for n, which must be an error.
func (m *muxClient) errCode(n uint64) codes.Code {
	m.t.Helper()
	resp := m.next(n)
	require.NotNil(m.t, resp.GetError(), "handshake %d: %v", n, resp)
	return codes.Code(resp.GetError().GetCode())
}

// muxStepper runs one handshake of a muxClient for relay.
type muxStepper struct {
	m       *muxClient
	n       uint64
	cfg     *pb.HandshakeConfig
	started bool
}

func (s *muxStepper) step(input []byte) (*pb.HandshakeStep, error) {
	if !s.started {
		s.started = true
		s.m.start(s.n, s.cfg, input)
	} else {
		s.m.input(s.n, input)
	}
	resp := s.m.next(s.n)
	if e := resp.GetError(); e != nil {
		return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return resp.GetStep(), nil
}

// TestMultiplexHandshakes: real crypto/tls clients, TLS 1.3 and TLS 1.2,
// ECDSA and RSA, complete their handshakes at once on one Multiplex
// stream and exchange data with the keys it returned.
func TestMultiplexHandshakes(t *testing.T) {
	s := startServer(t)
	ec := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	rsaKey := newServerKey(t, s, "rsa2048-pkcs1.pem", "rsa.test")
	m := openMux(t, s.handshakeClient(t))
	type client struct {
		key     serverKey
		version uint16
	}
	clients := []client{{ec, tls.VersionTLS13}, {ec, tls.VersionTLS12}, {rsaKey, tls.VersionTLS13}, {rsaKey, tls.VersionTLS12}, {ec, tls.VersionTLS13}, {rsaKey, tls.VersionTLS13}}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			cfg := &tls.Config{ServerName: c.key.name, RootCAs: c.key.pool, MinVersion: c.version, MaxVersion: c.version}
			state, _ := runClient(t, cfg, func() stepper {
				return &muxStepper{m: m, n: uint64(100 + i), cfg: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: c.key.id}}}}
			})
			assert.Equal(t, c.version, state.Version, "client %d", i)
		})
	}
	wg.Wait()
}

// TestMultiplexOrder: the requests of one handshake are answered in the
// order they came, even sent without waiting: a start without input, then
// the ClientHello.
func TestMultiplexOrder(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
	m := openMux(t, s.handshakeClient(t))
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	for n := range uint64(8) {
		m.start(n, cfg, nil)
		m.input(n, hello)
	}
	for n := range uint64(8) {
		first := m.step(n)
		assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, first.GetState(), "handshake %d", n)
		assert.Empty(t, first.GetOutput(), "handshake %d: the start had no input", n)
		second := m.step(n)
		assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, second.GetState(), "handshake %d", n)
		assert.NotEmpty(t, second.GetOutput(), "handshake %d: the server's flight", n)
	}
}

// TestMultiplexConcurrent: a slow step (an RSA-4096 signature) does not
// hold back the answers to requests of other handshakes sent after it.
func TestMultiplexConcurrent(t *testing.T) {
	s := startServer(t)
	slow := newServerKey(t, s, "rsa4096-pkcs1.pem", "rsa.test")
	fast := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: slow.name, RootCAs: slow.pool, MinVersion: tls.VersionTLS13})
	// On a loaded machine the service may read the others only after the
	// signature is done (this goroutine, or the service's reader, losing
	// the CPU for longer than it takes), and answer it first rightly. A
	// service that answers in the order it was asked does so every time:
	// only that fails.
	const attempts = 5
	var orders [][]uint64
	for range attempts {
		m := openMux(t, s.handshakeClient(t))
		m.start(1, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: slow.id}}}, hello)
		for n := range uint64(10) {
			m.start(10+n, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: fast.id}}}, nil)
		}
		assert.NotEmpty(t, m.step(1).GetOutput(), "the server's flight, signed")
		for n := range uint64(10) {
			m.step(10 + n)
		}
		m.mu.Lock()
		order := slices.Clone(m.order)
		m.mu.Unlock()
		if order[0] != 1 {
			return
		}
		orders = append(orders, order)
	}
	assert.Fail(t, "the slow step held back the others", "answers in order, in each of %d attempts: %v", attempts, orders)
}

// TestMultiplexBadInput: a request that names no handshake it can be for,
// or carries bad input, is answered with an error for its number alone:
// the stream and its other handshakes go on.
func TestMultiplexBadInput(t *testing.T) {
	s := startServer(t)
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	m := openMux(t, s.handshakeClient(t))

	m.input(7, hello)
	assert.Equal(t, codes.NotFound, m.errCode(7), "input before any start")
	m.abort(7)
	assert.Equal(t, codes.NotFound, m.errCode(7), "abort of no handshake")
	m.send(8, &pb.MultiplexRequest{})
	assert.Equal(t, codes.InvalidArgument, m.errCode(8), "neither start, input nor abort")

	m.start(1, cfg, nil)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, m.step(1).GetState())
	m.start(1, cfg, hello)
	assert.Equal(t, codes.AlreadyExists, m.errCode(1), "a start reusing a number in use")

	m.start(2, cfg, nil)
	m.step(2)
	m.input(2, nil)
	assert.Equal(t, codes.InvalidArgument, m.errCode(2), "empty input")
	m.input(2, hello)
	assert.Equal(t, codes.NotFound, m.errCode(2), "the error ended handshake 2")

	m.start(3, cfg, nil)
	m.step(3)
	m.input(3, make([]byte, 256<<10+1))
	assert.Equal(t, codes.InvalidArgument, m.errCode(3), "more than a step's input")

	m.start(4, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "no-such-key"}}}, hello)
	assert.Equal(t, codes.NotFound, m.errCode(4), "a start naming no key of the vault")

	// Handshake 1 was left alone by the start that reused its number.
	m.input(1, hello)
	step := m.step(1)
	assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, step.GetState())
	assert.NotEmpty(t, step.GetOutput())
	// And a new handshake completes on the same stream.
	runClient(t, &tls.Config{ServerName: key.name, RootCAs: key.pool}, func() stepper {
		return &muxStepper{m: m, n: 9, cfg: cfg}
	})
}

// TestMultiplexSessions: each handshake of a stream holds a session slot
// until it ends (completes, fails, is aborted, expires, or its stream
// ends); another stream cannot reach it.
func TestMultiplexSessions(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	srv := servicetest.Start(t, service.Options{Handshake: service.HandshakeOptions{MaxSessions: 2, MaxSessionsPerCaller: 2, SessionTTL: ttl}})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	hc := s.handshakeClient(t)
	m := openMux(t, hc)

	m.start(1, cfg, nil)
	m.step(1)
	m.start(2, cfg, nil)
	m.step(2)
	m.start(3, cfg, nil)
	assert.Equal(t, codes.ResourceExhausted, m.errCode(3), "past the session cap")

	// Another stream of the same caller reaches none of them.
	other := openMux(t, hc)
	other.input(1, hello)
	assert.Equal(t, codes.NotFound, other.errCode(1), "another stream's handshake")
	other.abort(2)
	assert.Equal(t, codes.NotFound, other.errCode(2), "another stream's handshake")

	m.abort(1)
	assert.NotNil(t, m.next(1).GetAborted(), "abort answered")
	m.start(4, cfg, nil)
	require.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, m.step(4).GetState(), "the aborted handshake's slot is free")

	// 2 and 4 get no input: they expire, and free their slots.
	assert.Equal(t, codes.DeadlineExceeded, m.errCode(2), "a handshake that got no input within the session TTL")
	assert.Equal(t, codes.DeadlineExceeded, m.errCode(4))
	m.start(5, cfg, nil)
	m.step(5)
	m.start(6, cfg, nil)
	m.step(6)

	// The end of the stream aborts 5 and 6.
	m.cancel()
	require.Eventually(t, func() bool {
		n := uint64(time.Now().UnixNano())
		other.start(n, cfg, nil)
		return other.next(n).GetStep() != nil
	}, 10*time.Second, 50*time.Millisecond, "the slots of a stream's handshakes are freed when it ends")
}

// TestMultiplexInputCap: the client bytes a stream's handshakes hold count
// against the caller's input cap; a handshake past it ends alone.
func TestMultiplexInputCap(t *testing.T) {
	srv := servicetest.Start(t, service.Options{Handshake: service.HandshakeOptions{MaxInput: 400}})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
	require.Greater(t, len(hello), 100, "the caller may hold 100 bytes")
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	m := openMux(t, s.handshakeClient(t))
	m.start(1, cfg, hello)
	assert.Equal(t, codes.ResourceExhausted, m.errCode(1))
	m.start(2, cfg, []byte{22, 3, 1, 0, 1})
	assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, m.step(2).GetState(), "a handshake within the cap, on the same stream")
}

// TestMultiplexProduction: in production mode each request is authorized
// as a Stream's message would be (the start's keys, then use on them
// again by the policy in force at each input), rate-limited, and audited
// in an entry its own answer completes.
func TestMultiplexProduction(t *testing.T) {
	s := startSecure(t, secureOptions{})
	s.adminImport(t, "key-a", "p256-sec1.pem", nil)
	s.adminImport(t, "key-b", "p384-sec1.pem", nil)
	attachSelfSigned(t, s, "key-a")
	attachSelfSigned(t, s, "key-b")
	hello := clientHello(t, &tls.Config{ServerName: "key-a.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	m := openMux(t, pb.NewHandshakeClient(s.dial(t, "edge")))

	m.start(1, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}, {Key: "key-b"}}}, hello)
	assert.Equal(t, codes.PermissionDenied, m.errCode(1), "key-b is not the edge's")
	m.start(2, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}, nil)
	assert.Equal(t, pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT, m.step(2).GetState())
	m.start(3, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}, nil)
	m.step(3)
	m.start(4, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}, hello)
	assert.NotEmpty(t, m.step(4).GetOutput(), "the server's flight")

	// Revoked between the start and the input: the input is refused and
	// handshake 2 ends; the stream goes on.
	writeFile(t, s.policy, []byte(`{"grants": [{"identities": ["`+idEdge+`"], "rights": ["use"], "keys": ["key-rsa"]}]}`), 0o644)
	require.NoError(t, s.srv.Reload())
	m.input(2, hello)
	assert.Equal(t, codes.PermissionDenied, m.errCode(2), "use re-checked at each input")
	m.input(2, hello)
	assert.Equal(t, codes.NotFound, m.errCode(2), "the refusal ended handshake 2")
	m.abort(3)
	assert.Equal(t, codes.PermissionDenied, m.errCode(3), "an abort needs use on the keys too")

	var entries []string
	for _, e := range s.auditEntries(t) {
		if e.Operation == "Handshake.Multiplex" {
			entries = append(entries, fmt.Sprintf("%s %s %v %s", e.Handshake, e.Outcome, e.Keys, e.Detail))
		}
	}
	denied := `"` + idEdge + `" needs use on key `
	// An entry is written once its answer is sent: entries of different
	// handshakes may come in another order than the test's requests.
	assert.ElementsMatch(t, []string{
		"multiplex:1 PERMISSION_DENIED [key-a key-b] " + denied + `"key-b"`,
		"multiplex:2 OK [key-a] HANDSHAKE_STATE_NEED_INPUT",
		"multiplex:3 OK [key-a] HANDSHAKE_STATE_NEED_INPUT",
		"multiplex:4 OK [key-a] HANDSHAKE_STATE_NEED_INPUT",
		"multiplex:2 PERMISSION_DENIED [] " + denied + `"key-a"`,
		"multiplex:2 NOT_FOUND [] ",
		"multiplex:3 PERMISSION_DENIED [] " + denied + `"key-a"`,
	}, entries, "one entry per request, completed by its answer")
}

// TestMultiplexRateLimit: every request counts against the caller's rate;
// one past it is refused for its handshake, and the stream goes on.
func TestMultiplexRateLimit(t *testing.T) {
	s := startSecure(t, secureOptions{limits: service.Limits{Rate: 2, Burst: 3}})
	s.adminImport(t, "key-a", "p256-sec1.pem", nil)
	attachSelfSigned(t, s, "key-a")
	m := openMux(t, pb.NewHandshakeClient(s.dial(t, "edge")))
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "key-a"}}}
	// The stream took one token, the two starts the rest.
	m.start(1, cfg, nil)
	m.start(2, cfg, nil)
	m.start(3, cfg, nil)
	m.step(1)
	m.step(2)
	assert.Equal(t, codes.ResourceExhausted, m.errCode(3), "past the rate")
	n := uint64(10)
	require.Eventually(t, func() bool {
		n++
		m.start(n, cfg, nil)
		return m.next(n).GetStep() != nil
	}, 10*time.Second, 200*time.Millisecond, "the stream goes on once the rate allows")
}

// attachSelfSigned gives version 1 of key id a self-signed certificate for
// id.test.
func attachSelfSigned(t *testing.T, s *secureServer, id string) {
	t.Helper()
	der, err := s.vault.CreateSelfSignedCertificate(context.Background(), id, 1, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id + ".test"}, DNSNames: []string{id + ".test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	})
	require.NoError(t, err)
	_, err = s.kv(t, "admin").AttachCertificateChain(context.Background(), &pb.AttachCertificateChainRequest{Key: id, Version: 1, CertificateChain: [][]byte{der}})
	require.NoError(t, err)
}

// FuzzMultiplex sends a stream of requests decoded from the fuzzer's bytes
// (starts, inputs and aborts, on a few numbers, with bytes of its own or a
// real ClientHello), half-closes it, and checks that every request got
// exactly one answer, for its own number, and the stream ended cleanly.
func FuzzMultiplex(f *testing.F) {
	s := startServer(f)
	key := newServerKey(f, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(f, &tls.Config{ServerName: key.name, RootCAs: key.pool})
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, OmitTrace: true}
	hc := s.handshakeClient(f)
	f.Add([]byte{0, 1, 0, 1, 1, 0, 2, 1, 0})
	f.Add([]byte{0, 1, 0xff, 0, 1, 0, 1, 1, 3, 22, 3, 1, 2, 1, 0})
	f.Add([]byte{1, 5, 0, 2, 5, 0, 0, 5, 0xff, 0, 5, 0xff, 3, 7, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stream, err := hc.Multiplex(ctx)
		require.NoError(t, err)
		// Read while sending, as every caller must: answers not read stop
		// the service reading (flow control), which would stop the sending.
		got := map[uint64]int{}
		ended := make(chan error, 1)
		go func() {
			for {
				resp, err := stream.Recv()
				if err != nil {
					ended <- err
					return
				}
				got[resp.GetHandshake()]++
			}
		}()
		sent := map[uint64]int{}
		var requests int
		// Each request: op (start, input, abort, empty), number, then a
		// length byte and that many bytes (0xff: the ClientHello).
		for len(script) >= 3 && requests < 32 {
			op, n, size := script[0]%4, uint64(script[1]%4), int(script[2])
			script = script[3:]
			input := hello
			if size != 0xff {
				size = min(size, len(script))
				input, script = script[:size], script[size:]
			}
			req := &pb.MultiplexRequest{Handshake: n}
			switch op {
			case 0:
				req.Request = &pb.MultiplexRequest_Start{Start: &pb.StartHandshakeRequest{Config: cfg, Input: input}}
			case 1:
				req.Request = &pb.MultiplexRequest_Input{Input: input}
			case 2:
				req.Request = &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}
			}
			require.NoError(t, stream.Send(req))
			sent[n]++
			requests++
		}
		require.NoError(t, stream.CloseSend())
		select {
		case err := <-ended:
			require.ErrorIs(t, err, io.EOF, "the stream ended with an error")
		case <-time.After(20 * time.Second):
			require.FailNow(t, "the stream did not end")
		}
		assert.Equal(t, sent, got, "answers per handshake number")
	})
}
