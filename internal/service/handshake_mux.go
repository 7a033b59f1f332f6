package service

import (
	"context"
	"errors"
	"io"
	goruntime "runtime"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/engine"
)

// A Multiplex stream carries many handshakes at once (issue 12: a stream
// per handshake cost the service a new stream, its headers and the
// interceptor chain each time, most of its CPU per resumed handshake).
// Each handshake keeps every guarantee of a handshake Stream: the guard
// admits each request as it would a Stream message (muxItem), the
// handshake holds a session slot and its input against the caps, and it
// ends at its answer of COMPLETE, FAILED or an error, at abort, at
// SessionTTL after its start, or with the stream.

// muxItemGuard admits one request of a Multiplex stream, as the guard
// admits a message of a handshake Stream (rate limit, sizes, use on keys:
// those a start names, or those of the handshake an input or abort is for),
// and starts its audit entry; finish completes the entry with the
// request's answer. The guard provides it; nil admits everything.
type muxItemGuard func(ctx context.Context, req *pb.MultiplexRequest, keys []target) (finish func(resp any, err error), err error)

// muxParallelism is how many steps of one Multiplex stream run at once:
// steps are CPU work, so about the cores, with a few more for steps that
// wait on a key backend (an HSM answers in its own time).
func muxParallelism() int { return 2 * goruntime.GOMAXPROCS(0) }

// muxMaxQueued bounds the requests a Multiplex stream holds, queued or
// being worked on: past it the stream is not read from until a step ends,
// as a Stream holds one message at a time and gRPC's flow control the
// rest. Requests queued behind a running step (aborts, empty inputs, ones
// the guard refused) hold no input bytes, so without it a caller that
// keeps sending while it reads no answer would make the service hold
// whatever it sends. A handshake has at most a step and an abort
// unanswered from the SDK, so this never holds back a well-behaved caller.
func muxMaxQueued() int { return 4 * muxParallelism() }

var errMuxEnded = status.Error(codes.Canceled, "the multiplex stream ended: its handshakes are aborted")

// muxStream is one Multiplex stream being served.
type muxStream struct {
	h      *Handshake
	ctx    context.Context
	owner  string
	stream pb.Handshake_MultiplexServer

	sendMu sync.Mutex

	// A handshake is a trace of its own, not a part of the trace of the
	// long-lived stream that carries it with many others: root is the
	// stream's context without its span, and each step links to the
	// stream's call (stepSpan), as unary steps to theirs.
	root     context.Context
	stepSpan []trace.SpanStartOption

	// work hands handshakes with requests to work on to the stream's
	// workers; stop ends them.
	work chan *muxHandshake
	stop chan struct{}

	mu     sync.Mutex
	live   map[uint64]*muxHandshake
	queued int        // requests queued or being worked on
	idle   *sync.Cond // on mu: queued fell
	ended  bool
}

// muxHandshake is one handshake of a Multiplex stream. queue, running,
// done and held are guarded by the stream's mu; the rest belongs to the
// one worker running it.
type muxHandshake struct {
	n       uint64
	keys    []target
	queue   []muxJob
	running bool // queued on work or on a worker
	done    bool
	// held counts the client bytes of its requests, queued or taken by
	// the engine, against the session store's input caps: counted as
	// they are received, so that requests queued behind a slow step are
	// bounded as the engine's buffer is.
	held int64

	hs       *engine.Handshake // nil until started and once ended
	ctx      context.Context   // carries the handshake's span
	span     trace.Span
	trace    bool
	release  func() // the session slot; nil until reserved
	expiry   *time.Timer
	expireAt time.Time
}

// muxJob is one request of a handshake (with err: refused), or, without
// a request, its expiry.
type muxJob struct {
	req    *pb.MultiplexRequest
	err    error
	finish func(resp any, err error)
}

// Multiplex serves a stream of many handshakes: see the proto. The
// receiving loop admits each request and queues it on its handshake; the
// stream's workers step handshakes, each one request at a time in order.
func (h *Handshake) Multiplex(stream pb.Handshake_MultiplexServer) error {
	m := &muxStream{
		h: h, ctx: stream.Context(), owner: callerIdentity(stream.Context()), stream: stream,
		work: make(chan *muxHandshake), stop: make(chan struct{}), live: map[uint64]*muxHandshake{},
	}
	m.idle = sync.NewCond(&m.mu)
	m.root = trace.ContextWithSpanContext(m.ctx, trace.SpanContext{})
	m.stepSpan = []trace.SpanStartOption{trace.WithLinks(trace.LinkFromContext(m.ctx))}
	var workers sync.WaitGroup
	for range muxParallelism() {
		workers.Go(m.worker)
	}
	var err error
	for {
		var req *pb.MultiplexRequest
		if req, err = stream.Recv(); err != nil {
			break
		}
		m.dispatch(req)
	}
	if errors.Is(err, io.EOF) {
		// The caller has sent its last request: what it sent is answered
		// before the handshakes still in progress are aborted.
		m.mu.Lock()
		for m.queued > 0 {
			m.idle.Wait()
		}
		m.mu.Unlock()
	}
	close(m.stop)
	workers.Wait()
	m.abortAll()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// dispatch admits req and queues it on its handshake, or answers it at
// once when it names none it can be for.
func (m *muxStream) dispatch(req *pb.MultiplexRequest) {
	n := req.GetHandshake()
	start := req.GetStart()
	m.mu.Lock()
	for m.queued >= muxMaxQueued() {
		m.idle.Wait()
	}
	x := m.live[n]
	m.mu.Unlock()
	keys := []target{}
	switch {
	case start != nil:
		keys = handshakeKeys(start)
	case x != nil:
		keys = x.keys
	}
	finish := func(any, error) {}
	if m.h.muxItem != nil {
		f, err := m.h.muxItem(m.ctx, req, keys)
		if err != nil {
			if x != nil && start == nil {
				// Refused by the policy or the limits: as on a Stream,
				// where the refusal would end it, the handshake ends.
				m.enqueue(x, muxJob{req: req, err: err, finish: func(any, error) {}})
				return
			}
			m.answerError(n, err)
			return
		}
		finish = f
	}
	var err error
	switch {
	case req.GetRequest() == nil:
		err = invalid("handshake %d: set start, input or abort", n)
	case start != nil && x != nil:
		err = status.Errorf(codes.AlreadyExists, "handshake %d is in progress on this stream: pick another number", n)
	case start == nil && x == nil:
		err = status.Errorf(codes.NotFound, "handshake %d not found on this stream (never started, or ended)", n)
	}
	if err != nil {
		finish(nil, err)
		m.answerError(n, err)
		return
	}
	if start != nil {
		x = &muxHandshake{n: n, keys: keys}
		if err := m.h.sessions.take(m.owner, &x.held, len(start.GetInput())); err != nil {
			finish(nil, err)
			m.answerError(n, err)
			return
		}
		m.mu.Lock()
		m.live[n] = x
		m.mu.Unlock()
	} else if err := m.takeInput(x, req.GetInput()); err != nil {
		// As on a Stream, where too much input ends it.
		finish(nil, err)
		m.enqueue(x, muxJob{req: req, err: err, finish: func(any, error) {}})
		return
	}
	m.enqueue(x, muxJob{req: req, finish: finish})
}

// takeInput counts input, received for x, against the input caps, unless
// x has ended (its request is then answered FAILED_PRECONDITION).
func (m *muxStream) takeInput(x *muxHandshake, input []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if x.done {
		return nil
	}
	return m.h.sessions.take(m.owner, &x.held, len(input))
}

// enqueue adds j to x's requests and hands x to a worker unless one has it
// already. It waits while every worker is busy: a caller sending faster
// than the steps run stops being read from.
func (m *muxStream) enqueue(x *muxHandshake, j muxJob) {
	m.mu.Lock()
	if m.ended {
		m.mu.Unlock()
		j.finish(nil, errMuxEnded)
		return
	}
	x.queue = append(x.queue, j)
	m.queued++
	if x.running {
		m.mu.Unlock()
		return
	}
	x.running = true
	m.mu.Unlock()
	select {
	case m.work <- x:
	case <-m.stop:
		m.abandon(x)
	}
}

// abandon completes the audit entries of x's requests that no worker
// will take now that the stream has stopped: abortAll finds only the
// handshakes still in progress, not those that ended with requests queued
// behind their last answer.
func (m *muxStream) abandon(x *muxHandshake) {
	m.mu.Lock()
	jobs := x.queue
	x.queue = nil
	m.mu.Unlock()
	for _, j := range jobs {
		j.finish(nil, errMuxEnded)
	}
}

func (m *muxStream) worker() {
	for {
		select {
		case x := <-m.work:
			m.run(x)
		case <-m.stop:
			return
		}
	}
}

// run works on x's requests in order until none is left, or the stream
// ends.
func (m *muxStream) run(x *muxHandshake) {
	for {
		stopped := false
		select {
		case <-m.stop:
			stopped = true
		default:
		}
		m.mu.Lock()
		if len(x.queue) == 0 || stopped {
			x.running = false
			m.mu.Unlock()
			if stopped {
				m.abandon(x)
			}
			return
		}
		j := x.queue[0]
		x.queue = x.queue[1:]
		done := x.done
		m.mu.Unlock()
		switch {
		case done && j.req == nil:
			// Expired after it ended: nothing to answer, and its number
			// may be another handshake's by now.
		case done:
			err := status.Errorf(codes.FailedPrecondition, "handshake %d has ended", x.n)
			j.finish(nil, err)
			m.answerError(x.n, err)
		default:
			m.do(x, j)
		}
		m.jobDone()
	}
}

// jobDone counts a request of the stream as answered.
func (m *muxStream) jobDone() {
	m.mu.Lock()
	m.queued--
	m.idle.Broadcast()
	m.mu.Unlock()
}

// do works on one request of x.
func (m *muxStream) do(x *muxHandshake, j muxJob) {
	if j.err == nil && m.ctx.Err() != nil {
		j.err = status.FromContextError(m.ctx.Err()).Err()
	}
	if j.err != nil {
		j.finish(nil, j.err)
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
		m.answerError(x.n, j.err)
		return
	}
	var input []byte
	switch r := j.req.GetRequest().(type) {
	case *pb.MultiplexRequest_Abort:
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
		aborted := &pb.MultiplexAbort{}
		j.finish(aborted, m.send(&pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Aborted{Aborted: aborted}}))
		return
	case *pb.MultiplexRequest_Start:
		if err := m.begin(x, r.Start); err != nil {
			j.finish(nil, err)
			m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
			m.answerError(x.n, err)
			return
		}
		if input = r.Start.GetInput(); len(input) == 0 {
			step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
			resp := &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Step{Step: step}}
			j.finish(step, m.send(resp))
			return
		}
	case *pb.MultiplexRequest_Input:
		input = r.Input
		err := checkInput(input)
		if len(input) == 0 {
			err = invalid("handshake %d: input: empty", x.n)
		}
		if err != nil {
			j.finish(nil, err)
			m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
			m.answerError(x.n, err)
			return
		}
	}
	step := m.h.step(x.ctx, "", x.hs, x.trace, input, m.stepSpan...)
	if step.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		m.end(x, step.GetState())
	}
	resp := &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Step{Step: step}}
	j.finish(step, m.send(resp))
}

// begin builds x's handshake from its start, takes its session slot and
// sets its expiry.
func (m *muxStream) begin(x *muxHandshake, start *pb.StartHandshakeRequest) error {
	hs, _, err := m.h.start(m.ctx, start)
	if err != nil {
		return err
	}
	release, err := m.h.sessions.reserve(m.owner)
	if err != nil {
		return err
	}
	x.hs, x.release, x.trace = hs, release, !start.GetConfig().GetOmitTrace()
	x.ctx, x.span = m.h.startHandshakeSpan(m.root, "multiplex", start)
	// A handshake whose client has gone quiet must not hold its slot for
	// the life of the stream: as a unary session, it has SessionTTL from
	// its start.
	ttl := m.h.sessions.ttl
	x.expiry = time.AfterFunc(ttl, func() {
		m.enqueue(x, muxJob{err: status.Errorf(codes.DeadlineExceeded, "handshake %d expired: not complete %v after its start", x.n, ttl), finish: func(any, error) {}})
	})
	return nil
}

// end ends x: its number is free again, its slot, input and expiry are
// released and its span ends with state. Requests still queued for it are
// answered FAILED_PRECONDITION.
func (m *muxStream) end(x *muxHandshake, state pb.HandshakeState) {
	m.mu.Lock()
	x.done = true
	if m.live[x.n] == x {
		delete(m.live, x.n)
	}
	m.h.sessions.drop(m.owner, &x.held)
	m.mu.Unlock()
	if x.expiry != nil {
		x.expiry.Stop()
	}
	if x.release != nil {
		x.release()
		x.release = nil
	}
	if x.span != nil {
		endHandshakeSpan(x.span, state)
		x.span = nil
	}
	x.hs = nil
}

// abortAll ends every handshake of the stream once its workers have
// stopped, completing the audit entries of the requests nobody answered.
func (m *muxStream) abortAll() {
	m.mu.Lock()
	m.ended = true
	var jobs []muxJob
	live := make([]*muxHandshake, 0, len(m.live))
	for _, x := range m.live {
		live = append(live, x)
		jobs = append(jobs, x.queue...)
		x.queue = nil
	}
	m.mu.Unlock()
	for _, j := range jobs {
		j.finish(nil, errMuxEnded)
	}
	for _, x := range live {
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	}
}

func (m *muxStream) answerError(n uint64, err error) {
	st := status.Convert(err)
	m.send(&pb.MultiplexResponse{Handshake: n, Result: &pb.MultiplexResponse_Error{Error: &pb.Error{Code: int32(st.Code()), Message: st.Message()}}})
}

// send sends one answer; answers of different handshakes come from
// different workers.
func (m *muxStream) send(resp *pb.MultiplexResponse) error {
	m.sendMu.Lock()
	defer m.sendMu.Unlock()
	return m.stream.Send(resp)
}

// muxItem is the guard's muxItemGuard: a request of a Multiplex stream is
// limited, authorized and audited as the message of a handshake Stream it
// stands for (guardedStream.RecvMsg), its entry completed by its answer.
func (g *guard) muxItem(ctx context.Context, req *pb.MultiplexRequest, keys []target) (func(any, error), error) {
	if g.rate != nil {
		if wait := g.rate.take(callerIdentity(ctx), time.Now()); wait > 0 {
			g.refused("rate_limit")
			return nil, rateLimited(wait)
		}
	}
	method := pb.Handshake_Multiplex_FullMethodName
	if err := g.checkSizes(ctx, method, req); err != nil {
		return nil, err
	}
	start := time.Now()
	e := g.entry(ctx, method, req)
	finish := func(resp any, err error) { g.record(ctx, e, start, resp, err) }
	if err := g.allowed(ctx, authz.Use, keys); err != nil {
		finish(nil, err)
		return nil, err
	}
	return finish, nil
}

// muxHandshakeRef is how the audit log names a handshake of a Multiplex
// stream: by the caller's number, which is only unique on its stream.
func muxHandshakeRef(n uint64) string { return "multiplex:" + strconv.FormatUint(n, 10) }
