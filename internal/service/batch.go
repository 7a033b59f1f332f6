package service

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/authz"
)

// Batch limits: a batch is a few hundred handshakes' worth of work, and its
// reference is an identifier, not a payload.
const (
	maxBatchOperations = 256
	maxReferenceBytes  = 64
)

// Audit operation names of a batch's items, as methods for guard.entry.
const (
	batchSignMethod    = "/handshake.v1.KeyVault/Batch.Sign"
	batchDecryptMethod = "/handshake.v1.KeyVault/Batch.Decrypt"
)

// batchItemGuard admits one operation of a batch (rate limit, use right
// on its key) and starts its audit entry; finish completes the entry with
// the operation's outcome. The guard provides it; nil admits everything.
type batchItemGuard func(ctx context.Context, reference string, op any) (finish func(resp any, err error), err error)

func checkBatch(r *pb.BatchRequest) error {
	if len(r.GetReference()) > maxReferenceBytes {
		return invalid("reference: more than %d bytes", maxReferenceBytes)
	}
	if n := len(r.GetOperations()); n == 0 || n > maxBatchOperations {
		return invalid("operations: must hold 1 to %d operations, got %d", maxBatchOperations, n)
	}
	for _, op := range r.GetOperations() {
		var key string
		switch o := op.GetOperation().(type) {
		case *pb.BatchOperation_Sign:
			key = o.Sign.GetKey()
		case *pb.BatchOperation_Decrypt:
			key = o.Decrypt.GetKey()
		default:
			return invalid("operations: each needs sign or decrypt")
		}
		if err := checkID("operations.key", key); err != nil {
			return err
		}
	}
	return nil
}

// Batch runs the operations batchParallelism at a time on the helpers
// idle now, or on this call's goroutine when none is, and answers each in
// the request's order. The call's goroutine is one of the gRPC server's
// many workers, each of which serves a call now and then, so its stack has
// shrunk again (at a garbage collection) by the time it signs; the
// helpers are few and keep theirs grown.
func (s *KeyVault) Batch(ctx context.Context, req *pb.BatchRequest) (*pb.BatchResponse, error) {
	if err := checkBatch(req); err != nil {
		return nil, err
	}
	return s.runBatch(ctx, req, false), nil
}

// runBatch runs a checked batch as Batch does. A caller that signs often
// (a stream's worker, whose stack stays grown) works on it too, beside as
// many helpers as make batchParallelism with it: each helper woken is a
// hand-off, and the caller would only wait for them otherwise.
func (s *KeyVault) runBatch(ctx context.Context, req *pb.BatchRequest, callerWorks bool) *pb.BatchResponse {
	ops := req.GetOperations()
	results := make([]*pb.BatchResult, len(ops))
	var next atomic.Int64
	work := func() {
		for i := next.Add(1) - 1; i < int64(len(ops)); i = next.Add(1) - 1 {
			results[i] = s.batchOne(ctx, req.GetReference(), ops[i])
		}
	}
	helpers := min(batchParallelism(), len(ops))
	if callerWorks {
		helpers--
	}
	var wg sync.WaitGroup
	helped := false
	for range helpers {
		wg.Add(1)
		if !s.helpers.offer(func() { work(); wg.Done() }) {
			wg.Done()
			break
		}
		helped = true
	}
	if callerWorks || !helped {
		work()
	}
	wg.Wait()
	return &pb.BatchResponse{Reference: req.GetReference(), Results: results}
}

func (s *KeyVault) batchOne(ctx context.Context, reference string, op *pb.BatchOperation) *pb.BatchResult {
	var msg any = op.GetSign()
	if d := op.GetDecrypt(); d != nil {
		msg = d
	}
	finish := func(any, error) {}
	if s.batchItem != nil {
		f, err := s.batchItem(ctx, reference, msg)
		if err != nil {
			return batchError(err)
		}
		finish = f
	}
	var (
		resp any
		err  error
		out  *pb.BatchResult
	)
	switch m := msg.(type) {
	case *pb.SignRequest:
		var r *pb.SignResponse
		if r, err = s.Sign(ctx, m); err == nil {
			resp, out = r, &pb.BatchResult{Result: &pb.BatchResult_Sign{Sign: r}}
		}
	case *pb.DecryptRequest:
		var r *pb.DecryptResponse
		if r, err = s.Decrypt(ctx, m); err == nil {
			resp, out = r, &pb.BatchResult{Result: &pb.BatchResult_Decrypt{Decrypt: r}}
		}
	}
	finish(resp, err)
	if err != nil {
		return batchError(err)
	}
	return out
}

func batchError(err error) *pb.BatchResult {
	st := status.Convert(err)
	return &pb.BatchResult{Result: &pb.BatchResult_Error{Error: &pb.Error{Code: int32(st.Code()), Message: st.Message()}}}
}

// batchItem is the guard's batchItemGuard: each operation of a batch is
// rate-limited, authorized and audited as the unary call it stands for.
func (g *guard) batchItem(ctx context.Context, reference string, op any) (func(any, error), error) {
	start := time.Now()
	method := batchSignMethod
	if _, ok := op.(*pb.DecryptRequest); ok {
		method = batchDecryptMethod
	}
	e := g.entry(ctx, method, op)
	if e != nil {
		e.Reference = reference
	}
	finish := func(resp any, err error) { g.record(ctx, e, start, resp, err) }
	if g.rate != nil {
		if wait := g.rate.take(callerIdentity(ctx), start); wait > 0 {
			g.refused("rate_limit")
			err := rateLimited(wait)
			finish(nil, err)
			return nil, err
		}
	}
	if err := g.allowed(ctx, authz.Use, namedKey(op)); err != nil {
		finish(nil, err)
		return nil, err
	}
	return finish, nil
}

// weight is how many in-flight places a call takes: a batch holds one per
// operation, so batching does not get round the in-flight cap, but at most
// the caller's whole cap, so that any batch can run when the caller has
// nothing else in flight.
func (g *guard) weight(req any) int64 {
	r, ok := req.(*pb.BatchRequest)
	if !ok || g.inFlight == nil {
		return 1
	}
	n := int64(max(len(r.GetOperations()), 1))
	if c := g.inFlight.perCaller; c > 0 {
		n = min(n, c)
	}
	return n
}
