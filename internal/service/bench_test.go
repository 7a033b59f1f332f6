package service_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// The benchmarks run the same vault operation in-process and over gRPC on
// loopback in one run, so the ratio between the two sub-benchmarks is the
// service's overhead on this machine, whatever else it is doing:
//
//	go test -run '^$' -bench . -benchtime 3s ./internal/service/
//
// gRPC runs with more goroutines than cores (SetParallelism) so that network
// latency is hidden and both measure saturated throughput.

func BenchmarkDecryptPremasterRSA2048(b *testing.B) {
	s := startServer(b)
	ctx := context.Background()
	k := importFixture(b, s, "bench-rsa", "rsa2048-pkcs1.pem")
	pub, _ := publicKey(b, s, k.GetId())
	premaster := make([]byte, 48)
	rand.Read(premaster)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), premaster)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("in-process", func(b *testing.B) {
		b.RunParallel(func(p *testing.PB) {
			for p.Next() {
				if _, err := s.vault.Decrypt(ctx, k.GetId(), 1, keyvault.DecryptRSAPKCS1TLSPremaster, ct, 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("grpc", func(b *testing.B) {
		b.SetParallelism(8)
		req := &pb.DecryptRequest{Key: k.GetId(), Version: 1, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}
		b.RunParallel(func(p *testing.PB) {
			for p.Next() {
				if _, err := s.kv.Decrypt(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkSignECDSAP256(b *testing.B) {
	s := startServer(b)
	ctx := context.Background()
	k := importFixture(b, s, "bench-ec", "p256-sec1.pem")
	digest := sha256.Sum256([]byte("benchmark"))
	b.Run("in-process", func(b *testing.B) {
		b.RunParallel(func(p *testing.PB) {
			for p.Next() {
				if _, err := s.vault.Sign(ctx, k.GetId(), 1, tls.ECDSAWithP256AndSHA256, digest[:], true); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("grpc", func(b *testing.B) {
		b.SetParallelism(8)
		req := &pb.SignRequest{Key: k.GetId(), Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
		b.RunParallel(func(p *testing.PB) {
			for p.Next() {
				if _, err := s.kv.Sign(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
