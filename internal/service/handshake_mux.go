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

// muxMaxQueued bounds the requests of a Multiplex stream not answered
// yet (queued, being worked on, or their answers waiting to be sent): past
// it the stream is not read from until an answer has been sent, as a
// Stream holds one message at a time and gRPC's flow control the rest. A
// caller that keeps sending while it reads no answer is held back there,
// whatever its requests are (aborts, empty inputs and ones refused hold
// no input bytes), and its other streams are not. The SDK holds at most a
// step and an abort unanswered per handshake.
func muxMaxQueued() int { return 4 * muxParallelism() }

var (
	errMuxEnded  = status.Error(codes.Canceled, "the multiplex stream ended: its handshakes are aborted")
	errMuxUnread = status.Error(codes.DeadlineExceeded, "multiplex answers not read for the session TTL: the stream is closed; read answers as they come")
)

// muxStream is one Multiplex stream being served.
//
// Answers are sent by one worker at a time, the one that finds answers
// waiting and nobody sending, once it has let go of its handshake: a
// worker waiting in Send holds no handshake, so a caller that stops
// reading holds up its answers, not the other steps nor the expiry of its
// handshakes, and the receiving loop stops once muxMaxQueued requests are
// unanswered.
type muxStream struct {
	h      *Handshake
	ctx    context.Context
	owner  string
	stream pb.Handshake_MultiplexServer

	// A handshake is a trace of its own, not a part of the trace of the
	// long-lived stream that carries it with many others: root is the
	// stream's context without its span, and each step links to the
	// stream's call (stepSpan), as unary steps to theirs.
	root     context.Context
	stepSpan []trace.SpanStartOption

	mu   sync.Mutex
	wake *sync.Cond // on mu: for the workers, work or answers to send
	live map[uint64]*muxHandshake
	// ready are the handshakes with requests that no worker has yet.
	ready []*muxHandshake
	// out are the answers waiting to be sent, in the order they were made.
	out     []muxAnswer
	sending bool // a worker is sending out
	// unanswered counts the requests (and expiries) whose answer has not
	// been sent yet (owe), as work does for the idle timeout.
	unanswered int
	work       *idleWatch
	sent       uint64 // answers sent, for unread
	workers    int    // running
	idle       int    // workers waiting on wake, not yet woken
	stopped    bool   // the workers stop; nothing more is sent
	ended      bool   // abortAll has run: requests are ended at once
	// The receiving loop waits on room (with waiting set) for fewer
	// unanswered requests, or for the workers to stop. unread, armed
	// while it waits, ends the stream once no answer has been sent for
	// the session TTL while some wait (unreadCheck).
	room     chan struct{}
	waiting  bool
	unread   *time.Timer
	armed    bool
	sentSeen uint64
	isUnread bool
}

// muxHandshake is one handshake of a Multiplex stream. queue, running,
// done and held are guarded by the stream's mu; the rest belongs to the
// one worker running it.
type muxHandshake struct {
	n       uint64
	keys    []target
	queue   []muxJob // on first until a second request waits
	first   [1]muxJob
	running bool // in ready or on a worker
	done    bool
	// held counts the client bytes of its requests, queued or taken by
	// the engine, against the session store's input caps: counted as
	// they are received, so that requests queued behind a slow step are
	// bounded as the engine's buffer is.
	held int64

	hs      *engine.Handshake // nil until started and once ended
	ctx     context.Context   // carries the handshake's span
	span    trace.Span
	trace   bool
	release func() // the session slot; nil until reserved
	expiry  *time.Timer
}

// muxJob is one request of a handshake (with err: refused), or, without
// a request, its expiry.
type muxJob struct {
	req    *pb.MultiplexRequest
	err    error
	finish func(resp any, err error)
}

// muxAnswer is an answer waiting to be sent; finish completes its
// request's audit entry with result once it has been sent.
type muxAnswer struct {
	x      *muxHandshake // nil: a request for no handshake
	resp   *pb.MultiplexResponse
	result any
	finish func(resp any, err error)
}

func newMuxStream(h *Handshake, stream pb.Handshake_MultiplexServer) *muxStream {
	m := &muxStream{h: h, stream: stream, live: map[uint64]*muxHandshake{}, room: make(chan struct{}, 1)}
	if stream != nil {
		m.ctx = stream.Context()
		m.work = streamWork(m.ctx)
		m.owner = callerIdentity(m.ctx)
		m.root = trace.ContextWithSpanContext(m.ctx, trace.SpanContext{})
		m.stepSpan = []trace.SpanStartOption{trace.WithLinks(trace.LinkFromContext(m.ctx))}
	}
	m.wake = sync.NewCond(&m.mu)
	return m
}

// Multiplex serves a stream of many handshakes: see the proto. The
// receiving loop admits each request and queues it on its handshake; the
// stream's workers step handshakes, each one request at a time in order.
func (h *Handshake) Multiplex(stream pb.Handshake_MultiplexServer) error {
	m := newMuxStream(h, stream)
	var err error
	for {
		if err = m.await(muxMaxQueued()); err != nil {
			break
		}
		var req *pb.MultiplexRequest
		if req, err = stream.Recv(); err != nil {
			break
		}
		m.dispatch(req)
	}
	if errors.Is(err, io.EOF) {
		// The caller has sent its last request: what it sent is answered
		// before the handshakes still in progress are aborted.
		err = m.await(1)
	}
	m.stop()
	m.abortAll()
	return err
}

// await waits until fewer than limit requests are unanswered. It gives up
// with errMuxUnread when answers wait and none has been sent for the
// session TTL: every handshake behind them has expired by then, and the
// stream would hold its place, its goroutines and its answers for as long
// as the caller likes.
func (m *muxStream) await(limit int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.unanswered >= limit {
		if m.isUnread {
			return errMuxUnread
		}
		if !m.armed {
			m.armed, m.sentSeen = true, m.sent
			if m.unread == nil {
				m.unread = time.AfterFunc(m.h.sessions.ttl, m.unreadCheck)
			} else {
				m.unread.Reset(m.h.sessions.ttl)
			}
		}
		m.waitRoom()
	}
	return nil
}

// waitRoom waits, with mu held, for room to be signalled.
func (m *muxStream) waitRoom() {
	m.waiting = true
	m.mu.Unlock()
	<-m.room
	m.mu.Lock()
	m.waiting = false
}

// signalRoom wakes the receiving loop if it waits; mu held.
func (m *muxStream) signalRoom() {
	if m.waiting {
		select {
		case m.room <- struct{}{}:
		default:
		}
	}
}

// unreadCheck runs a session TTL after await armed it. While the
// receiving loop waits, with answers waiting (queued, or the last one in
// Send) and none sent since, the stream is unread; with some sent, it
// checks again a TTL later. A loop back to reading is not held back by
// the answers: the check ends, and the next wait arms it again.
func (m *muxStream) unreadCheck() {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.stopped || !m.waiting:
		m.armed = false
	case (len(m.out) > 0 || m.sending) && m.sent == m.sentSeen:
		m.isUnread = true
		m.signalRoom()
	default:
		m.sentSeen = m.sent
		m.unread.Reset(m.h.sessions.ttl)
	}
}

// stop ends the workers: those stepping finish their step, one waiting in
// Send is not waited for (only the end of the stream, once the handler
// returns, ends that Send, and it sends nothing more after it).
func (m *muxStream) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = true
	m.wake.Broadcast()
	if m.unread != nil {
		m.unread.Stop()
	}
	for m.workers > 1 || m.workers == 1 && !m.sending {
		m.waitRoom()
	}
}

// owe counts n more answers due (n < 0: fewer), mu held: while some are,
// the stream is not idle.
func (m *muxStream) owe(n int) {
	m.unanswered += n
	m.work.owe(n)
}

// dispatch admits req and queues it on its handshake, or answers it at
// once when it names none it can be for.
func (m *muxStream) dispatch(req *pb.MultiplexRequest) {
	n := req.GetHandshake()
	start := req.GetStart()
	m.mu.Lock()
	m.owe(1)
	x := m.live[n]
	m.mu.Unlock()
	keys := []target{}
	switch {
	case start != nil:
		keys = handshakeKeys(start)
	case x != nil:
		keys = x.keys
	}
	finish := notAudited
	if m.h.muxItem != nil {
		f, err := m.h.muxItem(m.ctx, req, keys)
		if err != nil {
			if x != nil && start == nil {
				// Refused by the policy or the limits: as on a Stream,
				// where the refusal would end it, the handshake ends.
				m.enqueue(x, muxJob{req: req, err: err, finish: notAudited})
				return
			}
			m.answerNow(n, err)
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
		m.answerNow(n, err)
		return
	}
	if start != nil {
		x = &muxHandshake{n: n, keys: keys}
		x.queue = x.first[:0]
		if err := m.h.sessions.take(m.owner, &x.held, len(start.GetInput())); err != nil {
			finish(nil, err)
			m.answerNow(n, err)
			return
		}
		m.mu.Lock()
		m.live[n] = x
		m.mu.Unlock()
	} else if err := m.takeInput(x, req.GetInput()); err != nil {
		// As on a Stream, where too much input ends it.
		finish(nil, err)
		m.enqueue(x, muxJob{req: req, err: err, finish: notAudited})
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

// enqueue adds j to x's requests and makes x ready for a worker unless
// one has it already.
func (m *muxStream) enqueue(x *muxHandshake, j muxJob) {
	m.mu.Lock()
	if m.ended {
		m.mu.Unlock()
		j.finish(nil, errMuxEnded)
		return
	}
	x.queue = append(x.queue, j)
	if !x.running {
		x.running = true
		m.ready = append(m.ready, x)
		m.wakeWorker()
	}
	m.mu.Unlock()
}

// wakeWorker wakes a worker for work or answers to send, or starts one,
// up to muxParallelism: a stream has the workers its load has needed, not
// as many as the cores from its start (a connection may carry a thousand
// streams, most of them quiet); mu held.
func (m *muxStream) wakeWorker() {
	switch {
	case m.stopped:
	case m.idle > 0:
		m.idle--
		m.wake.Signal()
	case m.workers < muxParallelism():
		m.workers++
		go m.worker()
	}
}

func (m *muxStream) worker() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for !m.stopped {
		switch {
		case len(m.out) > 0 && !m.sending:
			m.flush()
		case len(m.ready) > 0:
			x := m.ready[0]
			m.ready = popFront(m.ready)
			m.mu.Unlock()
			m.run(x)
			m.mu.Lock()
		default:
			m.idle++ // taken back by wakeWorker's Signal
			m.wake.Wait()
		}
	}
	m.workers--
	m.signalRoom()
}

// popFront drops the first of q, keeping its array: queues of a stream
// are short (muxMaxQueued), and a slice moved past its front would be
// allocated again and again.
func popFront[T any](q []T) []T {
	n := copy(q, q[1:])
	var zero T
	q[n] = zero
	return q[:n]
}

// flush sends the answers waiting, in order, until none is left or the
// stream stops; mu is held, and let go during each Send.
func (m *muxStream) flush() {
	m.sending = true
	for len(m.out) > 0 && !m.stopped {
		a := m.out[0]
		m.out = popFront(m.out)
		m.mu.Unlock()
		err := m.stream.Send(a.resp)
		if a.finish != nil {
			a.finish(a.result, err)
		}
		m.mu.Lock()
		m.sent++
		m.owe(-1)
		m.signalRoom()
	}
	m.sending = false
}

// run works on x's requests in order until none is left, or the stream
// stops.
func (m *muxStream) run(x *muxHandshake) {
	for {
		m.mu.Lock()
		if len(x.queue) == 0 || m.stopped {
			x.running = false
			if len(x.queue) > 0 { // for abortAll
				m.ready = append(m.ready, x)
			}
			m.mu.Unlock()
			return
		}
		if len(m.out) > 0 && !m.sending {
			// This worker keeps x: another sends the answers.
			m.wakeWorker()
		}
		j := x.queue[0]
		x.queue = popFront(x.queue)
		done := x.done
		m.mu.Unlock()
		switch {
		case done && j.req == nil:
			// Expired after it ended: nothing to answer, and its number
			// may be another handshake's by now.
			m.answered()
		case done:
			err := status.Errorf(codes.FailedPrecondition, "handshake %d has ended", x.n)
			j.finish(nil, err)
			m.answerError(x, err)
		default:
			m.do(x, j)
		}
	}
}

// do works on one request of x.
func (m *muxStream) do(x *muxHandshake, j muxJob) {
	if j.req == nil {
		m.expire(x)
		return
	}
	if j.err == nil && m.ctx.Err() != nil {
		j.err = status.FromContextError(m.ctx.Err()).Err()
	}
	if j.err != nil {
		j.finish(nil, j.err)
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
		m.answerError(x, j.err)
		return
	}
	var input []byte
	switch r := j.req.GetRequest().(type) {
	case *pb.MultiplexRequest_Abort:
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
		aborted := &pb.MultiplexAbort{}
		m.answer(x, &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Aborted{Aborted: aborted}}, aborted, j.finish)
		return
	case *pb.MultiplexRequest_Start:
		if err := m.begin(x, r.Start); err != nil {
			j.finish(nil, err)
			m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
			m.answerError(x, err)
			return
		}
		if input = r.Start.GetInput(); len(input) == 0 {
			step := &pb.HandshakeStep{State: pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT}
			m.answer(x, &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Step{Step: step}}, step, j.finish)
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
			m.answerError(x, err)
			return
		}
	}
	step := m.h.step(x.ctx, "", x.hs, x.trace, input, m.stepSpan...)
	if step.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		m.end(x, step.GetState())
	}
	m.answer(x, &pb.MultiplexResponse{Handshake: x.n, Result: &pb.MultiplexResponse_Step{Step: step}}, step, j.finish)
}

// expire ends x at its session TTL. Its answers still waiting to be sent
// are dropped: the handshake they step has ended, and a caller that reads
// again must not be handed steps of it (records to send to its client)
// after its expiry. Their audit entries are completed now (the steps they
// answer have run): an entry must not stay open for as long as the caller
// does not read. DEADLINE_EXCEEDED is answered unless the stream holds
// its bound of answers already, when the caller learns it at its next
// request.
func (m *muxStream) expire(x *muxHandshake) {
	m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	m.mu.Lock()
	var dropped []muxAnswer
	kept := m.out[:0]
	for _, a := range m.out {
		if a.x == x {
			dropped = append(dropped, a)
		} else {
			kept = append(kept, a)
		}
	}
	clear(m.out[len(kept):])
	m.out = kept
	m.owe(-len(dropped))
	full := len(m.out) >= muxMaxQueued()
	if full {
		m.forget(x)
		m.owe(-1)
	}
	if full || len(dropped) > 0 {
		m.signalRoom()
	}
	m.mu.Unlock()
	for _, a := range dropped {
		if a.finish != nil {
			a.finish(a.result, nil)
		}
	}
	if !full {
		m.answerError(x, status.Errorf(codes.DeadlineExceeded, "handshake %d expired: not complete %v after its start", x.n, m.h.sessions.ttl))
	}
}

// answered counts a request, or an expiry, that gets no answer.
func (m *muxStream) answered() {
	m.mu.Lock()
	m.owe(-1)
	m.signalRoom()
	m.mu.Unlock()
}

// answer queues x's answer resp, made by the worker running x, which
// sends it once it lets x go unless another worker is sending.
func (m *muxStream) answer(x *muxHandshake, resp *pb.MultiplexResponse, result any, finish func(any, error)) {
	m.mu.Lock()
	m.out = append(m.out, muxAnswer{x: x, resp: resp, result: result, finish: finish})
	if x.done {
		m.forget(x)
	}
	m.mu.Unlock()
}

// forget frees the number of x, which has ended, once its last answer is
// queued: a request for that number that came before is x's, answered
// after it; mu held.
func (m *muxStream) forget(x *muxHandshake) {
	if m.live[x.n] == x {
		delete(m.live, x.n)
	}
}

func (m *muxStream) answerError(x *muxHandshake, err error) {
	m.answer(x, errorAnswer(x.n, err), nil, nil)
}

// answerNow queues the error answer of a request of the receiving loop,
// for no handshake, and wakes a worker to send it.
func (m *muxStream) answerNow(n uint64, err error) {
	m.mu.Lock()
	m.out = append(m.out, muxAnswer{resp: errorAnswer(n, err)})
	if !m.sending {
		m.wakeWorker()
	}
	m.mu.Unlock()
}

func errorAnswer(n uint64, err error) *pb.MultiplexResponse {
	st := status.Convert(err)
	return &pb.MultiplexResponse{Handshake: n, Result: &pb.MultiplexResponse_Error{Error: &pb.Error{Code: int32(st.Code()), Message: st.Message()}}}
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
	x.expiry = time.AfterFunc(m.h.sessions.ttl, func() {
		m.mu.Lock()
		m.owe(1)
		m.mu.Unlock()
		m.enqueue(x, muxJob{finish: notAudited})
	})
	return nil
}

// end ends x: its slot, input and expiry are released and its span ends
// with state. Requests still queued for it, and those that come before its
// last answer is queued (answer frees its number then), are answered
// FAILED_PRECONDITION, in order.
func (m *muxStream) end(x *muxHandshake, state pb.HandshakeState) {
	m.mu.Lock()
	x.done = true
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
// stopped, completing the audit entries of the requests nobody answered:
// those queued (on handshakes in progress, or on ready ones that ended
// with requests behind their last answer) and those whose answers were
// not sent.
func (m *muxStream) abortAll() {
	m.mu.Lock()
	m.ended = true
	var finish []func(any, error)
	live := make([]*muxHandshake, 0, len(m.live))
	for _, x := range m.live {
		live = append(live, x)
	}
	for _, x := range append(live, m.ready...) {
		for _, j := range x.queue {
			finish = append(finish, j.finish)
		}
		x.queue = nil
	}
	for _, a := range m.out {
		if a.finish != nil {
			finish = append(finish, a.finish)
		}
	}
	m.ready, m.out = nil, nil
	m.mu.Unlock()
	for _, f := range finish {
		f(nil, errMuxEnded)
	}
	for _, x := range live {
		m.end(x, pb.HandshakeState_HANDSHAKE_STATE_UNSPECIFIED)
	}
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
	finish := notAudited
	if e := g.entry(ctx, method, req); e != nil {
		finish = func(resp any, err error) { g.record(ctx, e, start, resp, err) }
	}
	if err := g.allowed(ctx, authz.Use, keys); err != nil {
		finish(nil, err)
		return nil, err
	}
	return finish, nil
}

// notAudited completes the audit entry of a request that has none: one
// whose entry is completed otherwise, or with no audit log.
func notAudited(any, error) {}

// muxHandshakeRef is how the audit log names a handshake of a Multiplex
// stream: by the caller's number, which is only unique on its stream.
func muxHandshakeRef(n uint64) string { return "multiplex:" + strconv.FormatUint(n, 10) }
