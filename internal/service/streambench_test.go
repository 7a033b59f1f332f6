package service_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// BenchmarkSignStream signs over one SignStream, message by message, so the
// per-message cost of the stream guard (rate, sizes, idle timeout) shows:
//
//	go test -run '^$' -bench SignStream -benchtime 3s ./internal/service/
func BenchmarkSignStream(b *testing.B) {
	ctx := context.Background()
	dev := startServer(b)
	importFixture(b, dev, "key-a", "p256-sec1.pem")
	req := &pb.SignStreamRequest{Request: &pb.SignRequest{Key: "key-a", Version: 1, Scheme: p256Scheme, Input: &pb.SignRequest_Digest{Digest: make([]byte, 32)}}}
	stream, err := dev.kv.SignStream(ctx)
	require.NoError(b, err)
	before := cpuTime()
	for b.Loop() {
		require.NoError(b, stream.Send(req))
		_, err := stream.Recv()
		require.NoError(b, err)
	}
	b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
	require.NoError(b, stream.CloseSend())
}
