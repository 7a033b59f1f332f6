package edge

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
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

// fleet is replicas holding one ECDSA key and the same step-token keys, and
// an edge over all of them.
type fleet struct {
	replicas []*servicetest.Replica
	key      servicetest.ServerKey
	edge     *Listener
	// failed counts the failed attempts of steps, retried the ones the
	// client sent again.
	failed, retried atomic.Int64
}

func newFleet(t testing.TB, replicas, retries int, unary bool) *fleet {
	t.Helper()
	f := &fleet{}
	f.replicas = servicetest.StartReplicas(t, replicas, service.Options{}, func(s *servicetest.Server) {
		f.key = s.ServerKey(t, "fleet-ec", "p256-pkcs8.pem", "ec.test")
		// The step-token key is made on first use: here, so that every
		// copy of the store holds it.
		_, err := handshaked.New(s.Conn).StartStatelessHandshake(context.Background(), &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: f.key.ID}}}, nil)
		require.NoError(t, err)
	})
	client, err := handshaked.Dial(servicetest.ListTarget(f.replicas), handshaked.WithInsecure(), handshaked.WithRetries(retries, handshaked.DefaultRetryBackoff),
		handshaked.WithRetryObserver(func(method string, err error, retried bool) {
			assert.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", method, err)
			f.failed.Add(1)
			if retried {
				f.retried.Add(1)
			}
		}))
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	var conns <-chan *Conn
	f.edge, conns = listen(t, &Config{Client: client, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: f.key.ID}}}, Unary: unary})
	go func() {
		for c := range conns {
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return f
}

// handshake runs one TLS handshake through the edge (TLS 1.2 or 1.3) and
// an exchange of a few bytes over its record layer.
func (f *fleet) handshake(version uint16) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", f.edge.Addr().String(),
		&tls.Config{RootCAs: f.key.Pool, ServerName: f.key.Name, MinVersion: version, MaxVersion: version})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 4))
	return err
}

// started is how many handshakes replica r has started since it started.
func started(t *testing.T, r *servicetest.Replica) float64 {
	return servicetest.Metric(t, http.DefaultClient, r.Server().RESTURL, "handshaked_handshakes_started_total")
}

// TestEdgeFailsOverUnderLoad: an edge stepping stateless handshakes
// round-robin over three replicas, under a steady load of TLS 1.2 and 1.3
// clients, loses none of them when a replica is killed (connections cut,
// steps in flight included): a step that failed with UNAVAILABLE is
// retried, with its state token, on another replica, and counted. The
// replica restarted gets handshakes again. Without retries, the steps a
// killed replica dropped fail their handshakes: the counting is not idle.
func TestEdgeFailsOverUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		retries int
	}{{"retried", handshaked.DefaultRetries}, {"not retried", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, 3, tc.retries, true)
			load := servicetest.StartLoad(t, 8, func(_ context.Context, g int) error {
				if g%2 == 0 {
					return f.handshake(tls.VersionTLS13)
				}
				return f.handshake(tls.VersionTLS12)
			})
			back := func(r *servicetest.Replica) bool { return started(t, r) > 0 }
			// Until a kill has caught steps in flight (most do: 8
			// clients keep about as many steps in flight).
			caught := servicetest.KillInTurn(t, f.replicas, load, back, func(int) bool { return f.failed.Load() > 0 })
			require.True(t, caught, "no kill caught a step in flight")
			done, failed := load.Stop()
			t.Logf("%d handshakes, %d failed; %d steps failed, %d retried", done, failed, f.failed.Load(), f.retried.Load())
			if tc.retries > 0 {
				assert.Zero(t, failed, "a handshake whose step a killed replica dropped goes on on another")
				assert.Equal(t, f.failed.Load(), f.retried.Load(), "every failed step was retried")
			} else {
				assert.NotZero(t, failed, "without retries, the handshakes a killed replica dropped fail")
				assert.Equal(t, f.failed.Load(), failed, "each failed handshake is one failed step, counted")
				assert.Zero(t, f.retried.Load())
			}
		})
	}
}

// pausedConn passes the client's first flight and holds the next one until
// release is closed.
type pausedConn struct {
	net.Conn
	writes  int
	release chan struct{}
}

func (c *pausedConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes > 1 {
		<-c.release
	}
	return c.Conn.Write(b)
}

// TestStepOnAReplicaThatNeverSawTheHandshake: handshakes started on each of
// three replicas (round-robin) finish on the only one left after the other
// two were killed between their steps.
func TestStepOnAReplicaThatNeverSawTheHandshake(t *testing.T) {
	f := newFleet(t, 3, handshaked.DefaultRetries, true)
	// Once every replica is connected, round_robin sends three starts in a
	// row to the three of them. A failed handshake ends the wait, to fail
	// on the test's goroutine.
	var err error
	require.Eventually(t, func() bool {
		if err = f.handshake(tls.VersionTLS13); err != nil {
			return true
		}
		return started(t, f.replicas[0]) > 0 && started(t, f.replicas[1]) > 0 && started(t, f.replicas[2]) > 0
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, err)
	var before [3]float64
	for i, r := range f.replicas {
		before[i] = started(t, r)
	}
	completedBefore := servicetest.MetricSum(t, http.DefaultClient, f.replicas[1].Server().RESTURL, "handshaked_handshakes_completed_total")
	release := make(chan struct{})
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			raw, err := net.Dial("tcp", f.edge.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			c := tls.Client(&pausedConn{Conn: raw, release: release}, &tls.Config{RootCAs: f.key.Pool, ServerName: f.key.Name, MaxVersion: tls.VersionTLS12})
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			errs <- c.Handshake()
		}()
	}
	// Each client's first step ran, one on each replica.
	require.Eventually(t, func() bool {
		return started(t, f.replicas[0]) == before[0]+1 && started(t, f.replicas[1]) == before[1]+1 && started(t, f.replicas[2]) == before[2]+1
	}, 10*time.Second, time.Millisecond)
	f.replicas[0].Kill()
	f.replicas[2].Kill()
	close(release)
	for range 3 {
		assert.NoError(t, <-errs)
	}
	completed := servicetest.MetricSum(t, http.DefaultClient, f.replicas[1].Server().RESTURL, "handshaked_handshakes_completed_total")
	assert.Equal(t, 3.0, completed-completedBefore, "the one replica left completed the three")
}
