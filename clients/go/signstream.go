package handshaked

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

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

// streamOps sends key operations over long-lived SignStreams, opening each
// on first use and again after it ends (the service closes a stream idle
// for a minute; a connection can break).
type streamOps struct {
	vault   pb.KeyVaultClient
	streams []*opStream
	next    atomic.Uint32
	ctx     context.Context // ends the streams on Close
	stop    context.CancelFunc
}

// opStream is one SignStream. Answers come in request order, so waiting
// callers are a FIFO queue; mu makes a Send and its place in the queue one
// step, so the two orders agree.
type opStream struct {
	mu      sync.Mutex
	cs      pb.KeyVault_SignStreamClient // nil: not open
	pending []chan opResult
}

type opResult struct {
	resp *pb.SignStreamResponse
	err  error
}

func newStreamOps(vault pb.KeyVaultClient, n int) *streamOps {
	ctx, stop := context.WithCancel(context.Background())
	o := &streamOps{vault: vault, streams: make([]*opStream, n), ctx: ctx, stop: stop}
	for i := range o.streams {
		o.streams[i] = &opStream{}
	}
	return o
}

func (o *streamOps) close() { o.stop() }

// do sends req on one of the streams and waits for its answer, or returns
// errStreamLost when the stream could not carry it.
func (o *streamOps) do(ctx context.Context, req *pb.SignStreamRequest) (*pb.SignStreamResponse, error) {
	s := o.streams[int(o.next.Add(1))%len(o.streams)]
	ch := make(chan opResult, 1)
	s.mu.Lock()
	if s.cs == nil {
		sctx, cancel := context.WithCancel(o.ctx)
		cs, err := o.vault.SignStream(sctx)
		if err != nil {
			cancel()
			s.mu.Unlock()
			return nil, errStreamLost
		}
		s.cs = cs
		go s.receive(cs, cancel)
	}
	s.pending = append(s.pending, ch)
	// A failed Send needs nothing here: the receiver sees the broken
	// stream too and fails every call queued on it, this one included.
	_ = s.cs.Send(req)
	s.mu.Unlock()
	return wait(ctx, ch)
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

// receive hands each answer of cs to the oldest waiting call; when cs ends
// it fails the calls still waiting with errStreamLost and forgets cs, so
// the next call opens a new stream.
func (s *opStream) receive(cs pb.KeyVault_SignStreamClient, cancel context.CancelFunc) {
	defer cancel()
	for {
		resp, err := cs.Recv()
		s.mu.Lock()
		if err != nil || len(s.pending) == 0 {
			// Ended, or an answer nobody asked for: out of step, so
			// nothing more on cs can be trusted.
			pending := s.pending
			s.pending, s.cs = nil, nil
			s.mu.Unlock()
			for _, ch := range pending {
				ch <- opResult{err: errStreamLost}
			}
			return
		}
		ch := s.pending[0]
		s.pending = s.pending[1:]
		s.mu.Unlock()
		ch <- opResult{resp: resp}
	}
}

// sign signs over a stream, or unary when the stream is lost.
func (c *Client) sign(ctx context.Context, req *pb.SignRequest) (*pb.SignResponse, error) {
	if resp, err := c.streamed(ctx, &pb.SignStreamRequest{Request: req}); !errors.Is(err, errStreamLost) {
		return resp.GetResponse(), err
	}
	return c.vault.Sign(ctx, req)
}

// decrypt decrypts over a stream, or unary when the stream is lost.
func (c *Client) decrypt(ctx context.Context, req *pb.DecryptRequest) (*pb.DecryptResponse, error) {
	if resp, err := c.streamed(ctx, &pb.SignStreamRequest{Decrypt: req}); !errors.Is(err, errStreamLost) {
		return resp.GetDecrypt(), err
	}
	return c.vault.Decrypt(ctx, req)
}

// streamed runs req over a stream, bounded by the client's timeout as a
// unary call would be; an error answer becomes the status it stands for.
func (c *Client) streamed(ctx context.Context, req *pb.SignStreamRequest) (*pb.SignStreamResponse, error) {
	if c.ops == nil {
		return nil, errStreamLost
	}
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
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
