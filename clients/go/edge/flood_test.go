package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// flood opens n connections to l, half of them silent, half stopping
// partway through a ClientHello (a record header announcing 200 bytes and
// the first two), and waits until the edge holds them all as pending.
func flood(t *testing.T, l *Listener, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for i := range n {
		c, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		if i%2 == 1 {
			_, err := c.Write([]byte{22, 3, 1, 0, 200, 1, 0})
			require.NoError(t, err)
		}
		conns = append(conns, c)
	}
	require.Eventually(t, func() bool { return l.pending.len() == n }, 10*time.Second, 5*time.Millisecond,
		"the edge did not accept the flood")
	return conns
}

// assertClosed checks that the edge closes c within 10 s, sending
// nothing: an end of file, or a reset if the edge closed it with bytes of
// a partial ClientHello unread.
func assertClosed(t *testing.T, c net.Conn, msgAndArgs ...any) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	assert.NoError(t, err, msgAndArgs...)
	assert.Empty(t, b, msgAndArgs...)
}

// countingService counts the handshake sessions the edge opens in the
// real service behind it.
type countingService struct {
	Service
	opened atomic.Int32
}

func (c *countingService) HandshakeStream(ctx context.Context) (pb.Handshake_StreamClient, error) {
	c.opened.Add(1)
	return c.Service.HandshakeStream(ctx)
}

func (c *countingService) MultiplexedHandshake(cfg *pb.HandshakeConfig) *handshaked.MultiplexedHandshake {
	c.opened.Add(1)
	return c.Service.MultiplexedHandshake(cfg)
}

func (c *countingService) StartStatelessHandshake(ctx context.Context, cfg *pb.HandshakeConfig, input []byte) (*pb.HandshakeStep, error) {
	c.opened.Add(1)
	return c.Service.StartStatelessHandshake(ctx, cfg, input)
}

// capped is a service whose every cap on what a caller holds at once (calls
// in flight, streams, handshake sessions) is n, for one caller as for all.
func capped(n int) service.Options {
	return service.Options{
		Limits:    service.Limits{MaxInFlight: n, MaxInFlightPerCaller: n, MaxStreams: n, MaxStreamsPerCaller: n},
		Handshake: service.HandshakeOptions{MaxSessions: n, MaxSessionsPerCaller: n},
	}
}

// TestSilentClientsCostOnlyTheEdge reproduces issue 13's first attack,
// scaled down: more idle and half-sent connections to the edge than the
// service has slots. They must cost the service nothing: while
// they are open, a caller of the service signs and a real TLS client
// completes its handshake through the same edge.
func TestSilentClientsCostOnlyTheEdge(t *testing.T) {
	const inFlight = 8
	srv := servicetest.Start(t, capped(inFlight))
	key := srv.ServerKey(t, "flood-ec", "p256-pkcs8.pem", "ec.test")
	// The edge has its own connection to the service, as in production.
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(t, err)
	t.Cleanup(func() { edgeClient.Close() })
	for _, unary := range []bool{false, true} {
		svc := &countingService{Service: edgeClient}
		l, conns := listen(t, &Config{
			Client: svc, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}, Unary: unary,
			// The flood stays for the whole test.
			HandshakeTimeout: time.Minute, ClientHelloTimeout: time.Minute,
		})
		flood(t, l, 4*inFlight)
		// Whatever the service's limits, the flood opened nothing there.
		assert.Zero(t, svc.opened.Load(), "unary=%v: sessions opened in the service for clients without a ClientHello", unary)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err := handshaked.New(srv.Conn).Sign(ctx, key.ID, 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, []byte("during the flood"), nil)
		require.NoError(t, err, "unary=%v: a caller of the service was refused during the flood", unary)

		client, _ := dial(t, l, &tls.Config{ServerName: key.Name, RootCAs: key.Pool})
		exchange(t, client, accept(t, conns), []byte("through the flood"))
		assert.Equal(t, int32(1), svc.opened.Load(), "unary=%v", unary)
	}
}

// TestPendingHandshakesEvictOldest: past MaxPendingHandshakes, each new
// connection closes the oldest pending one, so a client that sends its
// ClientHello at once gets through a flood bigger than the cap.
func TestPendingHandshakesEvictOldest(t *testing.T) {
	s := newTestService(t)
	const maxPending = 4
	l, conns := listen(t, &Config{Client: s.client, Handshake: s.config(), MaxPendingHandshakes: maxPending,
		HandshakeTimeout: time.Minute, ClientHelloTimeout: time.Minute})
	silent := flood(t, l, maxPending)
	for range maxPending {
		c, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
	}
	for i, c := range silent {
		assertClosed(t, c, "pending connection %d was not closed when newer ones came", i)
	}
	assert.LessOrEqual(t, l.pending.len(), maxPending)

	client, _ := dial(t, l, s.clientConfig(0, tls.VersionTLS13, true))
	exchange(t, client, accept(t, conns), []byte("past the evictions"))
}

// TestClientHelloTimeout: a connection that does not complete its
// ClientHello in time is closed, though the handshake timeout is far off.
func TestClientHelloTimeout(t *testing.T) {
	s := newTestService(t)
	l, _ := listen(t, &Config{Client: s.client, Handshake: s.config(), HandshakeTimeout: time.Minute, ClientHelloTimeout: 200 * time.Millisecond})
	for _, c := range flood(t, l, 2) {
		assertClosed(t, c, "a connection without a ClientHello outlived the ClientHello timeout")
	}
	assert.Eventually(t, func() bool { return l.pending.len() == 0 }, 5*time.Second, 5*time.Millisecond)
}

// TestTrickledClientHello: a client whose ClientHello arrives one byte per
// TCP segment, and one that splits it into many records, complete their
// handshakes: the edge waits for the whole message, not the first read.
func TestTrickledClientHello(t *testing.T) {
	s := newTestService(t)
	svc := &countingService{Service: s.client}
	l, conns := listen(t, &Config{Client: svc, Handshake: s.config()})
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		raw, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		client := tls.Client(&clientConn{Conn: raw, trickle: true, corruptAt: -1}, s.clientConfig(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, version, true))
		t.Cleanup(func() { client.Close() })
		require.NoError(t, client.Handshake())
		exchange(t, client, accept(t, conns), []byte("after a trickled ClientHello"))
	}
	assert.Equal(t, int32(2), svc.opened.Load())

	// The same ClientHello in 16-byte records, sent at once.
	raw, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer raw.Close()
	hello := goClientHello(t)
	_, err = raw.Write(fragment(hello, 16))
	require.NoError(t, err)
	require.NoError(t, raw.SetReadDeadline(time.Now().Add(10*time.Second)))
	hdr := make([]byte, 5)
	_, err = io.ReadFull(raw, hdr)
	require.NoError(t, err)
	assert.Equal(t, []byte{22, 3, 3}, hdr[:3], "the edge answered a fragmented ClientHello with other than a ServerHello record")
}
