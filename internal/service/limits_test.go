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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
					assert.Fail(t, "under load", "%v", err)
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
				assert.Fail(t, "create under load", "%v", err)
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
			if !assert.NoError(t, err, "gRPC health under load") || !assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus()) {
				return
			}
			r, err := healthz.Get(s.restURL + "/healthz")
			if !assert.NoError(t, err, "/healthz under load") || !assert.Equal(t, http.StatusOK, r.StatusCode, "/healthz under load") {
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

	require.NotZero(t, exhausted.Load(), "no call was refused beyond the rate limit")
	limit := burst + int64(rate*elapsed.Seconds()) + 1
	require.LessOrEqual(t, okCalls.Load(), limit, "calls admitted in %v beyond what the bucket allows", elapsed)
	require.NotZero(t, healthChecks, "no health check ran during the load")
	after := heapAlloc()
	require.LessOrEqual(t, after, before+64<<20, "heap grew under load")
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
		require.NoError(t, err, "acknowledged key %s", id)
	}
	require.NotEmpty(t, acked, "no create was acknowledged")
	t.Logf("%v: %d signatures admitted, %d refused, %d/60 creates acknowledged, %d health checks; heap %d -> %d KiB",
		elapsed, okCalls.Load(), exhausted.Load(), len(acked), healthChecks, before>>10, after>>10)
}

// BenchmarkSecurityOverhead signs with the same ECDSA key over gRPC in
// development mode (plain text, no checks) and in production mode (mutual
// TLS, identity, policy, one audit line per call to a file), without and
// with the per-identity limits (rate, in-flight and stream caps):
//
//	go test -run '^$' -bench SecurityOverhead -benchtime 3s ./internal/service/
func BenchmarkSecurityOverhead(b *testing.B) {
	ctx := context.Background()
	digest := make([]byte, 32)
	req := &pb.SignRequest{Key: "key-a", Version: 1, Scheme: p256Scheme, Input: &pb.SignRequest_Digest{Digest: digest}}
	dev := startServer(b)
	importFixture(b, dev, "key-a", "p256-sec1.pem")
	b.Run("development", func(b *testing.B) {
		parallel(b, 8, func() error { _, err := dev.kv.Sign(ctx, req); return err })
	})
	for _, c := range []struct {
		name   string
		limits service.Limits
	}{
		{"production-limits-off", service.Limits{}},
		{"production", service.Limits{Rate: 1e9, Burst: 1e9, MaxInFlight: 1024, MaxStreams: 4096}},
	} {
		prod := startSecure(b, secureOptions{limits: c.limits})
		prod.adminImport(b, "key-a", "p256-sec1.pem", nil)
		edge := prod.kv(b, "edge")
		b.Run(c.name, func(b *testing.B) {
			parallel(b, 8, func() error { _, err := edge.Sign(ctx, req); return err })
		})
	}
}
