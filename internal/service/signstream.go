package service

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// signStreamParallelism is how many requests of one SignStream are worked
// on at once: the operations are CPU work, so more than the cores would
// only queue; fewer would leave a caller with one stream on one core
// (issue 12: answered one at a time, a stream reached 0.38× in-process).
func signStreamParallelism() int { return batchParallelism() }

// SignStream answers each request with what Sign (or Decrypt) would, in
// the order the requests came (callers and the audit log pair answers with
// requests by their order); up to signStreamParallelism requests are
// worked on at once. A failed operation becomes an error response and the
// stream goes on; a request the guard refuses ends the stream once the
// answers to the requests before it are sent.
func (s *KeyVault) SignStream(stream pb.KeyVault_SignStreamServer) error {
	ctx := stream.Context()
	return pipeline(ctx, signStreamParallelism(), stream.Recv, func(req *pb.SignStreamRequest) *pb.SignStreamResponse {
		return s.signStreamOne(ctx, req)
	}, stream.Send)
}

func (s *KeyVault) signStreamOne(ctx context.Context, req *pb.SignStreamRequest) *pb.SignStreamResponse {
	out := &pb.SignStreamResponse{}
	var err error
	switch {
	case req.GetDecrypt() != nil && req.GetRequest() != nil:
		err = invalid("set request or decrypt, not both")
	case req.GetDecrypt() != nil:
		var resp *pb.DecryptResponse
		if resp, err = s.Decrypt(ctx, req.GetDecrypt()); err == nil {
			out.Result = &pb.SignStreamResponse_Decrypt{Decrypt: resp}
		}
	default:
		var resp *pb.SignResponse
		if resp, err = s.Sign(ctx, req.GetRequest()); err == nil {
			out.Result = &pb.SignStreamResponse_Response{Response: resp}
		}
	}
	if err != nil {
		st := status.Convert(err)
		out.Result = &pb.SignStreamResponse_Error{Error: &pb.Error{Code: int32(st.Code()), Message: st.Message()}}
	}
	return out
}

// pipeline receives requests with recv until it fails, works on up to n of
// them at once with do, on n long-lived goroutines (a fresh goroutine per
// request would pay its stack growth again inside the signing code), and
// sends the answers with send in the order the requests came: the worker
// whose answer is next sends it, and the answers after it that are done,
// so that an answer is not handed to a goroutine of its own to be sent.
// Once recv fails it sends the answers still due, then returns nil for
// io.EOF (the caller closed its side) or recv's error; a failed send ends
// it with that error, the answers still due being dropped. At most n
// requests are taken on before their answers are sent, so a caller that
// does not read stops being read from. The stream's idle watch (ctx's)
// is told of each request taken on and each answered: a stream with
// requests still being worked on is not idle.
func pipeline[Req, Resp any](ctx context.Context, n int, recv func() (Req, error), do func(Req) Resp, send func(Resp) error) error {
	type job struct {
		req Req
		seq int
	}
	jobs := make(chan job)
	// taken holds a place per request received and not yet answered.
	taken := make(chan struct{}, n)
	o := &inOrder[Resp]{send: send, answers: make([]answer[Resp], n), taken: taken, work: streamWork(ctx)}
	var workers sync.WaitGroup
	for range n {
		workers.Go(func() {
			for j := range jobs {
				o.deliver(j.seq, do(j.req))
			}
		})
	}
	var recvErr error
	for seq := 0; ; seq++ {
		req, err := recv()
		if err != nil {
			recvErr = err
			break
		}
		o.work.owe(1)
		taken <- struct{}{}
		jobs <- job{req, seq}
	}
	close(jobs)
	// Every answer is delivered, so every one is sent: the last delivered
	// is sent by its worker or by the one sending before it.
	workers.Wait()
	switch {
	case o.sendErr != nil:
		return o.sendErr
	case errors.Is(recvErr, io.EOF):
		return nil
	default:
		return recvErr
	}
}

type answer[Resp any] struct {
	resp Resp
	done bool
}

// inOrder sends pipeline's answers in request order from the workers that
// make them.
type inOrder[Resp any] struct {
	send  func(Resp) error
	taken chan struct{}
	work  *idleWatch // nil: none

	mu      sync.Mutex
	answers []answer[Resp] // by request number modulo its length
	next    int            // number of the next answer to send
	sending bool           // a worker is sending
	sendErr error
}

// deliver records the answer to request seq and, unless a worker is
// sending already, sends the answers that are next in order.
func (o *inOrder[Resp]) deliver(seq int, resp Resp) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.answers[seq%len(o.answers)] = answer[Resp]{resp, true}
	if o.sending {
		return // the worker sending sends this one once it is next
	}
	o.sending = true
	for a := &o.answers[o.next%len(o.answers)]; a.done; a = &o.answers[o.next%len(o.answers)] {
		resp, failed := a.resp, o.sendErr != nil
		*a = answer[Resp]{}
		o.next++
		o.mu.Unlock()
		var err error
		if !failed {
			err = o.send(resp)
		}
		<-o.taken
		o.work.owe(-1)
		o.mu.Lock()
		if err != nil {
			o.sendErr = err
		}
	}
	o.sending = false
}
