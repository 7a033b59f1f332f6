package service_test

import (
	"context"
	"crypto/tls"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// Callers of Multiplex that do not read their answers, on a real gRPC
// connection whose windows stay at 64 KiB (no window growth), so that the
// service's Sends on a stream wait once about 128 KiB of its answers are
// unread (the client's stream window and the service's write quota).

// staticWindowConn is a connection to s whose stream and connection
// windows stay at 64 KiB.
func staticWindowConn(t *testing.T, s *testServer) pb.HandshakeClient {
	t.Helper()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pb.NewHandshakeClient(conn)
}

// unreadMux opens a Multiplex stream on hc whose answers are not read
// once it is served (one abort answered).
func unreadMux(t *testing.T, hc pb.HandshakeClient) pb.Handshake_MultiplexClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := hc.Multiplex(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&pb.MultiplexRequest{Handshake: 0, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.NotNil(t, resp.GetError(), "%v", resp)
	return stream
}

// floodUntilHeldBack sends starts with hello on stream, without reading,
// until its Sends wait: the service has stopped reading it. It returns how
// many it sent.
func floodUntilHeldBack(t *testing.T, stream pb.Handshake_MultiplexClient, cfg *pb.HandshakeConfig, hello []byte) int64 {
	t.Helper()
	var sent atomic.Int64
	go func() {
		for n := uint64(1); ; n++ {
			req := &pb.MultiplexRequest{Handshake: n, Request: &pb.MultiplexRequest_Start{Start: &pb.StartHandshakeRequest{Config: cfg, Input: hello}}}
			if stream.Send(req) != nil {
				return
			}
			sent.Add(1)
		}
	}()
	last := int64(-1)
	require.Eventually(t, func() bool {
		n := sent.Load()
		held := n == last
		last = n
		return held && n > 0
	}, 30*time.Second, 500*time.Millisecond, "the service keeps reading a stream whose answers are not read")
	return last
}

// unreadStarts is how many handshakes startUnread starts.
const unreadStarts = 56

// startUnread starts unreadStarts handshakes on stream with hello: about
// 150 KiB of answers, more than the windows let through, with fewer
// requests unanswered than the stream's bound (muxMaxQueued), so that the
// service waits for the caller's next request while an answer waits in
// Send.
func startUnread(t *testing.T, stream pb.Handshake_MultiplexClient, cfg *pb.HandshakeConfig, hello []byte) {
	t.Helper()
	for n := range uint64(unreadStarts) {
		require.NoError(t, stream.Send(&pb.MultiplexRequest{Handshake: n, Request: &pb.MultiplexRequest_Start{Start: &pb.StartHandshakeRequest{Config: cfg, Input: hello}}}))
	}
}

// TestMultiplexUnreadAnswers: a caller that stops reading the answers of
// a Multiplex stream whose handshakes wait for input does not hold their
// session slots past SessionTTL: each handshake expires SessionTTL after
// its start whatever the stream's sending is doing (here waiting in Send),
// and another stream on the same connection is served throughout.
func TestMultiplexUnreadAnswers(t *testing.T) {
	const ttl, sessions = 2 * time.Second, unreadStarts
	srv := servicetest.Start(t, service.Options{Handshake: service.HandshakeOptions{MaxSessions: sessions, MaxSessionsPerCaller: sessions, SessionTTL: ttl}})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
	hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
	hc := staticWindowConn(t, s)

	startUnread(t, unreadMux(t, hc), cfg, hello)

	other := openMux(t, hc)
	other.abort(1)
	assert.Equal(t, codes.NotFound, other.errCode(1), "another stream of the connection is served")
	// Every slot is freed, not only some: the other stream takes them all.
	n, held := uint64(0), 0
	require.Eventually(t, func() bool {
		n++
		other.start(n, cfg, nil)
		if other.next(n).GetStep() != nil {
			held++
		}
		return held == sessions
	}, ttl+10*time.Second, 20*time.Millisecond, "the unread stream's handshakes keep their slots past the session TTL")
}

// muxServed opens a Multiplex stream on hc and sends it an abort: OK if
// it is answered (NOT_FOUND, for no handshake), else the stream's code.
func muxServed(t *testing.T, hc pb.HandshakeClient) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := hc.Multiplex(ctx)
	require.NoError(t, err)
	if err := stream.Send(&pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}}); err != nil {
		_, err = stream.Recv()
		return status.Code(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return status.Code(err)
	}
	require.Equal(t, codes.NotFound, codes.Code(resp.GetError().GetCode()), "%v", resp)
	return codes.OK
}

// TestMultiplexUnreadStreamEnds: a Multiplex stream whose answers are
// not read does not hold its place (the caller's share of streams, its
// goroutines, its answers) for as long as the caller likes: held back or
// half-closed, it ends once no answer has been sent for the session TTL;
// left open and quiet, at the stream idle timeout, although an answer
// waits in Send.
func TestMultiplexUnreadStreamEnds(t *testing.T) {
	for _, c := range []struct {
		name      string
		ttl, idle time.Duration
		unread    func(t *testing.T, stream pb.Handshake_MultiplexClient, cfg *pb.HandshakeConfig, hello []byte)
	}{
		{"held back", 2 * time.Second, time.Minute, func(t *testing.T, stream pb.Handshake_MultiplexClient, cfg *pb.HandshakeConfig, hello []byte) {
			floodUntilHeldBack(t, stream, cfg, hello)
		}},
		{"half-closed", 2 * time.Second, time.Minute, func(t *testing.T, stream pb.Handshake_MultiplexClient, cfg *pb.HandshakeConfig, hello []byte) {
			startUnread(t, stream, cfg, hello)
			require.NoError(t, stream.CloseSend())
		}},
		{"quiet", time.Minute, 2 * time.Second, startUnread},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := servicetest.Start(t, service.Options{
				Limits:    service.Limits{MaxStreams: 1, StreamIdleTimeout: c.idle},
				Handshake: service.HandshakeOptions{MaxSessions: 100, MaxSessionsPerCaller: 100, SessionTTL: c.ttl},
			})
			s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
			key := newServerKey(t, s, "p256-sec1.pem", "ec.test")
			hello := clientHello(t, &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13})
			cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}}
			hc := staticWindowConn(t, s)

			c.unread(t, unreadMux(t, hc), cfg, hello)
			assert.Equal(t, codes.ResourceExhausted, muxServed(t, hc), "the unread stream holds the one stream allowed")
			assert.Eventually(t, func() bool { return muxServed(t, hc) == codes.OK }, 20*time.Second, 200*time.Millisecond,
				"the unread stream keeps its place")
		})
	}
}

// TestMultiplexQuietStreamsCost: a quiet Multiplex stream costs the
// service the goroutines of a Stream (the call's, waiting in the guard,
// and its handler's, which waits for a message: guardedStream.serve) and
// the one worker its answer needed, not a worker per core from its start:
// a connection may carry a thousand quiet streams.
func TestMultiplexQuietStreamsCost(t *testing.T) {
	s := startServer(t)
	hc := s.handshakeClient(t)
	unreadMux(t, hc) // the connection, and a first reader
	const streams = 50
	before := runtime.NumGoroutine()
	for range streams {
		unreadMux(t, hc)
	}
	perStream := float64(runtime.NumGoroutine()-before) / streams
	t.Logf("%.2f goroutines per quiet stream (GOMAXPROCS %d)", perStream, runtime.GOMAXPROCS(0))
	// The call's goroutine, its handler's, and one worker; a worker per
	// core from the start: 2 x GOMAXPROCS more.
	assert.LessOrEqual(t, perStream, 3.5, "goroutines per quiet stream")
}
