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
	return pipeline(signStreamParallelism(), stream.Recv, func(req *pb.SignStreamRequest) *pb.SignStreamResponse {
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
// sends the answers with send in the order the requests came. Once recv
// fails it sends the answers still due, then returns nil for io.EOF (the
// caller closed its side) or recv's error; a failed send ends it with that
// error, the answers still due being dropped. At most n answers wait to be
// sent, so a caller that does not read stops being read from.
func pipeline[Req, Resp any](n int, recv func() (Req, error), do func(Req) Resp, send func(Resp) error) error {
	type job struct {
		req    Req
		answer chan Resp
	}
	jobs := make(chan job)
	// due holds the answers in request order; its capacity bounds the work
	// taken on ahead of the sender.
	due := make(chan chan Resp, n)
	var workers sync.WaitGroup
	for range n {
		workers.Go(func() {
			for j := range jobs {
				j.answer <- do(j.req)
			}
		})
	}
	sent := make(chan error, 1)
	go func() {
		var err error
		for answer := range due {
			resp := <-answer
			if err == nil {
				err = send(resp)
			}
		}
		sent <- err
	}()

	var recvErr error
	for {
		req, err := recv()
		if err != nil {
			recvErr = err
			break
		}
		answer := make(chan Resp, 1)
		due <- answer
		jobs <- job{req, answer}
	}
	close(jobs)
	close(due)
	sendErr := <-sent
	workers.Wait()
	switch {
	case sendErr != nil:
		return sendErr
	case errors.Is(recvErr, io.EOF):
		return nil
	default:
		return recvErr
	}
}
