package handshaked_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/authz"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testpki"
)

// startReplicas starts three replicas holding key "k" (ECDSA P-256) and
// returns them with their list target "a:1,b:2,c:3".
func startReplicas(t *testing.T) ([]*servicetest.Replica, string) {
	t.Helper()
	replicas := servicetest.StartReplicas(t, 3, service.Options{}, func(s *servicetest.Server) {
		_, err := pb.NewKeyVaultClient(s.Conn).CreateKey(context.Background(), &pb.CreateKeyRequest{Id: "k", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_P256})
		require.NoError(t, err)
	})
	return replicas, servicetest.ListTarget(replicas)
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

// connectAll signs with unary calls until each of replicas has answered
// one: then c is connected to all of them. A failed call ends the wait, to
// fail on the test's goroutine.
func connectAll(t *testing.T, c *handshaked.Client, replicas []*servicetest.Replica) {
	t.Helper()
	digest := sha256.Sum256([]byte("balanced"))
	req := &pb.SignRequest{Key: "k", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
	var err error
	require.Eventually(t, func() bool {
		if _, err = c.KeyVault().Sign(context.Background(), req); err != nil {
			return true
		}
		return signs(t, replicas[0]) > 0 && signs(t, replicas[1]) > 0 && signs(t, replicas[2]) > 0
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, err)
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
	connectAll(t, c, replicas)
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

// TestStreamedCallsSpreadOverReplicas: Sign calls on long-lived streams,
// coalesced into batches (the default) or one message each, reach every
// replica of a list: a stream stays on the replica it was opened on, so
// the client keeps several and takes them in turn.
func TestStreamedCallsSpreadOverReplicas(t *testing.T) {
	for name, opts := range map[string][]handshaked.Option{
		"coalesced":    nil,
		"sign streams": {handshaked.WithoutCoalescing()},
	} {
		t.Run(name, func(t *testing.T) {
			replicas, target := startReplicas(t)
			c, err := handshaked.Dial(target, append(opts, handshaked.WithInsecure())...)
			require.NoError(t, err)
			defer c.Close()
			ctx := context.Background()
			// The streams, opened later, are placed over all three.
			connectAll(t, c, replicas)
			var before [3]float64
			for i, r := range replicas {
				before[i] = signs(t, r)
			}
			const callers, calls = 8, 50
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					for range calls {
						assert.NoError(t, sign(ctx, c))
					}
				})
			}
			wg.Wait()
			for i, r := range replicas {
				assert.GreaterOrEqual(t, signs(t, r)-before[i], 0.1*callers*calls, "replica %d's share of %d streamed signatures", i, callers*calls)
			}
		})
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
// callers nothing: the calls it dropped are retried on the others, unary or
// sent over a SignStream or a BatchStream that broke. Once restarted, it
// gets calls again.
func TestFailoverUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		retries, signStreams int
		options              []handshaked.Option
	}{
		{"retried", handshaked.DefaultRetries, 0, nil},
		{"retried, signing over streams", handshaked.DefaultRetries, handshaked.DefaultSignStreams, []handshaked.Option{handshaked.WithoutCoalescing()}},
		{"retried, signing in coalesced batches", handshaked.DefaultRetries, handshaked.DefaultSignStreams, nil},
		{"not retried", 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replicas, target := startReplicas(t)
			c, err := handshaked.Dial(target, append(tc.options, handshaked.WithInsecure(), handshaked.WithSignStreams(tc.signStreams), handshaked.WithSignStreamAge(100*time.Millisecond),
				handshaked.WithRetries(tc.retries, handshaked.DefaultRetryBackoff))...)
			require.NoError(t, err)
			defer c.Close()
			load := servicetest.StartLoad(t, 8, func(ctx context.Context, g int) error {
				var err error
				if g%2 == 0 {
					err = sign(ctx, c)
				} else {
					_, err = c.GetKey(ctx, "k")
				}
				if err != nil && ctx.Err() == nil {
					assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
				}
				return err
			})
			back := func(r *servicetest.Replica) bool { return signs(t, r) > 0 }
			servicetest.KillInTurn(t, replicas, load, back, func(kills int) bool {
				// Most kills catch calls in flight; without retries, go
				// on until one did.
				return kills >= 3 && (tc.retries > 0 || load.Failed() > 0)
			})
			calls, failed := load.Stop()
			t.Logf("%d calls, %d failed", calls, failed)
			if tc.retries > 0 {
				assert.Zero(t, failed, "every call dropped by a killed replica is retried on another")
			} else {
				assert.NotZero(t, failed, "without retries, the calls a killed replica dropped fail")
			}
		})
	}
}

// dyingVault sends the response headers of every GetKey and Sign, then
// waits: a replica killed while its answer is on the way.
type dyingVault struct{ pb.UnimplementedKeyVaultServer }

func headersThenWait(ctx context.Context) error {
	if err := grpc.SendHeader(ctx, metadata.Pairs("replica", "dying")); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (dyingVault) GetKey(ctx context.Context, _ *pb.GetKeyRequest) (*pb.Key, error) {
	return nil, headersThenWait(ctx)
}

func (dyingVault) Sign(ctx context.Context, _ *pb.SignRequest) (*pb.SignResponse, error) {
	return nil, headersThenWait(ctx)
}

// dyingHeaders tells when the client has received a dyingVault's headers.
type dyingHeaders struct{ received chan struct{} }

func (h dyingHeaders) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InHeader); ok && len(in.Header.Get("replica")) > 0 {
		select {
		case h.received <- struct{}{}:
		default: // not the call the test waits for: it is told of one
		}
	}
}

func (dyingHeaders) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (dyingHeaders) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (dyingHeaders) HandleConn(context.Context, stats.ConnStats)                       {}

// TestRetriedAfterTheReplicaAnswered: a replica killed after the client
// received a call's response headers, its answer on the way, costs the
// caller nothing either: the call is retried on another replica. (gRPC's
// own retries stop at the headers, gRFC A6: TestFailoverUnderLoad once saw
// a call fail so, "error reading from server: EOF".)
func TestRetriedAfterTheReplicaAnswered(t *testing.T) {
	replicas, _ := startReplicas(t)
	for name, call := range map[string]func(*handshaked.Client) error{
		"GetKey": func(c *handshaked.Client) error {
			_, err := c.GetKey(context.Background(), "k")
			return err
		},
		"Sign": func(c *handshaked.Client) error { return sign(context.Background(), c) },
	} {
		t.Run(name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			lis := servicetest.NewCutListener(l)
			s := grpc.NewServer()
			pb.RegisterKeyVaultServer(s, dyingVault{})
			go s.Serve(lis)
			defer s.Stop()
			headers := dyingHeaders{received: make(chan struct{}, 1)}
			c, err := handshaked.Dial(lis.Addr().String()+","+replicas[0].GRPCAddr, handshaked.WithInsecure(), handshaked.WithSignStreams(0),
				handshaked.WithDialOptions(grpc.WithStatsHandler(headers)))
			require.NoError(t, err)
			defer c.Close()
			// Round-robin: once both replicas are connected, every other
			// call goes to the dying one.
			for range 1000 {
				done := make(chan error, 1)
				go func() { done <- call(c) }()
				select {
				case err := <-done:
					require.NoError(t, err, "answered by the live replica")
					continue
				case <-headers.received:
				}
				lis.Cut()
				require.NoError(t, <-done, "retried on the live replica")
				return
			}
			require.Fail(t, "no call reached the dying replica")
		})
	}
}

// TestListOverTLS: each replica of a list is verified against its own
// host, as a single "host:port" is: a list naming one replica by name and
// another by IP address reaches both.
func TestListOverTLS(t *testing.T) {
	ca, err := testpki.NewCA("balance test CA")
	require.NoError(t, err)
	server, err := ca.Server() // localhost and 127.0.0.1
	require.NoError(t, err)
	client, err := ca.Client("sdk-balancer", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, data, 0o600))
		return path
	}
	policy, err := authz.Open(write("policy.json", []byte(`{"grants": [{"identities": ["sdk-balancer"], "rights": ["admin"]}]}`)))
	require.NoError(t, err)
	files := service.TLSFiles{CertFile: write("server.crt", server.CertPEM), KeyFile: write("server.key", server.KeyPEM), ClientCAFile: write("ca.pem", ca.PEM)}
	replicas := servicetest.StartReplicas(t, 2, service.Options{TLS: &files, Policy: policy, ReloadInterval: -1}, func(*servicetest.Server) {})
	_, port0, _ := net.SplitHostPort(replicas[0].GRPCAddr)
	_, port1, _ := net.SplitHostPort(replicas[1].GRPCAddr)

	c, err := handshaked.Dial("localhost:"+port0+",127.0.0.1:"+port1, handshaked.WithTLS(&tls.Config{
		RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS}, MinVersion: tls.VersionTLS13}))
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	for _, r := range replicas {
		r.Kill()
		// The other one may have been restarted a moment ago: the
		// client reconnects to it within its reconnection backoff.
		require.Eventually(t, func() bool {
			_, err := c.ListKeys(ctx)
			return err == nil
		}, 10*time.Second, 10*time.Millisecond, "the other replica, by its own name")
		for range 3 {
			_, err := c.ListKeys(ctx)
			require.NoError(t, err, "the other replica, by its own name")
		}
		r.Restart()
	}
}
