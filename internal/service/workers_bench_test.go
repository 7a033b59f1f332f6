package service_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

// BenchmarkUnaryWorkers signs ECDSA P-256 over unary gRPC with and without
// the server's long-lived workers, against in-process signing, in one run:
//
//	go test -run '^$' -bench UnaryWorkers -benchtime 3s ./internal/service/
func BenchmarkUnaryWorkers(b *testing.B) {
	ctx := context.Background()
	digest := sha256.Sum256([]byte("benchmark"))
	req := &pb.SignRequest{Key: "bench-ec", Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
	for _, c := range []struct {
		name    string
		workers int
	}{{"goroutine-per-call", 0}, {"workers-2", 2}, {"workers-64", 64}} {
		old := service.SetStreamWorkers(c.workers)
		s := startServer(b)
		service.SetStreamWorkers(old)
		importFixture(b, s, "bench-ec", "p256-sec1.pem")
		if c.workers == 0 {
			b.Run("in-process", func(b *testing.B) {
				parallel(b, 1, func() error {
					_, err := s.vault.Sign(ctx, "bench-ec", 1, tls.ECDSAWithP256AndSHA256, digest[:], true)
					return err
				})
			})
		}
		b.Run("grpc-"+c.name, func(b *testing.B) {
			parallel(b, 8, func() error {
				_, err := s.kv.Sign(ctx, req)
				return err
			})
		})
	}
}
