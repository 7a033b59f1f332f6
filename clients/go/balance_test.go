package handshaked_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// startReplicas starts three replicas holding key "k" (ECDSA P-256) and
// returns them with their list target "a:1,b:2,c:3".
func startReplicas(t *testing.T) ([]*servicetest.Replica, string) {
	t.Helper()
	replicas := servicetest.StartReplicas(t, 3, service.Options{}, func(s *servicetest.Server) {
		_, err := pb.NewKeyVaultClient(s.Conn).CreateKey(context.Background(), &pb.CreateKeyRequest{Id: "k", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256})
		require.NoError(t, err)
	})
	var addrs []string
	for _, r := range replicas {
		addrs = append(addrs, r.GRPCAddr)
	}
	return replicas, strings.Join(addrs, ",")
}

// signs is how many Sign calls replica r has answered since it started.
func signs(t *testing.T, r *servicetest.Replica) float64 {
	t.Helper()
	return servicetest.MetricSum(t, http.DefaultClient, r.Server().RESTURL, "handshaked_key_operation_seconds_count", `operation="sign"`, `source="api"`)
}

func sign(ctx context.Context, c *handshaked.Client) error {
	digest := sha256.Sum256([]byte("balanced"))
	_, _, err := c.Sign(ctx, "k", 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, nil, digest[:])
	return err
}

// TestDialBalancesOverAList: a client dialled with a list of replicas
// sends its calls to every one of them, round-robin.
func TestDialBalancesOverAList(t *testing.T) {
	replicas, target := startReplicas(t)
	c, err := handshaked.Dial(target, handshaked.WithInsecure(), handshaked.WithSignStreams(0))
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	// Once every replica is connected, round_robin takes each in turn.
	require.Eventually(t, func() bool {
		require.NoError(t, sign(ctx, c))
		return signs(t, replicas[0]) > 0 && signs(t, replicas[1]) > 0 && signs(t, replicas[2]) > 0
	}, 10*time.Second, time.Millisecond)
	var before [3]float64
	for i, r := range replicas {
		before[i] = signs(t, r)
	}
	for range 30 {
		require.NoError(t, sign(ctx, c))
	}
	for i, r := range replicas {
		assert.Equal(t, 10.0, signs(t, r)-before[i], "replica %d answers every third call", i)
	}
}

// TestDialTargets: a list must be of host:port; a single address and a
// gRPC target go to gRPC as they are.
func TestDialTargets(t *testing.T) {
	for _, bad := range []string{"127.0.0.1:1,,127.0.0.1:2", "127.0.0.1:1,127.0.0.1", "127.0.0.1:1,:2"} {
		_, err := handshaked.Dial(bad, handshaked.WithInsecure())
		assert.ErrorContains(t, err, "want host:port", bad)
	}
	replicas, _ := startReplicas(t)
	for _, target := range []string{replicas[0].GRPCAddr, "dns:///" + replicas[0].GRPCAddr, replicas[0].GRPCAddr + ", " + replicas[1].GRPCAddr} {
		c, err := handshaked.Dial(target, handshaked.WithInsecure())
		require.NoError(t, err, target)
		assert.NoError(t, sign(context.Background(), c), target)
		c.Close()
	}
}

// TestFailoverUnderLoad: under a steady load of Sign and GetKey calls, a
// replica killed (its connections cut, calls in flight included) costs the
// callers nothing: the calls it dropped are retried on the others. Once
// restarted, it gets calls again.
func TestFailoverUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		retries int
	}{{"retried", handshaked.DefaultRetries}, {"not retried", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			replicas, target := startReplicas(t)
			c, err := handshaked.Dial(target, handshaked.WithInsecure(), handshaked.WithSignStreams(0),
				handshaked.WithRetries(tc.retries, handshaked.DefaultRetryBackoff))
			require.NoError(t, err)
			defer c.Close()
			ctx, cancel := context.WithCancel(context.Background())
			var calls, failed atomic.Int64
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for ctx.Err() == nil {
						var err error
						if g%2 == 0 {
							err = sign(ctx, c)
						} else {
							_, err = c.GetKey(ctx, "k")
						}
						calls.Add(1)
						if err != nil && ctx.Err() == nil {
							require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
							failed.Add(1)
						}
					}
				})
			}
			waitCalls := func(n int64) {
				from := calls.Load()
				require.Eventually(t, func() bool { return calls.Load() >= from+n }, 20*time.Second, time.Millisecond)
			}
			waitCalls(300)
			replicas[1].Kill()
			waitCalls(300)
			replicas[1].Restart()
			require.Eventually(t, func() bool { return signs(t, replicas[1]) > 0 }, 10*time.Second, 10*time.Millisecond,
				"the restarted replica is back in the rotation")
			replicas[0].Kill()
			waitCalls(300)
			cancel()
			wg.Wait()
			t.Logf("%d calls, %d failed", calls.Load(), failed.Load())
			if tc.retries > 0 {
				assert.Zero(t, failed.Load(), "every call dropped by a killed replica is retried on another")
			} else {
				assert.NotZero(t, failed.Load(), "without retries, the calls a killed replica dropped fail")
			}
		})
	}
}
