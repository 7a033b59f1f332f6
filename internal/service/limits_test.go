package service_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
)

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestOverload drives one caller far beyond its rate limit and everyone
// beyond the in-flight cap: refused calls get RESOURCE_EXHAUSTED, the
// admitted ones stay within the bucket's arithmetic, memory stays flat,
// health checks (with no client certificate) keep answering, and every key
// whose creation was acknowledged exists and works.
func TestOverload(t *testing.T) {
	const rate, burst = 200, 50
	s := startSecure(t, secureOptions{limits: service.Limits{Rate: rate, Burst: burst, MaxInFlight: 4}})
	s.adminImport(t, "key-a", "p256-pkcs8.pem", nil)
	edge := s.kv(t, "edge")
	admin := s.kv(t, "admin")
	health := healthpb.NewHealthClient(s.dial(t, ""))
	healthz := s.httpClient(t, "")
	ctx := context.Background()
	before := heapAlloc()

	var okCalls, exhausted atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 16 {
		wg.Go(func() {
			for range 100 {
				_, err := edge.Sign(ctx, signReq("key-a", p256Scheme))
				switch status.Code(err) {
				case codes.OK:
					okCalls.Add(1)
				case codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					t.Errorf("under load: %v", err)
					return
				}
			}
		})
	}
	var mu sync.Mutex
	var acked []string
	wg.Go(func() {
		for i := range 60 {
			id := fmt.Sprintf("load-%d", i)
			_, err := admin.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
			switch status.Code(err) {
			case codes.OK:
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			case codes.ResourceExhausted:
			default:
				t.Errorf("create under load: %v", err)
			}
		}
	})
	done := make(chan struct{})
	healthChecks := 0
	var checker sync.WaitGroup
	checker.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := health.Check(hctx, &healthpb.HealthCheckRequest{})
			cancel()
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("gRPC health under load: %v %v", resp, err)
				return
			}
			r, err := healthz.Get(s.restURL + "/healthz")
			if err != nil || r.StatusCode != http.StatusOK {
				t.Errorf("/healthz under load: %v %v", r, err)
				return
			}
			r.Body.Close()
			healthChecks++
		}
	})
	wg.Wait()
	elapsed := time.Since(start)
	close(done)
	checker.Wait()

	if exhausted.Load() == 0 {
		t.Fatal("no call was refused beyond the rate limit")
	}
	if limit := burst + int64(rate*elapsed.Seconds()) + 1; okCalls.Load() > limit {
		t.Fatalf("%d calls admitted in %v, the bucket allows at most %d", okCalls.Load(), elapsed, limit)
	}
	if healthChecks == 0 {
		t.Fatal("no health check ran during the load")
	}
	after := heapAlloc()
	if after > before+64<<20 {
		t.Fatalf("heap grew from %d to %d bytes under load", before, after)
	}
	// The check itself is subject to the admin's rate limit: back off on
	// RESOURCE_EXHAUSTED as a well-behaved caller does.
	for _, id := range acked {
		var err error
		for range 200 {
			if _, err = admin.Sign(ctx, signReq(id, edScheme)); status.Code(err) != codes.ResourceExhausted {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("acknowledged key %s: %v", id, err)
		}
	}
	if len(acked) == 0 {
		t.Fatal("no create was acknowledged")
	}
	t.Logf("%v: %d signatures admitted, %d refused, %d/60 creates acknowledged, %d health checks; heap %d -> %d KiB",
		elapsed, okCalls.Load(), exhausted.Load(), len(acked), healthChecks, before>>10, after>>10)
}

// BenchmarkSecurityOverhead signs with the same ECDSA key over gRPC in
// development mode (plain text, no checks) and in production mode (mutual
// TLS, identity, rate limit, policy, one audit line per call to a file):
//
//	go test -run '^$' -bench SecurityOverhead -benchtime 3s ./internal/service/
func BenchmarkSecurityOverhead(b *testing.B) {
	ctx := context.Background()
	digest := make([]byte, 32)
	req := &pb.SignRequest{Key: "key-a", Version: 1, Scheme: p256Scheme, Input: &pb.SignRequest_Digest{Digest: digest}}
	dev := startServer(b)
	importFixture(b, dev, "key-a", "p256-sec1.pem")
	prod := startSecure(b, secureOptions{limits: service.Limits{Rate: 1e9, Burst: 1e9, MaxInFlight: 1024}})
	prod.adminImport(b, "key-a", "p256-sec1.pem", nil)
	edge := prod.kv(b, "edge")
	b.Run("development", func(b *testing.B) {
		parallel(b, 8, func() error { _, err := dev.kv.Sign(ctx, req); return err })
	})
	b.Run("production", func(b *testing.B) {
		parallel(b, 8, func() error { _, err := edge.Sign(ctx, req); return err })
	})
}
