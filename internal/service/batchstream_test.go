package service_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

func streamBatch(reference string, ops ...*pb.BatchOperation) *pb.BatchStreamRequest {
	return &pb.BatchStreamRequest{Batch: &pb.BatchRequest{Reference: reference, Operations: ops}}
}

// TestBatchStreamProduction: over mutual TLS, each batch of a BatchStream
// is answered in order as Batch answers it (each operation with its own
// outcome: a key the caller may not use and a wrong scheme fail only their
// own), with an audit entry per operation and one per batch, each with the
// batch's reference. A batch Batch refuses as a whole ends the stream with
// its code once the batch sent before it is answered.
func TestBatchStreamProduction(t *testing.T) {
	s := startSecure(t, secureOptions{})
	ctx := context.Background()
	m := newMixedBatch(t, s)

	var rid requestID
	st, err := s.kv(t, "edge").BatchStream(ctx, rid.opt())
	require.NoError(t, err)
	// Three batches before any answer is read: two worked on at once,
	// answered in order; the third is empty, which Batch refuses.
	require.NoError(t, st.Send(streamBatch("s-1", m.ops...)))
	require.NoError(t, st.Send(streamBatch("s-2", batchSign("key-a", p256Scheme, "three"))))
	require.NoError(t, st.Send(streamBatch("s-3")))

	first, err := st.Recv()
	require.NoError(t, err)
	assert.Equal(t, "s-1", first.GetBatch().GetReference())
	m.check(t, first.GetBatch().GetResults())

	second, err := st.Recv()
	require.NoError(t, err)
	assert.Equal(t, "s-2", second.GetBatch().GetReference())
	require.Len(t, second.GetBatch().GetResults(), 1)
	digest := sha256.Sum256([]byte("three"))
	assert.True(t, ecdsa.VerifyASN1(m.pubA, digest[:], second.GetBatch().GetResults()[0].GetSign().GetSignature()))

	_, err = st.Recv()
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "an empty batch ends the stream: %v", err)

	var ops []string
	for _, e := range s.auditFor(t, rid.String()) {
		assert.Equal(t, idEdge, e.Caller)
		ops = append(ops, e.Operation+" "+e.Reference+" "+e.Key+" "+e.Outcome)
	}
	assert.ElementsMatch(t, []string{
		"KeyVault.BatchStream s-1  OK",
		"KeyVault.Batch.Sign s-1 key-a OK",
		"KeyVault.Batch.Sign s-1 key-b PERMISSION_DENIED",
		"KeyVault.Batch.Decrypt s-1 key-rsa OK",
		"KeyVault.Batch.Sign s-1 key-a INVALID_ARGUMENT",
		"KeyVault.BatchStream s-2  OK",
		"KeyVault.Batch.Sign s-2 key-a OK",
		// The refused batch's entry names none of its fields.
		"KeyVault.BatchStream   INVALID_ARGUMENT",
	}, ops)
}

// TestBatchStreamRateLimit: the rate limit counts the stream, each batch
// and each operation, as it counts a Batch call and its operations: past
// the caller's burst the operations left fail on their own with
// RESOURCE_EXHAUSTED, and a batch past it ends the stream.
func TestBatchStreamRateLimit(t *testing.T) {
	// A burst of 4 and a rate too low to refill during the test: the
	// stream takes one, the batch one, two of its operations the last two.
	s := startSecure(t, secureOptions{limits: service.Limits{Rate: 0.001, Burst: 4}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	st, err := s.kv(t, "edge").BatchStream(context.Background())
	require.NoError(t, err)
	op := batchSign("key-a", p256Scheme, "m")
	require.NoError(t, st.Send(streamBatch("r", op, op, op, op)))
	resp, err := st.Recv()
	require.NoError(t, err)
	var codesGot []codes.Code
	for _, r := range resp.GetBatch().GetResults() {
		codesGot = append(codesGot, codes.Code(r.GetError().GetCode()))
	}
	assert.Equal(t, []codes.Code{codes.OK, codes.OK, codes.ResourceExhausted, codes.ResourceExhausted}, codesGot)

	require.NoError(t, st.Send(streamBatch("r", op)))
	_, err = st.Recv()
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "a batch past the rate ends the stream: %v", err)
}

// TestBatchStreamEnds: a stream the caller closes ends without error once
// every batch is answered.
func TestBatchStreamEnds(t *testing.T) {
	s := startServer(t)
	importFixture(t, s, "key-a", "p256-sec1.pem")
	st, err := s.kv.BatchStream(context.Background())
	require.NoError(t, err)
	for range 5 {
		require.NoError(t, st.Send(streamBatch("", batchSign("key-a", p256Scheme, "m"), batchSign("no-such-key", p256Scheme, "m"))))
	}
	require.NoError(t, st.CloseSend())
	for i := range 5 {
		resp, err := st.Recv()
		require.NoError(t, err, "answer %d", i)
		require.Len(t, resp.GetBatch().GetResults(), 2)
		assert.NotEmpty(t, resp.GetBatch().GetResults()[0].GetSign().GetSignature())
		assert.Equal(t, int32(codes.NotFound), resp.GetBatch().GetResults()[1].GetError().GetCode())
	}
	_, err = st.Recv()
	assert.True(t, errors.Is(err, io.EOF), "%v", err)
}
