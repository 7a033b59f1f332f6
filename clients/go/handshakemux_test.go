package handshaked_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/edge"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// muxStreams counts the handshake streams a client opens, by method, and
// the Multiplex streams that have ended; with missing set, Multiplex goes
// to a method the service does not have, as with a service from before
// Multiplex (which answers UNIMPLEMENTED).
type muxStreams struct {
	missing atomic.Bool
	mu      sync.Mutex
	opened  map[string]int
	ended   atomic.Int32
}

func (m *muxStreams) get(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.opened[method]
}

func (m *muxStreams) option() handshaked.Option {
	return handshaked.WithDialOptions(grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		m.mu.Lock()
		if m.opened == nil {
			m.opened = map[string]int{}
		}
		m.opened[method]++
		m.mu.Unlock()
		if method != pb.Handshake_Multiplex_FullMethodName {
			return streamer(ctx, desc, cc, method, opts...)
		}
		if m.missing.Load() {
			method = "/handshake.v1.Handshake/MultiplexNotHere"
		}
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &endWatch{ClientStream: cs, ended: &m.ended}, nil
	}))
}

// endWatch counts its stream's end.
type endWatch struct {
	grpc.ClientStream
	ended *atomic.Int32
	once  sync.Once
}

func (s *endWatch) RecvMsg(msg any) error {
	err := s.ClientStream.RecvMsg(msg)
	if err != nil {
		s.once.Do(func() { s.ended.Add(1) })
	}
	return err
}

// tlsThroughEdge runs n crypto/tls handshakes at once, each through
// edge.Server stepping it with c, and checks data goes through each.
func tlsThroughEdge(t *testing.T, c *handshaked.Client, key servicetest.ServerKey, n int) {
	t.Helper()
	cfg := &edge.Config{Client: c, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			srvSide, cliSide := net.Pipe()
			defer cliSide.Close()
			go func() {
				conn, err := edge.Server(context.Background(), srvSide, cfg)
				if !assert.NoError(t, err, "handshake %d", i) {
					return
				}
				defer conn.Close()
				conn.Write([]byte("through the edge"))
			}()
			tc := tls.Client(cliSide, &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MinVersion: tls.VersionTLS12 + uint16(i%2)})
			tc.SetDeadline(time.Now().Add(20 * time.Second))
			require.NoError(t, tc.Handshake(), "handshake %d", i)
			got := make([]byte, len("through the edge"))
			_, err := io.ReadFull(tc, got)
			require.NoError(t, err)
			assert.Equal(t, "through the edge", string(got))
		})
	}
	wg.Wait()
}

// TestMultiplexedHandshakesShareStreams: concurrent handshakes all travel
// on a few long-lived Multiplex streams, none on a Stream of its own.
func TestMultiplexedHandshakesShareStreams(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "mux-ec", "p256-sec1.pem", "ec.test")
	var streams muxStreams
	c, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure(), streams.option())
	require.NoError(t, err)
	defer c.Close()
	tlsThroughEdge(t, c, key, 16)
	assert.Zero(t, streams.get(pb.Handshake_Stream_FullMethodName), "handshakes on a Stream of their own")
	assert.Positive(t, streams.get(pb.Handshake_Multiplex_FullMethodName))
	assert.LessOrEqual(t, streams.get(pb.Handshake_Multiplex_FullMethodName), handshaked.DefaultHandshakeStreams, "Multiplex streams opened")
	tlsThroughEdge(t, c, key, 4)
	assert.LessOrEqual(t, streams.get(pb.Handshake_Multiplex_FullMethodName), handshaked.DefaultHandshakeStreams, "the streams are kept")
}

// TestMultiplexedHandshakesFallBack: from a service without Multiplex,
// handshakes go on a Stream each, and Multiplex is not tried again.
func TestMultiplexedHandshakesFallBack(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "mux-ec", "p256-sec1.pem", "ec.test")
	var streams muxStreams
	streams.missing.Store(true)
	c, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure(), streams.option())
	require.NoError(t, err)
	defer c.Close()
	tlsThroughEdge(t, c, key, 8)
	tried := streams.get(pb.Handshake_Multiplex_FullMethodName)
	assert.Positive(t, tried)
	assert.Equal(t, 8, streams.get(pb.Handshake_Stream_FullMethodName), "a Stream per handshake")
	tlsThroughEdge(t, c, key, 4)
	assert.Equal(t, tried, streams.get(pb.Handshake_Multiplex_FullMethodName), "Multiplex tried again")
	assert.Equal(t, 12, streams.get(pb.Handshake_Stream_FullMethodName))
}

// TestMultiplexedHandshakesTryAgain: a stream age after a service answered
// that it has no Multiplex, the client tries it again (in a rolling
// upgrade, the next stream may reach an upgraded replica).
func TestMultiplexedHandshakesTryAgain(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "mux-ec", "p256-sec1.pem", "ec.test")
	var streams muxStreams
	streams.missing.Store(true)
	const age = time.Second
	c, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreamAge(age), streams.option())
	require.NoError(t, err)
	defer c.Close()
	tlsThroughEdge(t, c, key, 4)
	fellBack := streams.get(pb.Handshake_Stream_FullMethodName)
	require.Positive(t, fellBack, "handshakes on a Stream of their own")
	tried := streams.get(pb.Handshake_Multiplex_FullMethodName)

	streams.missing.Store(false) // the service is upgraded
	time.Sleep(age)
	tlsThroughEdge(t, c, key, 4)
	assert.Greater(t, streams.get(pb.Handshake_Multiplex_FullMethodName), tried, "Multiplex not tried again")
	assert.Equal(t, fellBack, streams.get(pb.Handshake_Stream_FullMethodName), "handshakes on a Stream after the age")
}

// TestMultiplexStreamsRetire: a Multiplex stream older than the stream age
// takes no new handshake (the next one opens another, which the balancer
// may place on another replica) and ends once its last handshake has.
func TestMultiplexStreamsRetire(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	key := srv.ServerKey(t, "mux-ec", "p256-sec1.pem", "ec.test")
	var streams muxStreams
	c, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure(), handshaked.WithHandshakeStreams(1),
		handshaked.WithSignStreamAge(time.Millisecond), streams.option())
	require.NoError(t, err)
	defer c.Close()
	for range 3 {
		tlsThroughEdge(t, c, key, 2)
		time.Sleep(5 * time.Millisecond)
	}
	opened := streams.get(pb.Handshake_Multiplex_FullMethodName)
	assert.GreaterOrEqual(t, opened, 3, "a stream past its age took new handshakes")
	assert.Eventually(t, func() bool { return int(streams.ended.Load()) == opened-1 }, 10*time.Second, 10*time.Millisecond,
		"retired streams end with their last handshake, the current one stays")
}

// stalledMux is a Multiplex service that has stopped reading, as
// handshaked does while it holds as many requests of a stream as it takes
// (until its answers are read): it takes the first start, reads nothing
// more, and answers that start when told.
type stalledMux struct {
	pb.UnimplementedHandshakeServer
	started, answer chan struct{}
}

func (s *stalledMux) Multiplex(stream pb.Handshake_MultiplexServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	close(s.started)
	<-s.answer
	step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
	if err := stream.Send(&pb.MultiplexResponse{Handshake: req.GetHandshake(), Result: &pb.MultiplexResponse_Step{Step: step}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// TestMultiplexAnswersWhileSendWaits: a Send that waits for the service to
// read (its flow-control window is full) does not keep the answers of the
// stream's other handshakes from them; otherwise the service, which stops
// reading when its answers are not read, and the client wait on each
// other for ever.
func TestMultiplexAnswersWhileSendWaits(t *testing.T) {
	svc := &stalledMux{started: make(chan struct{}), answer: make(chan struct{})}
	// A window of its own size: it does not grow as the service reads
	// nothing.
	s := grpc.NewServer(grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	pb.RegisterHandshakeServer(s, svc)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	c, err := handshaked.Dial(l.Addr().String(), handshaked.WithInsecure(), handshaked.WithHandshakeStreams(1))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	first := make(chan error, 1)
	go func() {
		_, err := c.MultiplexedHandshake(&pb.HandshakeConfig{}).Step(ctx, []byte{22})
		first <- err
	}()
	<-svc.started
	// A start larger than the service's window takes the stream's write
	// quota: the next Send waits.
	go c.MultiplexedHandshake(&pb.HandshakeConfig{}).Step(ctx, make([]byte, 1<<20))
	time.Sleep(100 * time.Millisecond)
	go c.MultiplexedHandshake(&pb.HandshakeConfig{}).Step(ctx, []byte{22})
	time.Sleep(200 * time.Millisecond)
	close(svc.answer)
	select {
	case err := <-first:
		assert.NoError(t, err, "the first handshake's answer")
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the first handshake's answer was not handed out while another's Send waited")
	}
}

// deafMux is a Multiplex service that answers the first request of each
// stream, then reads no more of it.
type deafMux struct {
	pb.UnimplementedHandshakeServer
	streams atomic.Int32
}

func (s *deafMux) Multiplex(stream pb.Handshake_MultiplexServer) error {
	s.streams.Add(1)
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
	if err := stream.Send(&pb.MultiplexResponse{Handshake: req.GetHandshake(), Result: &pb.MultiplexResponse_Step{Step: step}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// sendWatch counts the Sends of a client's Multiplex streams begun and
// ended.
type sendWatch struct{ begun, ended atomic.Int32 }

func (w *sendWatch) option() handshaked.Option {
	return handshaked.WithDialOptions(grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &watchedSends{ClientStream: cs, w: w}, nil
	}))
}

type watchedSends struct {
	grpc.ClientStream
	w *sendWatch
}

func (s *watchedSends) SendMsg(m any) error {
	s.w.begun.Add(1)
	defer s.w.ended.Add(1)
	return s.ClientStream.SendMsg(m)
}

// TestMultiplexSendWaitsNoLongerThanItsStep: a Send that waits on a
// service reading no more of the stream, a step waiting for its turn
// behind such a Send, and an Abort, wait no longer than their step's
// deadline or cancellation (the Abort: the client's timeout); the stream,
// stuck for all its handshakes, ends then, and they go on a new one. A step
// cancelled while it waits for its turn leaves the stream alone.
func TestMultiplexSendWaitsNoLongerThanItsStep(t *testing.T) {
	svc := &deafMux{}
	// A window of its own size: it does not grow as the service reads
	// nothing.
	s := grpc.NewServer(grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	pb.RegisterHandshakeServer(s, svc)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	var sends sendWatch
	const timeout = 300 * time.Millisecond
	c, err := handshaked.Dial(l.Addr().String(), handshaked.WithInsecure(), handshaked.WithHandshakeStreams(1),
		handshaked.WithTimeout(timeout), sends.option())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	done := func(name string, errs chan error) error {
		t.Helper()
		select {
		case err := <-errs:
			return err
		case <-time.After(10 * time.Second):
			require.FailNowf(t, "a wait past the deadline", "%s still waits to send past its deadline", name)
			return nil
		}
	}
	step := func(h *handshaked.MultiplexedHandshake, ctx context.Context, input []byte) chan error {
		errs := make(chan error, 1)
		go func() {
			_, err := h.Step(ctx, input)
			errs <- err
		}()
		return errs
	}
	// starts a handshake larger than the service's window, on no deadline:
	// its Send takes the stream's write quota, the next Send waits for
	// the service to read; with sent, after its Send has returned, else
	// once it waits in it.
	large := make([]byte, 1<<20)
	start := func(sent bool) (*handshaked.MultiplexedHandshake, chan error) {
		h := c.MultiplexedHandshake(&pb.HandshakeConfig{})
		n := sends.begun.Load() + 1
		errs := step(h, ctx, large)
		require.Eventually(t, func() bool {
			return sends.begun.Load() == n && (!sent || sends.ended.Load() == n)
		}, 10*time.Second, time.Millisecond)
		return h, errs
	}
	deadline := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		t.Cleanup(cancel)
		return ctx
	}

	first := c.MultiplexedHandshake(&pb.HandshakeConfig{})
	_, err = first.Step(ctx, []byte{22})
	require.NoError(t, err)
	a, aDone := start(true)
	aborted := make(chan error, 1)
	go func() {
		first.Abort()
		aborted <- nil
	}()
	done("an Abort", aborted)
	require.NoError(t, done("a start on the stuck stream", aDone), "started again on a new stream")
	require.Equal(t, int32(2), svc.streams.Load(), "streams")

	b, bDone := start(true)
	err = done("a step", step(a, deadline(), []byte{1}))
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	require.NoError(t, done("a start on the stuck stream", bDone), "started again on a new stream")
	require.Equal(t, int32(3), svc.streams.Load(), "streams")

	_, cDone := start(true)
	cancelled, cancelStep := context.WithCancel(ctx) // no deadline
	time.AfterFunc(timeout, cancelStep)
	err = done("a step", step(b, cancelled, []byte{1}))
	assert.Equal(t, codes.Canceled, status.Code(err), "%v", err)
	require.NoError(t, done("a start on the stuck stream", cDone), "started again on a new stream")
	require.Equal(t, int32(4), svc.streams.Load(), "streams")

	start(true)
	start(false)
	// A step cancelled while it waits for its turn (its TLS client gone)
	// says nothing of the stream: it and its handshakes go on.
	waiting, stopWaiting := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, stopWaiting)
	err = done("a cancelled step waiting for its turn", step(c.MultiplexedHandshake(&pb.HandshakeConfig{}), waiting, []byte{22}))
	assert.Equal(t, codes.Canceled, status.Code(err), "%v", err)
	assert.Never(t, func() bool { return svc.streams.Load() != 4 }, 300*time.Millisecond, 10*time.Millisecond, "the stream ended with a cancelled step")
	err = done("a step waiting for its turn", step(c.MultiplexedHandshake(&pb.HandshakeConfig{}), deadline(), []byte{22}))
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
}
