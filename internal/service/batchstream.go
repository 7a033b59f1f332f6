package service

import (
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// batchStreamDepth is how many batches of one BatchStream are worked on
// at once. Batch spreads each batch over the cores already; one more
// keeps them busy while an answer travels when the caller has sent the
// next batch already.
const batchStreamDepth = 2

// BatchStream answers each batch of the stream with what Batch would (so
// each operation is limited, authorized and audited by guard.batchItem),
// in the order the batches came. A batch the guard refuses as a whole (its
// shape, the caller's rate) ends the stream once the answers to the
// batches before it are sent. Like SignStream, a stream's work is bounded
// by its depth and the caller's stream cap, not by the in-flight cap of
// unary calls.
func (s *KeyVault) BatchStream(stream pb.KeyVault_BatchStreamServer) error {
	ctx := stream.Context()
	return pipeline(ctx, batchStreamDepth, stream.Recv, func(req *pb.BatchStreamRequest) *pb.BatchStreamResponse {
		// The guard checked the batch (checkBatch). The pipeline's workers
		// live as long as the stream: they work on their batches too.
		return &pb.BatchStreamResponse{Batch: s.runBatch(ctx, req.GetBatch(), true)}
	}, stream.Send)
}
