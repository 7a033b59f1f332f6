package service

import (
	"net/http"
	goruntime "runtime"
	"sync"
)

// streamWorkers is how many long-lived goroutines serve gRPC calls (0: a
// new goroutine per call, grpc's default). A call that finds them all busy
// gets a goroutine of its own, which pays the stack growth again, so there
// are as many as the calls a loaded server has in flight, not one per
// core (measured in issue 12's note: 2 workers left most calls of 16
// concurrent callers on fresh goroutines). A stream holds its worker while
// it is open. An idle worker costs its stack, a few KiB.
var streamWorkers = max(64, 16*goruntime.GOMAXPROCS(0))

// batchParallelism is how many operations of one batch run at once: they
// are CPU work, so more than the cores would only queue.
func batchParallelism() int { return goruntime.GOMAXPROCS(0) }

// helpers are long-lived goroutines that work on the operations of
// batches, as many as the cores. Goroutines started for each batch, or the
// call's own, would grow their stacks again inside the signing code (the
// P-256 code needs more than a fresh or shrunk stack) at every batch; a few
// helpers, busy whenever batches come, keep theirs grown (issue 12, h4's
// note: stack growth was a fifth of the service's CPU beyond signing for
// batches of 8).
type helpers struct {
	work    chan func()
	stop    chan struct{}
	stopped sync.Once
}

// startHelpers starts n helpers; stop ends them.
func startHelpers(n int) *helpers {
	h := &helpers{work: make(chan func()), stop: make(chan struct{})}
	for range n {
		go func() {
			for {
				select {
				case f := <-h.work:
					f()
				case <-h.stop:
					return
				}
			}
		}()
	}
	return h
}

// offer hands f to a helper that is idle now and reports whether one took
// it: a call that finds them all busy with other calls' work does its own,
// sharing the cores with them. A nil or stopped h takes nothing.
func (h *helpers) offer(f func()) bool {
	if h == nil {
		return false
	}
	select {
	case h.work <- f:
		return true
	default:
		return false
	}
}

// close ends the helpers once they finish what they took; offers after
// they have ended find none. A Server can be shut down more than once.
func (h *helpers) close() {
	if h != nil {
		h.stopped.Do(func() { close(h.stop) })
	}
}

// onHelpers serves the HTTP/2 requests of next on h's goroutines. Go's
// HTTP/2 server runs each request on a goroutine of its own, whose stack
// grows (copied, doubling) through the gateway, the interceptor chain and
// the signing code on every call, as a gRPC call's did before
// streamWorkers (issue 12: REST over TLS and HTTP/2, what curl and Go's
// default client negotiate, spent 15% of the service's CPU in stack
// growth for ECDSA signatures at 8 callers, against 2% over HTTP/1.1).
// An HTTP/1.x connection's requests run one after the other on its own
// long-lived goroutine, which keeps its stack: they stay there. A request
// that finds every helper busy is served on its own goroutine, as before.
// The request's goroutine waits for its helper, so the handler returns
// only once next has, as net/http requires, and a panic in next is raised
// again there, where net/http recovers it (http.ErrAbortHandler included).
func onHelpers(h *helpers, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor < 2 {
			next.ServeHTTP(w, r)
			return
		}
		done := make(chan any, 1)
		if !h.offer(func() {
			defer func() { done <- recover() }()
			next.ServeHTTP(w, r)
		}) {
			next.ServeHTTP(w, r)
			return
		}
		if p := <-done; p != nil {
			panic(p)
		}
	})
}
