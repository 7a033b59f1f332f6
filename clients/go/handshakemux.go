package handshaked

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// DefaultHandshakeStreams is how many Multiplex streams a Client keeps for
// MultiplexedHandshake. Each carries every handshake started on it: a
// handshake costs the service a few messages instead of a stream of its
// own (headers, the interceptor chain, a goroutine), which was most of
// what a resumed handshake cost it (issue 12). More than one, so that a
// fleet's replicas share the handshakes and one slow send does not hold
// back every handshake.
const DefaultHandshakeStreams = 4

// errMuxUnimplemented is a service without Multiplex: its handshakes go
// on a Stream each.
var errMuxUnimplemented = errors.New("multiplex not implemented by the service")

// errMuxLost is a Multiplex stream that ended: its handshakes with it.
var errMuxLost = errors.New("multiplex stream lost")

// handshakeMux runs handshakes on long-lived Multiplex streams, opening
// each on first use and again after it ends or has taken handshakes for
// maxAge (then the next handshake opens another in its place, which the
// balancer may put on another replica, and the old one ends with its last
// handshake).
type handshakeMux struct {
	streamSlots[muxSlot]
	hs     pb.HandshakeClient
	maxAge time.Duration
	// unsupportedUntil (Unix nanoseconds) is set when a service answers
	// Unimplemented: it predates Multiplex, and handshakes go on a Stream
	// each until then, a stream's age later, as batchOps does (in a
	// rolling upgrade, the next stream may reach an upgraded replica).
	unsupportedUntil atomic.Int64
}

type muxSlot struct {
	mu  sync.Mutex
	cur *muxConn // nil: not open
}

// muxConn is one Multiplex stream and the handshakes waiting for its
// answers, by number.
type muxConn struct {
	cs     pb.Handshake_MultiplexClient
	cancel context.CancelFunc
	retire time.Time // zero: never

	// sendTurn (one token) orders Send and CloseSend. It is not mu: a
	// Send waits while the service reads nothing (it reads no more once
	// it holds as many requests as it takes, until its answers are read),
	// and the receiver must still take mu to hand those answers out. A
	// channel, so that a step waits for its turn no longer than its
	// context.
	sendTurn chan struct{}
	// sendTimer ends the stream when the Send of the step holding the
	// turn outlasts the step's deadline: one timer, reset for each Send,
	// rather than a context.AfterFunc per Send (4 allocations each).
	sendTimer *time.Timer

	mu      sync.Mutex // the map and the flags
	waiting map[uint64]chan muxAnswer
	last    uint64 // the last number given: numbers are never reused
	retired bool   // takes no more handshakes; CloseSend with the last
	lost    bool
}

type muxAnswer struct {
	resp *pb.MultiplexResponse
	err  error
}

func newHandshakeMux(hs pb.HandshakeClient, n int, maxAge time.Duration) *handshakeMux {
	m := &handshakeMux{hs: hs, maxAge: maxAge}
	m.init(n)
	return m
}

// join gives a new handshake a number on one of the streams, opening the
// stream if needed, and the channel of its answers.
func (m *handshakeMux) join() (*muxConn, uint64, chan muxAnswer, error) {
	s := m.take()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cur; c != nil && !c.retire.IsZero() && time.Now().After(c.retire) {
		c.mu.Lock()
		c.retired = true
		c.closeIfDone()
		c.mu.Unlock()
		s.cur = nil
	}
	if c := s.cur; c != nil {
		c.mu.Lock()
		lost := c.lost
		c.mu.Unlock()
		if lost {
			s.cur = nil
		}
	}
	if s.cur == nil {
		ctx, cancel := context.WithCancel(m.ctx)
		cs, err := m.hs.Multiplex(ctx)
		if err != nil {
			cancel()
			return nil, 0, nil, fmt.Errorf("handshaked: open multiplex stream: %w", err)
		}
		c := &muxConn{cs: cs, cancel: cancel, sendTurn: make(chan struct{}, 1), waiting: map[uint64]chan muxAnswer{}}
		c.sendTimer = time.AfterFunc(time.Hour, c.fail)
		c.sendTimer.Stop()
		if m.maxAge > 0 {
			c.retire = time.Now().Add(m.maxAge)
		}
		s.cur = c
		go m.receive(s, c)
	}
	c := s.cur
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost { // ended since
		s.cur = nil
		return nil, 0, nil, errMuxLost
	}
	c.last++
	// One answer per request, and a handshake has at most a step and an
	// abort unanswered.
	ch := make(chan muxAnswer, 2)
	c.waiting[c.last] = ch
	return c, c.last, ch, nil
}

// receive hands each answer of c to its handshake; when c ends it fails
// those still waiting.
func (m *handshakeMux) receive(s *muxSlot, c *muxConn) {
	defer c.cancel()
	for {
		resp, err := c.cs.Recv()
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				m.unsupportedUntil.Store(unsupportedUntil(m.maxAge))
				err = errMuxUnimplemented
			} else {
				err = errMuxLost
			}
			c.mu.Lock()
			c.lost = true
			waiting := c.waiting
			c.waiting = nil
			c.mu.Unlock()
			s.mu.Lock()
			if s.cur == c {
				s.cur = nil
			}
			s.mu.Unlock()
			for _, ch := range waiting {
				ch <- muxAnswer{err: err}
			}
			return
		}
		c.mu.Lock()
		ch := c.waiting[resp.GetHandshake()]
		c.mu.Unlock()
		if ch != nil {
			// Never blocks: see join.
			select {
			case ch <- muxAnswer{resp: resp}:
			default:
			}
		}
	}
}

// send sends req, waiting for its turn no longer than ctx and for the
// service's flow control no longer than ctx's deadline (or, without one,
// until ctx is cancelled). It returns errMuxLost if the stream is lost,
// ctx's error if ctx ends first. A Send that waits until its step's deadline
// means the service reads no more of the stream (stuck, or its answers
// not read), which holds every handshake on it: then the stream ends, and
// its handshakes with it (the next ones open a new one), as a Stream ends
// with its context.
func (c *muxConn) send(ctx context.Context, req *pb.MultiplexRequest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	lost := c.lost
	c.mu.Unlock()
	if lost {
		return errMuxLost
	}
	select {
	case c.sendTurn <- struct{}{}:
	case <-ctx.Done():
		// A step that reached its deadline waiting for its turn found
		// the stream stuck that long; one cancelled (its TLS client gone)
		// says nothing of the stream, whose other handshakes go on.
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.fail()
		}
		return ctx.Err()
	}
	defer func() { <-c.sendTurn }()
	deadline, timed := ctx.Deadline()
	var stop func() bool
	if timed {
		c.sendTimer.Reset(time.Until(deadline))
	} else {
		stop = context.AfterFunc(ctx, c.fail)
	}
	// A failed Send needs nothing more: the receiver sees the broken
	// stream and fails every handshake waiting on it.
	_ = c.cs.Send(req)
	switch {
	case timed && !c.sendTimer.Stop():
		// ctx's own timer may not have fired yet.
		return context.DeadlineExceeded
	case !timed && !stop():
		return ctx.Err()
	}
	return nil
}

// fail ends the stream: its receiver then fails the handshakes waiting on
// it, and the slot opens a new one.
func (c *muxConn) fail() {
	c.mu.Lock()
	c.lost = true
	c.mu.Unlock()
	c.cancel()
}

// leave forgets handshake n, which has ended: its number gets no more
// answers, and a retired stream ends with its last handshake.
func (c *muxConn) leave(n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waiting, n)
	c.closeIfDone()
}

// closeIfDone closes a retired stream with no handshake left; c.mu held.
// No Send is waiting then (a handshake sends before it leaves).
func (c *muxConn) closeIfDone() {
	if c.retired && len(c.waiting) == 0 && !c.lost {
		c.sendTurn <- struct{}{}
		c.cs.CloseSend()
		<-c.sendTurn
	}
}

// MultiplexedHandshake is one handshake in the service, stepped on one of
// the Client's shared Multiplex streams, or on a Stream of its own when
// the service has no Multiplex (tried again a stream age later) or the
// Client none (WithHandshakeStreams(0)).
// Step it in order from one goroutine; Abort it if it ends before COMPLETE
// or FAILED. The service holds it as one of a Stream (the same caps,
// checks and audit) for at most its session TTL.
type MultiplexedHandshake struct {
	client *Client
	cfg    *pb.HandshakeConfig // until the first step
	conn   *muxConn
	n      uint64
	ch     chan muxAnswer
	ended  bool

	stream pb.Handshake_StreamClient // instead, on a Stream
	cancel context.CancelFunc
}

// MultiplexedHandshake returns a handshake with configuration cfg; the
// first Step sends cfg with the client's first bytes. Nothing is opened in
// the service before that step.
func (c *Client) MultiplexedHandshake(cfg *pb.HandshakeConfig) *MultiplexedHandshake {
	return &MultiplexedHandshake{client: c, cfg: cfg}
}

// Step feeds the handshake the bytes the client sent since the last step
// and returns the service's step. An error ends the handshake.
func (h *MultiplexedHandshake) Step(ctx context.Context, input []byte) (*pb.HandshakeStep, error) {
	if h.ended {
		return nil, errors.New("handshaked: step of a handshake that has ended")
	}
	if h.stream != nil {
		return h.streamStep(ctx, input)
	}
	if h.cfg == nil {
		return h.muxStep(ctx, &pb.MultiplexRequest{Handshake: h.n, Request: &pb.MultiplexRequest_Input{Input: input}})
	}
	mux := h.client.mux
	if mux == nil || time.Now().UnixNano() < mux.unsupportedUntil.Load() {
		return h.openStream(ctx, input)
	}
	start := &pb.StartHandshakeRequest{Config: h.cfg, Input: input}
	for attempt := 0; ; attempt++ {
		conn, n, ch, err := mux.join()
		var out *pb.HandshakeStep
		if err == nil {
			h.conn, h.n, h.ch = conn, n, ch
			out, err = h.muxStep(ctx, &pb.MultiplexRequest{Handshake: n, Request: &pb.MultiplexRequest_Start{Start: start}})
		}
		switch {
		case errors.Is(err, errMuxUnimplemented):
			h.ended, h.conn = false, nil
			return h.openStream(ctx, input)
		case errors.Is(err, errMuxLost) && attempt == 0:
			// The stream ended before the start was answered (the
			// service closes an idle stream, a replica went away): the
			// handshake ended with it, and the client has been sent
			// nothing, so it starts again on a new one.
			h.ended = false
			continue
		}
		if err == nil {
			h.cfg = nil
		}
		h.ended = h.ended || err != nil
		return out, err
	}
}

// muxStep sends req and waits for its answer, no longer than ctx.
func (h *MultiplexedHandshake) muxStep(ctx context.Context, req *pb.MultiplexRequest) (*pb.HandshakeStep, error) {
	var a muxAnswer
	switch err := h.conn.send(ctx, req); {
	case err == nil:
		select {
		case a = <-h.ch:
		case <-ctx.Done():
			h.Abort()
			return nil, fmt.Errorf("handshaked: handshake step: %w", status.FromContextError(ctx.Err()).Err())
		}
	case errors.Is(err, errMuxLost):
		a.err = err
	default:
		// ctx ended before req was sent, or while it was (and the stream
		// ended then): a start leaves nothing in the service, a later
		// step a handshake to abort (nothing to send on an ended stream).
		if req.GetStart() != nil {
			h.end()
		} else {
			h.Abort()
		}
		return nil, fmt.Errorf("handshaked: handshake step: %w", status.FromContextError(err).Err())
	}
	if a.err != nil {
		h.end()
		return nil, fmt.Errorf("handshaked: handshake step: %w", a.err)
	}
	if e := a.resp.GetError(); e != nil {
		h.end()
		return nil, fmt.Errorf("handshaked: handshake step: %w", status.Error(codes.Code(e.GetCode()), e.GetMessage()))
	}
	step := a.resp.GetStep()
	if step == nil {
		h.end()
		return nil, fmt.Errorf("handshaked: handshake step: %w", errors.New("answer without a step"))
	}
	if step.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		h.end()
	}
	return step, nil
}

// end forgets the handshake, which the service has ended.
func (h *MultiplexedHandshake) end() {
	h.ended = true
	if h.conn != nil {
		h.conn.leave(h.n)
	}
}

// Abort ends the handshake in the service, if it has not ended; it does
// not wait for the service's answer, and waits to send no longer than the
// client's timeout (WithTimeout).
func (h *MultiplexedHandshake) Abort() {
	if h.ended {
		return
	}
	h.ended = true
	if h.cancel != nil {
		h.cancel()
	}
	if h.conn != nil {
		// Abort has no deadline of its own: the client's timeout bounds
		// it as any call without one. A stream that takes not even an
		// abort by then is stuck, and ends with its handshakes.
		ctx, cancel := h.client.bounded(context.Background())
		h.conn.send(ctx, &pb.MultiplexRequest{Handshake: h.n, Request: &pb.MultiplexRequest_Abort{Abort: &pb.MultiplexAbort{}}})
		cancel()
		h.conn.leave(h.n)
	}
}

// openStream runs the handshake on a Stream of its own, first step first.
func (h *MultiplexedHandshake) openStream(ctx context.Context, input []byte) (*pb.HandshakeStep, error) {
	// The stream lives until the handshake ends or is aborted, not with
	// ctx, which is the first step's.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := h.client.HandshakeStream(sctx)
	if err != nil {
		cancel()
		h.ended = true
		return nil, err
	}
	h.stream, h.cancel = stream, cancel
	defer context.AfterFunc(ctx, cancel)()
	err = stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: h.cfg, Input: input}}})
	h.cfg = nil
	if err != nil {
		return nil, h.sendFailed(err)
	}
	return h.streamRecv()
}

// streamStep runs a later step on the handshake's Stream, which ends if
// ctx does first.
func (h *MultiplexedHandshake) streamStep(ctx context.Context, input []byte) (*pb.HandshakeStep, error) {
	defer context.AfterFunc(ctx, h.cancel)()
	if err := h.stream.Send(&pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: input}}); err != nil {
		return nil, h.sendFailed(err)
	}
	return h.streamRecv()
}

func (h *MultiplexedHandshake) streamRecv() (*pb.HandshakeStep, error) {
	step, err := h.stream.Recv()
	if err != nil {
		return nil, h.streamFailed(err)
	}
	if step.GetState() != pb.HandshakeState_HANDSHAKE_STATE_NEED_INPUT {
		h.ended = true
		h.cancel()
	}
	return step, nil
}

func (h *MultiplexedHandshake) streamFailed(err error) error {
	h.ended = true
	h.cancel()
	return fmt.Errorf("handshaked: handshake step: %w", err)
}

// sendFailed ends the handshake after a failed Send, with the stream's
// status if it ended (Send says only io.EOF then).
func (h *MultiplexedHandshake) sendFailed(err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := h.stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			err = rerr
		}
	}
	return h.streamFailed(err)
}
