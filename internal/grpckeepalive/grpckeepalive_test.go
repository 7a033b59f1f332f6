package grpckeepalive_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/internal/grpckeepalive"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestPolicyAdmitsClient: whatever interval the SDK is given, the service's
// policy admits its pings, with or without calls in progress.
func TestPolicyAdmitsClient(t *testing.T) {
	policy := grpckeepalive.Enforcement()
	for _, interval := range []time.Duration{0, time.Second, grpckeepalive.MinInterval, grpckeepalive.Interval, time.Hour} {
		p := grpckeepalive.Client(interval, grpckeepalive.Timeout)
		assert.GreaterOrEqual(t, p.Time, policy.MinTime, "interval %v", interval)
		assert.GreaterOrEqual(t, p.Time, interval, "interval %v", interval)
		assert.True(t, p.PermitWithoutStream)
	}
	assert.True(t, policy.PermitWithoutStream, "the SDK pings idle connections")
}

// watchedConn is the client's connection to the service: it counts the
// HTTP/2 PINGs the client writes (RFC 9113 §6.7) and closes closed when the
// connection ends.
type watchedConn struct {
	net.Conn
	pings  atomic.Int32
	closed chan struct{}
	once   sync.Once

	mu      sync.Mutex
	pending []byte // written bytes not yet parsed into frames
	preface bool
}

func (c *watchedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.pending = append(c.pending, b...)
	if !c.preface && len(c.pending) >= 24 {
		c.pending, c.preface = c.pending[24:], true // the client connection preface
	}
	for c.preface && len(c.pending) >= 9 {
		n := int(binary.BigEndian.Uint32(c.pending[:4]) >> 8)
		if len(c.pending) < 9+n {
			break
		}
		if typ, flags := c.pending[3], c.pending[4]; typ == 0x6 && flags&0x1 == 0 {
			c.pings.Add(1) // a PING that is not an ACK
		}
		c.pending = c.pending[9+n:]
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.once.Do(func() { close(c.closed) })
	}
	return n, err
}

// TestIdleConnectionStaysUp: an SDK client with keepalive, pinging at the
// shortest interval it allows, stays connected through several intervals
// without a call (gRPC's default enforcement sends GOAWAY too_many_pings at
// the fourth ping), and a call made then runs on the same connection.
func TestIdleConnectionStaysUp(t *testing.T) {
	t.Parallel()
	srv := servicetest.Start(t, service.Options{})
	var (
		mu    sync.Mutex
		conns []*watchedConn
	)
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c := &watchedConn{Conn: raw, closed: make(chan struct{})}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		return c, nil
	}
	client, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure(),
		handshaked.WithKeepalive(grpckeepalive.MinInterval, grpckeepalive.Timeout),
		handshaked.WithDialOptions(grpc.WithContextDialer(dialer)))
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	call := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.ListKeys(ctx)
		require.NoError(t, err)
	}
	call()
	mu.Lock()
	require.Len(t, conns, 1)
	conn := conns[0]
	mu.Unlock()

	const intervals = 4.5
	select {
	case <-conn.closed:
		require.Fail(t, "the service closed an idle connection", "after %d pings", conn.pings.Load())
	case <-time.After(time.Duration(intervals * float64(grpckeepalive.MinInterval))):
	}
	assert.GreaterOrEqual(t, conn.pings.Load(), int32(4), "the client did not ping as configured")
	call()
	mu.Lock()
	assert.Len(t, conns, 1, "the call needed a new connection")
	mu.Unlock()
}
