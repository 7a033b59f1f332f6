package handshaked

import (
	"context"
	"math"
	"runtime"
	"slices"
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

// batchOps coalesces Sign and Decrypt calls into batches on long-lived
// BatchStreams. A call that finds fewer than minOpsInFlight operations in
// flight goes at once, with the calls waiting; any other waits, and the
// calls that waited go together in one batch when an answer comes. There
// is no timer: a call waits only for operations that are in flight.
//
// Each message costs both processes about the same whatever it carries
// (issue 12: 150–200 µs of CPU per message in both together on 2 cores,
// the wake-ups and syscalls of a round trip more than gRPC's own work), so
// the fewer the messages the cheaper each operation. A unary Batch call
// per batch costs more again (ECDSA at 8 callers: 0.58–0.66× in-process
// against 0.78–0.88× on the stream, same runs). Closed-loop callers fill
// their batches (ECDSA P-256 at 8 callers: 7.1–7.4 operations a batch of
// the 8 possible), so what is left at 8 callers is the round trip itself:
// per batch, 70–120 µs of CPU in each process beside the signatures, and
// 8–10 context switches in the service. Two batches in flight, each of
// half the callers, so that one process would work while the other does,
// were no faster and cost the callers 1.5–4.5 µs more CPU per operation
// (0.49–0.63× in-process against 0.57–0.67× with one, same runs).
//
// The calls wait in one queue, and each batch goes on the next of a few
// streams in turn: a stream stays on the replica it was opened on, so one
// stream would put all of a client's operations on one replica at a time,
// and the fleet's other replicas would sign nothing for it.
type batchOps struct {
	vault  pb.KeyVaultClient
	maxAge time.Duration
	// timeout bounds a call without a deadline of its own (the client's
	// timeout; 0: unbounded).
	timeout time.Duration
	ctx     context.Context // ends the streams on Close
	stop    context.CancelFunc
	// mu orders the sends, each stream's batches in flight (answered in
	// order) and the calls waiting.
	mu      sync.Mutex
	streams []*batchStream // nil: not open
	// retired are streams replaced in their slot that still carry
	// batches: their calls time out as any.
	retired []*batchStream
	next    int // the slot of streams the next batch goes on
	ops     int // operations in flight, on every stream
	waiting []*batchCall
	// holding counts receivers that have just answered calls and let
	// them come back before the next batch goes, so that closed-loop
	// callers do not split into groups that take turns.
	holding int
	// watch fires at the deadline of the oldest call bounded by the
	// client's timeout.
	watch callWatch
	// unsupportedUntil (Unix nanoseconds) is set when a service answers
	// Unimplemented: it predates BatchStream, and calls go over
	// SignStreams until then, a stream's age later (in a rolling upgrade,
	// the next stream may reach an upgraded replica).
	unsupportedUntil int64
}

// batchStream is an open BatchStream and the batches it has in flight.
type batchStream struct {
	cs       pb.KeyVault_BatchStreamClient
	inFlight [][]*batchCall // oldest first
	retired  bool           // takes no new batches; closes once it has answered all
	retire   time.Time      // from then on, the next batch opens a new stream; zero: never
}

type batchCall struct {
	op *pb.BatchOperation
	timedCall[batchAnswer]
}

type batchAnswer struct {
	result *pb.BatchResult
	err    error
}

func newBatchOps(vault pb.KeyVaultClient, streams int, maxAge time.Duration) *batchOps {
	ctx, stop := context.WithCancel(context.Background())
	o := &batchOps{vault: vault, streams: make([]*batchStream, streams), maxAge: maxAge, ctx: ctx, stop: stop}
	o.watch.expire = o.expire
	return o
}

func (o *batchOps) close() { o.stop() }

// do runs op in a batch and waits for its result, or returns errStreamLost
// when a stream could not carry it.
func (o *batchOps) do(ctx context.Context, op *pb.BatchOperation) (*pb.BatchResult, error) {
	call := &batchCall{op: op, timedCall: newTimedCall[batchAnswer](ctx, o.timeout)}
	o.mu.Lock()
	if time.Now().UnixNano() < o.unsupportedUntil {
		o.mu.Unlock()
		return nil, errStreamLost
	}
	o.waiting = append(o.waiting, call)
	o.watch.watch(call.callDeadline)
	o.sendIfIdle()
	o.mu.Unlock()
	select {
	case a := <-call.answer:
		return a.result, a.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// expire answers the calls past their deadline with errCallTimeout (their
// operations may still be answered, and are dropped) and sets the timer
// for the next deadline.
func (o *batchOps) expire() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.watch.fired()
	now := time.Now()
	var next time.Time
	queues := [][]*batchCall{o.waiting}
	for _, st := range slices.Concat(o.streams, o.retired) {
		if st != nil {
			queues = append(queues, st.inFlight...)
		}
	}
	for _, calls := range queues {
		for _, c := range calls {
			if c.due(now, &next) {
				c.give(batchAnswer{err: errCallTimeout})
			}
		}
	}
	if !next.IsZero() {
		o.watch.arm(next)
	}
}

// sendIfIdle sends the calls waiting as one batch, unless enough
// operations are in flight for them to wait for an answer or a receiver
// is letting the calls it answered come back; o.mu is held.
func (o *batchOps) sendIfIdle() {
	if o.holding > 0 || o.ops >= minOpsInFlight || len(o.waiting) == 0 {
		return
	}
	st, err := o.nextStream()
	if err != nil {
		lost := o.waiting
		o.waiting = nil
		for _, c := range lost {
			c.give(batchAnswer{err: errStreamLost})
		}
		return
	}
	n := min(len(o.waiting), maxBatch)
	calls := o.waiting[:n:n]
	o.waiting = o.waiting[n:]
	ops := make([]*pb.BatchOperation, n)
	for i, c := range calls {
		ops[i] = c.op
	}
	st.inFlight = append(st.inFlight, calls)
	o.ops += n
	// A failed Send needs nothing here: the receiver sees the broken
	// stream too and fails every call on it, these included.
	_ = st.cs.Send(&pb.BatchStreamRequest{Batch: &pb.BatchRequest{Operations: ops}})
}

// nextStream returns the stream of the next slot in turn, opening it if it
// is not open or past its age; o.mu is held.
func (o *batchOps) nextStream() (*batchStream, error) {
	i := o.next
	o.next = (o.next + 1) % len(o.streams)
	st := o.streams[i]
	if st != nil && !st.retire.IsZero() && time.Now().After(st.retire) {
		// As a SignStream (streamOps.do): the successor lets the balancer
		// place the batches anew. The old one answers what it carries,
		// then ends.
		st.retired = true
		st.closeIfDone()
		o.retired = append(o.retired, st)
		st = nil
	}
	if st == nil {
		sctx, cancel := context.WithCancel(o.ctx)
		cs, err := o.vault.BatchStream(sctx)
		if err != nil {
			cancel()
			o.streams[i] = nil
			return nil, err
		}
		st = &batchStream{cs: cs}
		if o.maxAge > 0 {
			st.retire = time.Now().Add(o.maxAge)
		}
		o.streams[i] = st
		go o.receive(st, cancel)
	}
	return st, nil
}

// closeIfDone ends a retired stream's sending side once nothing is in
// flight on it; the receiver then sees the end of the stream.
func (st *batchStream) closeIfDone() {
	if st.retired && len(st.inFlight) == 0 {
		_ = st.cs.CloseSend()
	}
}

// receive hands each batch's results to its calls, then sends the calls
// that waited meanwhile; when st ends it fails the calls still in flight
// on it with errStreamLost and, unless it was retired already, forgets st,
// so that its slot opens a new stream. A service without BatchStream fails
// the calls waiting too, which then go over SignStreams.
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
		o.ops -= len(calls)
		o.holding++
		o.mu.Unlock()
		for i, r := range resp.GetBatch().GetResults() {
			calls[i].give(batchAnswer{result: r})
		}
		// The callers just answered are runnable on this core: yielding
		// once lets those that call again join the calls waiting, instead
		// of finding the next batch gone and waiting for its answer
		// (without it, 8 callers split into groups of 2 and 6 that take
		// turns, batches of 4 on average, and their process spends 15–65%
		// more CPU per operation).
		runtime.Gosched()
		o.mu.Lock()
		o.holding--
		o.sendIfIdle()
		st.closeIfDone()
		o.mu.Unlock()
	}
	var lost []*batchCall
	for _, calls := range st.inFlight {
		lost = append(lost, calls...)
		o.ops -= len(calls)
	}
	st.inFlight = nil
	for i, s := range o.streams {
		if s == st {
			o.streams[i] = nil
		}
	}
	o.retired = slices.DeleteFunc(o.retired, func(s *batchStream) bool { return s == st })
	if status.Code(err) == codes.Unimplemented {
		o.unsupportedUntil = unsupportedUntil(o.maxAge)
		lost = append(lost, o.waiting...)
		o.waiting = nil
	} else {
		// The calls waiting go on another stream.
		o.sendIfIdle()
	}
	o.mu.Unlock()
	for _, c := range lost {
		c.give(batchAnswer{err: errStreamLost})
	}
}

// unsupportedUntil is until when (Unix nanoseconds) a client takes a
// service to lack a streaming method it has just answered Unimplemented:
// a stream's age, after which the next stream may reach another replica;
// for ever if streams do not age.
func unsupportedUntil(maxAge time.Duration) int64 {
	if maxAge <= 0 {
		return math.MaxInt64
	}
	return time.Now().Add(maxAge).UnixNano()
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
