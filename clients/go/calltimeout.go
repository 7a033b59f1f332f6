package handshaked

import (
	"context"
	"time"

	"google.golang.org/grpc/status"
)

// errCallTimeout is what a call bounded by the client's timeout gets at
// its deadline: what its own context would have said.
var errCallTimeout = status.FromContextError(context.DeadlineExceeded).Err()

// callDeadline bounds a streamed call whose context has no deadline by the
// client's timeout, which a context.WithTimeout per call would cost ~2.5
// µs of CPU (3% of an ECDSA signature through the service): the calls
// waiting on a stream share one timer instead (callWatch).
type callDeadline struct {
	deadline time.Time // zero: the caller's context bounds the call
	expired  bool      // answered with errCallTimeout
}

// newCallDeadline is the deadline of a call with ctx on a client whose
// timeout is timeout (0: unbounded).
func newCallDeadline(ctx context.Context, timeout time.Duration) callDeadline {
	if _, ok := ctx.Deadline(); ok || timeout <= 0 {
		return callDeadline{}
	}
	return callDeadline{deadline: time.Now().Add(timeout)}
}

// due says whether the call is past its deadline at now and not answered
// so yet, marking it answered; else it folds a deadline still ahead into
// next (the earliest, zero: none).
func (d *callDeadline) due(now time.Time, next *time.Time) bool {
	switch {
	case d.deadline.IsZero() || d.expired:
		return false
	case d.deadline.After(now):
		if next.IsZero() || d.deadline.Before(*next) {
			*next = d.deadline
		}
		return false
	}
	d.expired = true
	return true
}

// timedCall is a streamed call waiting for its answer of type A.
type timedCall[A any] struct {
	answer chan A // buffered: a call given up on is not waited for
	callDeadline
}

// newTimedCall is a call with ctx on a client whose timeout is timeout.
func newTimedCall[A any](ctx context.Context, timeout time.Duration) timedCall[A] {
	return timedCall[A]{answer: make(chan A, 1), callDeadline: newCallDeadline(ctx, timeout)}
}

// give answers c unless it has its answer already (it expired).
func (c *timedCall[A]) give(a A) {
	select {
	case c.answer <- a:
	default:
	}
}

// callWatch is one timer that runs expire at the earliest deadline of the
// calls it watches; its owner's lock guards it.
type callWatch struct {
	expire   func() // set once, before any watch
	timer    *time.Timer
	watching bool // the timer is set
}

// watch sets the timer for d unless it is set already (for an earlier
// deadline: calls come in deadline order) or d is zero.
func (w *callWatch) watch(d callDeadline) {
	if !d.deadline.IsZero() && !w.watching {
		w.arm(d.deadline)
	}
}

// arm sets the timer to fire at at.
func (w *callWatch) arm(at time.Time) {
	w.watching = true
	if w.timer == nil {
		w.timer = time.AfterFunc(time.Until(at), w.expire)
		return
	}
	w.timer.Reset(time.Until(at))
}

// fired is called first by expire: the timer is no longer set.
func (w *callWatch) fired() { w.watching = false }

// stop stops the timer, for good.
func (w *callWatch) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}
