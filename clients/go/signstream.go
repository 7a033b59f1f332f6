package handshaked

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// DefaultSignStreams is how many SignStreams a Client keeps for Sign and
// Decrypt. The service works on several requests of a stream at once (as
// many as it has cores) and answers them in order, so a slow operation
// holds back the answers behind it on its stream: a few streams keep that
// from stalling every call. Each carries every call that arrives while
// earlier ones are in flight, which is where the cost of a unary call (a
// goroutine, headers, a trailer) is saved.
const DefaultSignStreams = 4

// errStreamLost says a call's stream broke before its answer came: the
// call goes again as a unary RPC, which is safe because signing and
// decrypting change nothing.
var errStreamLost = errors.New("sign stream lost")

// DefaultSignStreamAge is how long a SignStream takes new calls before the
// next call opens another in its place (see WithSignStreamAge).
const DefaultSignStreamAge = 30 * time.Second

// streamOps sends key operations over long-lived SignStreams, opening each
// on first use and again after it ends (the service closes a stream idle
// for a minute; a connection can break) or has taken calls for maxAge.
type streamOps struct {
	streamSlots[opStream]
	vault  pb.KeyVaultClient
	maxAge time.Duration
	// timeout bounds a call without a deadline of its own (the client's
	// timeout; 0: unbounded).
	timeout time.Duration
}

// opStream is one slot of a SignStream. Answers come in request order, so
// waiting callers are a FIFO queue; mu makes a Send and its place in the
// queue one step, so the two orders agree.
type opStream struct {
	mu  sync.Mutex
	cur *openStream // nil: not open
}

// openStream is a SignStream and the calls waiting for its answers.
type openStream struct {
	cs      pb.KeyVault_SignStreamClient
	pending []*streamCall
	retire  time.Time // from then on, the next call opens a new stream; zero: never
	// watch fires at the deadline of the oldest call bounded by the
	// client's timeout.
	watch callWatch
}

type streamCall = timedCall[opResult]

type opResult struct {
	resp *pb.SignStreamResponse
	err  error
}

func newStreamOps(vault pb.KeyVaultClient, n int, maxAge time.Duration) *streamOps {
	o := &streamOps{vault: vault, maxAge: maxAge}
	o.init(n)
	return o
}

// do sends req on one of the streams and waits for its answer, or returns
// errStreamLost when the stream could not carry it.
func (o *streamOps) do(ctx context.Context, req *pb.SignStreamRequest) (*pb.SignStreamResponse, error) {
	s := o.take()
	tc := newTimedCall[opResult](ctx, o.timeout)
	call := &tc
	s.mu.Lock()
	if s.cur != nil && !s.cur.retire.IsZero() && time.Now().After(s.cur.retire) {
		// A stream stays on the replica it was opened on: retiring it
		// lets the balancer place its successor, so a replica that
		// joined (or came back) gets its share of streamed calls. The
		// old one answers what it was sent, then ends.
		s.cur.cs.CloseSend()
		s.cur = nil
	}
	if s.cur == nil {
		sctx, cancel := context.WithCancel(o.ctx)
		cs, err := o.vault.SignStream(sctx)
		if err != nil {
			cancel()
			s.mu.Unlock()
			return nil, errStreamLost
		}
		st := &openStream{cs: cs}
		st.watch.expire = func() { s.expire(st) }
		if o.maxAge > 0 {
			st.retire = time.Now().Add(o.maxAge)
		}
		s.cur = st
		go s.receive(st, cancel)
	}
	s.cur.pending = append(s.cur.pending, call)
	s.cur.watch.watch(call.callDeadline)
	// A failed Send needs nothing here: the receiver sees the broken
	// stream too and fails every call queued on it, this one included.
	_ = s.cur.cs.Send(req)
	s.mu.Unlock()
	return wait(ctx, call.answer)
}

// expire answers the calls of st past their deadline with errCallTimeout
// (their answers, when they come, are dropped) and sets the timer for the
// next deadline. A retired stream's calls time out as any.
func (s *opStream) expire(st *openStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.watch.fired()
	now := time.Now()
	var next time.Time
	for _, c := range st.pending {
		if c.due(now, &next) {
			c.give(opResult{err: errCallTimeout})
		}
	}
	if !next.IsZero() {
		st.watch.arm(next)
	}
}

func wait(ctx context.Context, ch chan opResult) (*pb.SignStreamResponse, error) {
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		// The answer, when it comes, goes to the buffered channel and is
		// dropped.
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// receive hands each answer of st to the oldest waiting call; when st ends
// it fails the calls still waiting with errStreamLost and, unless it was
// retired already, forgets st, so the next call opens a new stream.
func (s *opStream) receive(st *openStream, cancel context.CancelFunc) {
	defer cancel()
	for {
		resp, err := st.cs.Recv()
		s.mu.Lock()
		if err != nil || len(st.pending) == 0 {
			// Ended, or an answer nobody asked for: out of step, so
			// nothing more on it can be trusted.
			pending := st.pending
			st.pending = nil
			st.watch.stop()
			if s.cur == st {
				s.cur = nil
			}
			s.mu.Unlock()
			for _, c := range pending {
				c.give(opResult{err: errStreamLost})
			}
			return
		}
		c := st.pending[0]
		st.pending = st.pending[1:]
		s.mu.Unlock()
		c.give(opResult{resp: resp})
	}
}

// sign signs in a coalesced batch if the scheme's signatures are cheap
// (coalesced), over a SignStream where the service has no BatchStream (or
// without coalescing, or for RSA), or unary when the stream is lost.
func (c *Client) sign(ctx context.Context, req *pb.SignRequest) (*pb.SignResponse, error) {
	if coalesced(req.GetScheme()) {
		if r, err := c.batched(ctx, &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: req}}); !errors.Is(err, errStreamLost) {
			return answerOf(r.GetSign(), err)
		}
	}
	if resp, err := c.streamed(ctx, &pb.SignStreamRequest{Request: req}); !errors.Is(err, errStreamLost) {
		return answerOf(resp.GetResponse(), err)
	}
	return c.vault.Sign(ctx, req)
}

// errWrongAnswer is a streamed answer that is not the kind of result its
// request asked for: a broken service, whose answer is not handed on as an
// empty signature or plaintext.
var errWrongAnswer = status.Error(codes.Internal, "the service answered with another kind of result")

// answerOf is a streamed call's result r, which err or the service's
// answer of another kind leaves nil.
func answerOf[R any](r *R, err error) (*R, error) {
	if err == nil && r == nil {
		return nil, errWrongAnswer
	}
	return r, err
}

// coalesced says whether signatures of scheme go in coalesced batches:
// ECDSA and Ed25519 signatures cost tens of microseconds, about what a
// message costs both processes, so sharing one message pays. An RSA
// operation (an RSA signature, every decryption) costs about a
// millisecond: sharing a message saves it nothing, and it would wait for
// the batch in flight before it to be answered (issue 12's suite, RSA-2048
// decryption at 8 callers: 0.71x the in-process rate coalesced, 0.92x one
// message each, at the same CPU per operation).
func coalesced(scheme pb.SignatureScheme) bool {
	switch scheme {
	case pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP384R1_SHA384,
		pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP521R1_SHA512, pb.SignatureScheme_SIGNATURE_SCHEME_ED25519:
		return true
	}
	return false
}

// decrypt decrypts over a SignStream (an RSA operation: see coalesced), or
// unary when the stream is lost.
func (c *Client) decrypt(ctx context.Context, req *pb.DecryptRequest) (*pb.DecryptResponse, error) {
	if resp, err := c.streamed(ctx, &pb.SignStreamRequest{Decrypt: req}); !errors.Is(err, errStreamLost) {
		return answerOf(resp.GetDecrypt(), err)
	}
	return c.vault.Decrypt(ctx, req)
}

// streamed runs req over a stream, bounded by the client's timeout as a
// unary call would be (by the stream's timer; a call whose stream is lost
// goes again, bounded anew); an error answer becomes the status it stands
// for.
func (c *Client) streamed(ctx context.Context, req *pb.SignStreamRequest) (*pb.SignStreamResponse, error) {
	if c.ops == nil {
		return nil, errStreamLost
	}
	resp, err := c.ops.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if e := resp.GetError(); e != nil {
		return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return resp, nil
}

// bounded bounds ctx by the client's timeout, as deadlineInterceptor
// bounds unary calls, unless it has a deadline already.
func (c *Client) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return ctx, func() {}
}
