package handshaked

import (
	"context"
	"math"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// minOpsInFlight is how many operations a BatchStream keeps in flight
// before calls wait to go together: below it a call goes at once, so a
// lone caller or two never wait for another's answer and the service's
// cores are not left idle by a few callers.
const minOpsInFlight = 2

// maxBatch is how many operations one batch carries, the service's limit.
const maxBatch = 256

// batchOps coalesces Sign and Decrypt calls into batches on a long-lived
// BatchStream. A call that finds fewer than minOpsInFlight operations in
// flight goes at once, with the calls waiting; any other waits, and the
// calls that waited go together in one batch when an answer comes. There
// is no timer: a call waits only for operations that are in flight.
//
// Each message costs both processes about the same whatever it carries
// (issue 12: 150–200 µs of CPU per message in both together on 2 cores,
// the wake-ups and syscalls of a round trip more than gRPC's own work), so
// the fewer the messages the cheaper each operation. A unary Batch call
// per batch costs more again (ECDSA at 8 callers: 0.58–0.66× in-process
// against 0.78–0.88× on the stream, same runs).
type batchOps struct {
	vault  pb.KeyVaultClient
	maxAge time.Duration
	// timeout bounds a call without a deadline of its own (the client's
	// timeout; 0: unbounded).
	timeout time.Duration
	ctx     context.Context // ends the stream on Close
	stop    context.CancelFunc
	// mu orders the sends, the batches in flight (answered in order) and
	// the calls waiting.
	mu  sync.Mutex
	cur *batchStream // nil: not open
	// unsupportedUntil (Unix nanoseconds) is set when a service answers
	// Unimplemented: it predates BatchStream, and calls go over
	// SignStreams until then, a stream's age later (in a rolling upgrade,
	// the next stream may reach an upgraded replica).
	unsupportedUntil int64
}

// batchStream is an open BatchStream, the batches it has in flight and the
// calls waiting for the next batch.
type batchStream struct {
	cs       pb.KeyVault_BatchStreamClient
	inFlight [][]*batchCall // oldest first
	ops      int            // operations in inFlight
	waiting  []*batchCall
	// holding: the receiver has just answered calls and lets them come
	// back before the next batch goes, so that closed-loop callers do not
	// split into groups that take turns.
	holding bool
	retired bool      // takes no new calls; closes once it has answered all
	retire  time.Time // from then on, the next call opens a new stream; zero: never
	// watch fires at the deadline of the oldest call bounded by the
	// client's timeout (watching: it is set). One timer per stream rather
	// than a timer per call, as a context.WithTimeout per call would be
	// (measured: ~2.5 µs of CPU per call, 3% of an ECDSA signature's
	// cost through the service). The calls are in order, so their
	// deadlines are too.
	watch    *time.Timer
	watching bool
}

type batchCall struct {
	op       *pb.BatchOperation
	answer   chan batchAnswer // buffered: a call given up on is not waited for
	deadline time.Time        // zero: the caller's context bounds the call
	expired  bool             // answered with errCallTimeout
}

// give answers c unless it has its answer already (it expired).
func (c *batchCall) give(a batchAnswer) {
	select {
	case c.answer <- a:
	default:
	}
}

// errCallTimeout is what a call bounded by the client's timeout gets at
// its deadline: what its own context would have said.
var errCallTimeout = status.FromContextError(context.DeadlineExceeded).Err()

type batchAnswer struct {
	result *pb.BatchResult
	err    error
}

func newBatchOps(vault pb.KeyVaultClient, maxAge time.Duration) *batchOps {
	ctx, stop := context.WithCancel(context.Background())
	return &batchOps{vault: vault, maxAge: maxAge, ctx: ctx, stop: stop}
}

func (o *batchOps) close() { o.stop() }

// do runs op in a batch and waits for its result, or returns errStreamLost
// when the stream could not carry it.
func (o *batchOps) do(ctx context.Context, op *pb.BatchOperation) (*pb.BatchResult, error) {
	call := &batchCall{op: op, answer: make(chan batchAnswer, 1)}
	if _, ok := ctx.Deadline(); !ok && o.timeout > 0 {
		call.deadline = time.Now().Add(o.timeout)
	}
	o.mu.Lock()
	if o.cur == nil && time.Now().UnixNano() < o.unsupportedUntil {
		o.mu.Unlock()
		return nil, errStreamLost
	}
	if o.cur != nil && !o.cur.retire.IsZero() && time.Now().After(o.cur.retire) {
		// As a SignStream (streamOps.do): the successor lets the balancer
		// place the calls anew. The old one answers what it carries, then
		// ends.
		o.cur.retired = true
		o.cur.closeIfDone()
		o.cur = nil
	}
	if o.cur == nil {
		sctx, cancel := context.WithCancel(o.ctx)
		cs, err := o.vault.BatchStream(sctx)
		if err != nil {
			cancel()
			o.mu.Unlock()
			return nil, errStreamLost
		}
		o.cur = &batchStream{cs: cs}
		if o.maxAge > 0 {
			o.cur.retire = time.Now().Add(o.maxAge)
		}
		go o.receive(o.cur, cancel)
	}
	st := o.cur
	st.waiting = append(st.waiting, call)
	if !call.deadline.IsZero() && !st.watching {
		o.arm(st, call.deadline)
	}
	if !st.holding && st.ops < minOpsInFlight {
		st.send()
	}
	o.mu.Unlock()
	select {
	case a := <-call.answer:
		return a.result, a.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// arm sets st's timer to fire at; o.mu is held.
func (o *batchOps) arm(st *batchStream, at time.Time) {
	st.watching = true
	if st.watch == nil {
		st.watch = time.AfterFunc(time.Until(at), func() { o.expire(st) })
		return
	}
	st.watch.Reset(time.Until(at))
}

// expire answers the calls of st past their deadline with errCallTimeout
// (their operations may still be answered, and are dropped) and sets the
// timer for the next deadline.
func (o *batchOps) expire(st *batchStream) {
	o.mu.Lock()
	defer o.mu.Unlock()
	st.watching = false
	now := time.Now()
	queues := append(append([][]*batchCall(nil), st.inFlight...), st.waiting)
	for _, calls := range queues {
		for _, c := range calls {
			switch {
			case c.deadline.IsZero() || c.expired:
			case c.deadline.After(now):
				o.arm(st, c.deadline)
				return
			default:
				c.expired = true
				c.give(batchAnswer{err: errCallTimeout})
			}
		}
	}
}

// send sends the calls waiting (up to maxBatch) as one batch; o.mu is
// held.
func (st *batchStream) send() {
	n := min(len(st.waiting), maxBatch)
	calls := st.waiting[:n:n]
	st.waiting = st.waiting[n:]
	ops := make([]*pb.BatchOperation, n)
	for i, c := range calls {
		ops[i] = c.op
	}
	st.inFlight = append(st.inFlight, calls)
	st.ops += n
	// A failed Send needs nothing here: the receiver sees the broken
	// stream too and fails every call on it, these included.
	_ = st.cs.Send(&pb.BatchStreamRequest{Batch: &pb.BatchRequest{Operations: ops}})
}

// closeIfDone ends a retired stream's sending side once nothing is in
// flight or waiting; the receiver then sees the end of the stream.
func (st *batchStream) closeIfDone() {
	if st.retired && len(st.inFlight) == 0 && len(st.waiting) == 0 {
		_ = st.cs.CloseSend()
	}
}

// receive hands each batch's results to its calls, then sends the calls
// that waited meanwhile; when st ends it fails the calls still on it with
// errStreamLost and, unless it was retired already, forgets st, so the
// next call opens a new stream.
func (o *batchOps) receive(st *batchStream, cancel context.CancelFunc) {
	defer cancel()
	var err error
	for {
		var resp *pb.BatchStreamResponse
		resp, err = st.cs.Recv()
		o.mu.Lock()
		if err != nil || len(st.inFlight) == 0 || len(resp.GetBatch().GetResults()) != len(st.inFlight[0]) {
			// Ended, or an answer out of step with what was sent: nothing
			// more on it can be trusted.
			break
		}
		calls := st.inFlight[0]
		st.inFlight = st.inFlight[1:]
		st.ops -= len(calls)
		st.holding = true
		o.mu.Unlock()
		for i, r := range resp.GetBatch().GetResults() {
			calls[i].give(batchAnswer{result: r})
		}
		// The callers just answered are runnable on this core: yielding
		// once lets those that call again join the calls waiting, instead
		// of finding the next batch gone and waiting for its answer.
		runtime.Gosched()
		o.mu.Lock()
		st.holding = false
		if len(st.waiting) > 0 && st.ops < minOpsInFlight {
			st.send()
		}
		st.closeIfDone()
		o.mu.Unlock()
	}
	if status.Code(err) == codes.Unimplemented {
		until := int64(math.MaxInt64)
		if o.maxAge > 0 {
			until = time.Now().Add(o.maxAge).UnixNano()
		}
		o.unsupportedUntil = until
	}
	lost := st.waiting
	for _, calls := range st.inFlight {
		lost = append(lost, calls...)
	}
	st.inFlight, st.waiting, st.ops = nil, nil, 0
	if st.watch != nil {
		st.watch.Stop()
	}
	if o.cur == st {
		o.cur = nil
	}
	o.mu.Unlock()
	for _, c := range lost {
		c.give(batchAnswer{err: errStreamLost})
	}
}

// batchResultError is the status a failed operation's result stands for.
func batchResultError(r *pb.BatchResult) error {
	if e := r.GetError(); e != nil {
		return status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return nil
}

// batched runs op in a coalesced batch, bounded by the client's timeout
// as streamed is (by the stream's timer; a call whose stream is lost goes
// again, bounded anew); a failed operation's result becomes the status it
// stands for.
func (c *Client) batched(ctx context.Context, op *pb.BatchOperation) (*pb.BatchResult, error) {
	if c.batches == nil {
		return nil, errStreamLost
	}
	r, err := c.batches.do(ctx, op)
	if err != nil {
		return nil, err
	}
	if err := batchResultError(r); err != nil {
		return nil, err
	}
	return r, nil
}
