package service

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestMultiplexQueuedInputCounts: input received for a handshake whose
// step is still running counts against the caller's input cap as it is
// queued, as the input a Stream's engine buffers does, and is freed when
// the handshake ends: requests queued behind a slow step (an HSM answers
// in its own time) are bounded by the cap, not by what the caller sends.
func TestMultiplexQueuedInputCounts(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	// A caller may hold a quarter of MaxInput: 1000 bytes.
	h := NewHandshake(vault, HandshakeOptions{MaxInput: 4000}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := newMuxStream(h, nil)
	m.owner = "edge"
	// A handshake whose step is running: what comes for it waits.
	x := &muxHandshake{n: 1, running: true}
	m.live[1] = x
	input := func(n int) *pb.MultiplexRequest {
		return &pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Input{Input: make([]byte, n)}}
	}
	m.dispatch(input(600))
	m.dispatch(input(300))
	require.Len(t, x.queue, 2)
	assert.NoError(t, x.queue[1].err)
	assert.EqualValues(t, 900, x.held, "queued input held")
	assert.False(t, h.sessions.input.acquire("edge", 101), "the caller's share holds the queued input")

	m.dispatch(input(101))
	require.Len(t, x.queue, 3)
	assert.Error(t, x.queue[2].err, "past the caller's share: refused, which ends the handshake")

	m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	assert.Zero(t, x.held)
	assert.True(t, h.sessions.input.acquire("edge", 1000), "the ended handshake's input is freed")
}

// TestMultiplexQueueBounded: requests that hold no input (aborts, empty
// inputs) queued behind a step that does not end are bounded too: past
// muxMaxQueued unanswered requests the stream is not read from until one
// has been answered.
func TestMultiplexQueueBounded(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := newMuxStream(h, nil)
	m.owner = "edge"
	x := &muxHandshake{n: 1, running: true}
	m.live[1] = x
	empty := &pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Input{}}
	for range muxMaxQueued() {
		require.NoError(t, m.await(muxMaxQueued()))
		m.dispatch(empty)
	}
	require.Len(t, x.queue, muxMaxQueued())
	var room atomic.Bool
	go func() {
		assert.NoError(t, m.await(muxMaxQueued()))
		room.Store(true)
	}()
	assert.Never(t, room.Load, 200*time.Millisecond, 10*time.Millisecond, "a request past the bound is read")
	m.answered()
	assert.Eventually(t, room.Load, 10*time.Second, time.Millisecond, "read again once a request has been answered")
}

// TestMultiplexStoppedQueueAudited: a request queued for a handshake that
// ended just before (its number no longer in progress) when the stream
// stops gets its audit entry completed all the same.
func TestMultiplexStoppedQueueAudited(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := newMuxStream(h, nil)
	m.owner = "edge"
	m.stop()
	x := &muxHandshake{n: 1, done: true} // ended: not in m.live
	var finished []error
	m.enqueue(x, muxJob{
		req:    &pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Input{Input: []byte{1}}},
		finish: func(_ any, err error) { finished = append(finished, err) },
	})
	m.abortAll()
	require.Len(t, finished, 1, "the request's entry completed once")
	assert.ErrorIs(t, finished[0], errMuxEnded)
}

// sendWaits is a Multiplex stream whose caller reads nothing: Send waits
// until release.
type sendWaits struct {
	grpc.ServerStream
	release chan struct{}
}

func (s *sendWaits) Context() context.Context { return context.Background() }

func (s *sendWaits) Recv() (*pb.MultiplexRequest, error) { return nil, io.EOF }

func (s *sendWaits) Send(*pb.MultiplexResponse) error {
	<-s.release
	return context.Canceled
}

// TestMultiplexLastAnswerUnread: a half-closed stream whose one answer
// left waits in Send, none queued behind it, ends all the same once it
// has not been read for the session TTL.
func TestMultiplexLastAnswerUnread(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{SessionTTL: 100 * time.Millisecond}, newHandshakeMetrics(prometheus.NewRegistry()))
	stream := &sendWaits{release: make(chan struct{})}
	m := newMuxStream(h, stream)
	// Answered at once (NOT_FOUND): a worker sends it, and waits.
	m.dispatch(&pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}})
	ended := make(chan error, 1)
	go func() { ended <- m.await(1) }() // as after the caller's half-close
	select {
	case err := <-ended:
		assert.ErrorIs(t, err, errMuxUnread)
	case <-time.After(10 * time.Second):
		assert.Fail(t, "the stream waits for ever on its last answer")
	}
	close(stream.release)
	m.stop()
}

// TestMultiplexNumberFreedByLastAnswer: a request that comes for a
// handshake after the step that ends it, before that step's answer is
// queued, is answered after that answer (FAILED_PRECONDITION), not before
// it as a request for no handshake.
func TestMultiplexNumberFreedByLastAnswer(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := newMuxStream(h, nil)
	x := &muxHandshake{n: 1, running: true} // on a worker
	m.live[1] = x
	// The worker's step ends x ...
	m.end(x, pb.HandshakeState_HANDSHAKE_STATE_FAILED)
	// ... the caller's next request for it comes in ...
	m.dispatch(&pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Input{Input: []byte{1}}})
	// ... and the worker queues the step's answer.
	step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_FAILED}
	m.answer(x, &pb.MultiplexResponse{Handshake: 1, Result: &pb.MultiplexResponse_Step{Step: step}}, step, nil)

	require.NotEmpty(t, m.out)
	assert.NotNil(t, m.out[0].resp.GetStep(), "the step's answer first: %v", m.out[0].resp)
	assert.Len(t, x.queue, 1, "the request waits behind the step, on its handshake")
	assert.NotContains(t, m.live, uint64(1), "the number is free once the last answer is queued")
}

// TestMultiplexUnreadOnlyWhileHeldBack: answers left unread for the
// session TTL while the receiving loop reads on (the caller sends, and
// may read later) do not end the stream: only a loop held back by them
// does.
func TestMultiplexUnreadOnlyWhileHeldBack(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	// Long enough that this test's goroutine, slow on a loaded machine,
	// lets the loop read on (answered, below) well before the check runs.
	const ttl = time.Second
	h := NewHandshake(vault, HandshakeOptions{SessionTTL: ttl}, newHandshakeMetrics(prometheus.NewRegistry()))
	stream := &sendWaits{release: make(chan struct{})}
	m := newMuxStream(h, stream)
	m.dispatch(&pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}})
	// The loop waits once (the check is armed), then reads on.
	waited := make(chan error, 1)
	go func() { waited <- m.await(1) }()
	require.Eventually(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.armed && m.waiting
	}, 10*time.Second, time.Millisecond)
	m.answered()
	require.NoError(t, <-waited)
	// The check, a TTL after it was armed, finds the loop reading and
	// disarms; the answer in Send stays unread meanwhile.
	var unread bool
	require.Eventually(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		unread = m.isUnread
		return !m.armed || unread
	}, 10*time.Second+ttl, time.Millisecond, "the check did not run")
	assert.False(t, unread, "unread while the loop was reading")
	close(stream.release)
	m.stop()
}

// TestMultiplexExpiryWithUnsentAnswers: a handshake that expires while
// its answers wait unsent (a caller not reading) has them dropped, their
// audit entries completed at its expiry: a caller that reads again gets
// no step of the expired handshake, only its DEADLINE_EXCEEDED, which is
// queued only while the stream holds fewer answers than its bound (past
// it the caller learns at its next request).
func TestMultiplexExpiryWithUnsentAnswers(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
	m := newMuxStream(h, nil)
	step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
	stepAnswer := func(x *muxHandshake, finish func(any, error)) {
		m.answer(x, &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Step{Step: step}}, step, finish)
		m.unanswered++
	}
	var completed []any
	x := &muxHandshake{n: 1, running: true}
	m.live[1] = x
	other := &muxHandshake{n: 2}
	stepAnswer(other, notAudited)
	for range 2 {
		stepAnswer(x, func(resp any, err error) {
			assert.NoError(t, err)
			completed = append(completed, resp)
		})
	}
	for range muxMaxQueued() - 3 {
		stepAnswer(other, notAudited)
	}
	m.unanswered++ // the expiry
	m.expire(x)
	assert.Equal(t, []any{step, step}, completed, "the unsent answers' entries completed at the expiry")
	var ofX []*pb.MultiplexResponse
	for _, a := range m.out {
		if a.resp.GetHandshake() == 1 {
			ofX = append(ofX, a.resp)
		}
	}
	require.Len(t, ofX, 1, "the expired handshake's unsent steps are dropped: %v", ofX)
	assert.Equal(t, int32(codes.DeadlineExceeded), ofX[0].GetError().GetCode(), "%v", ofX[0])
	assert.Len(t, m.out, muxMaxQueued()-1, "the other handshake's answers stay, the expiry is answered")
	assert.Equal(t, len(m.out), m.unanswered, "the dropped answers counted as answered")

	// Past the bound, the expiry is not answered, and its number is free.
	stepAnswer(other, notAudited)
	y := &muxHandshake{n: 3, running: true}
	m.live[3] = y
	m.unanswered++
	m.expire(y)
	assert.Len(t, m.out, muxMaxQueued(), "no expiry answer past the bound")
	assert.Equal(t, muxMaxQueued(), m.unanswered, "the expiry counted as answered")
	assert.NotContains(t, m.live, uint64(3), "the number is free")
}

// watchedSendWaits is sendWaits on a stream with an idle watch.
type watchedSendWaits struct {
	sendWaits
	ctx context.Context
}

func (s *watchedSendWaits) Context() context.Context { return s.ctx }

// TestMultiplexOwesTheIdleWatch: a request the stream has not answered
// yet (its answer waiting in Send here) is owed to the idle watch, so the
// stream is not idle while it is worked on; once sent it is not.
func TestMultiplexOwesTheIdleWatch(t *testing.T) {
	vault, _ := vaultWithKey(t, "k", "p256-sec1.pem")
	h := NewHandshake(vault, HandshakeOptions{}, newHandshakeMetrics(prometheus.NewRegistry()))
	var w idleWatch
	w.start(time.Hour, func() {})
	defer w.stop()
	stream := &watchedSendWaits{sendWaits{release: make(chan struct{})}, context.WithValue(context.Background(), idleWatchKey{}, &w)}
	m := newMuxStream(h, stream)
	m.dispatch(&pb.MultiplexRequest{Handshake: 1, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}})
	assert.Equal(t, int64(1), w.owed.Load(), "a request received, not answered")
	close(stream.release)
	require.Eventually(t, func() bool { return w.owed.Load() == 0 }, 10*time.Second, time.Millisecond, "its answer sent")
	m.stop()
	assert.Zero(t, m.unanswered)
}
