package service_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// latency is hidden and both measure saturated throughput. Each also reports
// cpu-ns/op, the process's CPU time (user+system, client and server) per
// operation: on a shared machine it is steadier than ns/op, and at
// saturation throughput is cores / cpu-ns/op.

// parallel runs op in b.RunParallel and reports cpu-ns/op.
func parallel(b *testing.B, parallelism int, op func() error) {
	b.SetParallelism(parallelism)
	before := cpuTime()
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

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
		parallel(b, 1, func() error {
			_, err := s.vault.Decrypt(ctx, k.GetId(), 1, keyvault.DecryptRSAPKCS1TLSPremaster, ct, 0)
			return err
		})
	})
	b.Run("grpc", func(b *testing.B) {
		req := &pb.DecryptRequest{Key: k.GetId(), Version: 1, Mode: pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER, Ciphertext: ct}
		parallel(b, 8, func() error {
			_, err := s.kv.Decrypt(ctx, req)
			return err
		})
	})
}

func BenchmarkSignECDSAP256(b *testing.B) {
	s := startServer(b)
	ctx := context.Background()
	k := importFixture(b, s, "bench-ec", "p256-sec1.pem")
	digest := sha256.Sum256([]byte("benchmark"))
	b.Run("in-process", func(b *testing.B) {
		parallel(b, 1, func() error {
			_, err := s.vault.Sign(ctx, k.GetId(), 1, tls.ECDSAWithP256AndSHA256, digest[:], true)
			return err
		})
	})
	b.Run("grpc", func(b *testing.B) {
		req := &pb.SignRequest{Key: k.GetId(), Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
		parallel(b, 8, func() error {
			_, err := s.kv.Sign(ctx, req)
			return err
		})
	})
	// One stream per client goroutine, as a keyless edge would hold.
	b.Run("grpc-stream", func(b *testing.B) {
		req := &pb.SignStreamRequest{Request: &pb.SignRequest{Key: k.GetId(), Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}}
		streams := make(chan pb.KeyVault_SignStreamClient, 64)
		for range cap(streams) {
			st, err := s.kv.SignStream(ctx)
			if err != nil {
				b.Fatal(err)
			}
			streams <- st
		}
		parallel(b, 8, func() error {
			st := <-streams
			defer func() { streams <- st }()
			if err := st.Send(req); err != nil {
				return err
			}
			resp, err := st.Recv()
			if err == nil && resp.GetError() != nil {
				err = status.Error(codes.Code(resp.GetError().GetCode()), resp.GetError().GetMessage())
			}
			return err
		})
	})
	// One caller sending batches of 8, what handshaked-bench's Batch
	// column does with 8 operations in flight; ns/op and cpu-ns/op are per
	// operation.
	b.Run("grpc-batch8", func(b *testing.B) {
		const size = 8
		op := &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{Key: k.GetId(), Version: 1, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}}}
		req := &pb.BatchRequest{Reference: "bench"}
		for range size {
			req.Operations = append(req.Operations, op)
		}
		before := cpuTime()
		b.ResetTimer()
		for n := 0; n < b.N; n += size {
			resp, err := s.kv.Batch(ctx, req)
			if err == nil && resp.GetResults()[size-1].GetSign() == nil {
				err = errors.New(resp.GetResults()[size-1].GetError().GetMessage())
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
	})
}
