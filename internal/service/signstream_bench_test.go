package service_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// BenchmarkSignStreamWindow signs ECDSA P-256 digests over one SignStream
// with 16 requests in flight (a caller with one stream and many
// concurrent operations), against the same vault operation in-process
// from 2×GOMAXPROCS goroutines, in one run: the stream's rate can reach
// the in-process one only if the service works on several of its
// requests at once.
//
//	go test -run '^$' -bench SignStreamWindow -benchtime 3s ./internal/service/
func BenchmarkSignStreamWindow(b *testing.B) {
	ctx := context.Background()
	s := startServer(b)
	importFixture(b, s, "key-w", "p256-sec1.pem")
	digest := sha256.Sum256([]byte("window"))
	b.Run("in-process", func(b *testing.B) {
		parallel(b, 2, func() error {
			_, err := s.vault.Sign(ctx, "key-w", 1, tls.ECDSAWithP256AndSHA256, digest[:], true)
			return err
		})
	})
	b.Run("stream-window16", func(b *testing.B) {
		req := &pb.SignStreamRequest{Request: &pb.SignRequest{Key: "key-w", Version: 1, Scheme: p256Scheme, Input: &pb.SignRequest_Digest{Digest: digest[:]}}}
		st, err := s.kv.SignStream(ctx)
		require.NoError(b, err)
		const window = 16
		slots := make(chan struct{}, window)
		done := make(chan error, 1)
		before := cpuTime()
		b.ResetTimer()
		go func() {
			for range b.N {
				resp, err := st.Recv()
				if err == nil && resp.GetResponse() == nil {
					err = errors.New(resp.GetError().GetMessage())
				}
				if err != nil {
					done <- err
					return
				}
				<-slots
			}
			done <- nil
		}()
		for range b.N {
			slots <- struct{}{}
			require.NoError(b, st.Send(req))
		}
		require.NoError(b, <-done)
		b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
		require.NoError(b, st.CloseSend())
	})
}
