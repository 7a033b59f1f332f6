package service_test

import (
	"context"
	"crypto/tls"
	"io"
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

// BenchmarkHandshakePerStream compares what one handshake costs in transport
// alone on a Stream of its own and on a shared Multiplex stream: a
// ClientHello the configuration refuses (TLS 1.2 only offered, TLS 1.3
// required) fails on its first step, so each operation is a start and its
// FAILED answer, with no cryptography:
//
//	go test -run '^$' -bench HandshakePerStream -benchmem ./internal/service/
func BenchmarkHandshakePerStream(b *testing.B) {
	ctx := context.Background()
	dev := startServer(b)
	key := newServerKey(b, dev, "p256-sec1.pem", "ec.test")
	hello := clientHello(b, &tls.Config{ServerName: key.name, RootCAs: key.pool, MaxVersion: tls.VersionTLS12})
	start := &pb.StartHandshakeRequest{Input: hello, Config: &pb.HandshakeConfig{
		Keys: []*pb.KeyRef{{Key: key.id}}, MinVersion: pb.TLSVersion_TLS_VERSION_1_3, OmitTrace: true}}
	hc := dev.handshakeClient(b)
	b.Run("stream", func(b *testing.B) {
		req := &pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: start}}
		before := cpuTime()
		for b.Loop() {
			stream, err := hc.Stream(ctx)
			require.NoError(b, err)
			require.NoError(b, stream.Send(req))
			step, err := stream.Recv()
			require.NoError(b, err)
			require.Equal(b, pb.HandshakeState_HANDSHAKE_STATE_FAILED, step.GetState())
			_, err = stream.Recv()
			require.ErrorIs(b, err, io.EOF)
		}
		b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
	})
	b.Run("multiplex", func(b *testing.B) {
		stream, err := hc.Multiplex(ctx)
		require.NoError(b, err)
		req := &pb.MultiplexRequest{Request: &pb.MultiplexRequest_Start{Start: start}}
		before := cpuTime()
		for b.Loop() {
			req.Handshake++
			require.NoError(b, stream.Send(req))
			resp, err := stream.Recv()
			require.NoError(b, err)
			require.Equal(b, pb.HandshakeState_HANDSHAKE_STATE_FAILED, resp.GetStep().GetState())
		}
		b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
		require.NoError(b, stream.CloseSend())
	})
}
