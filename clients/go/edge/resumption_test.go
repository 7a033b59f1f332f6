package edge

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// oneByteEdge is an edge with cfg that writes a byte on every connection.
func oneByteEdge(t *testing.T, client *handshaked.Client, cfg *pb.HandshakeConfig) string {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := NewListener(inner, &Config{Client: client, Handshake: cfg})
	t.Cleanup(func() { l.Close() })
	go serveOneByte(l)
	return l.Addr().String()
}

// resumes connects with cfg, reads the edge's byte and reports whether the
// session resumed.
func resumes(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(t, err)
	return c.ConnectionState().DidResume
}

// TestResumptionScope: a ticket resumes on every edge whose configuration
// names the same keys, in any order, and on no edge naming others: a
// caller allowed other keys cannot take over the session. A ticket of a
// retired ticket key gets a full handshake. TLS 1.2 and 1.3.
func TestResumptionScope(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	const rotation, lifetime = time.Hour, 2 * time.Hour
	srv := servicetest.Start(t, service.Options{Tickets: &service.TicketOptions{Deployment: "scope", Rotation: rotation, Lifetime: lifetime, Now: clock.Now}})
	ec := srv.ServerKey(t, "scope-ec", "p256-pkcs8.pem", "ec.test")
	rsa := srv.ServerKey(t, "scope-rsa", "rsa2048-pkcs1.pem", "rsa.test")
	client := handshaked.New(srv.Conn)
	both := oneByteEdge(t, client, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: ec.ID}, {Key: rsa.ID}}})
	bothReversed := oneByteEdge(t, client, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: rsa.ID}, {Key: ec.ID}}})
	ecOnly := oneByteEdge(t, client, &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: ec.ID}}})

	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cfg := &tls.Config{ServerName: ec.Name, RootCAs: ec.Pool, MinVersion: v, MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			require.False(t, resumes(t, both, cfg))
			assert.True(t, resumes(t, bothReversed, cfg), "the same keys in another order")
			assert.False(t, resumes(t, ecOnly, cfg), "an edge naming other keys resumed the session")

			// ecOnly's full handshake replaced the ticket: start again.
			require.False(t, resumes(t, both, cfg))
			clock.Add(rotation)
			assert.True(t, resumes(t, bothReversed, cfg), "a ticket of the previous ticket key")
			clock.Add(rotation + lifetime)
			assert.False(t, resumes(t, both, cfg), "a ticket of a retired ticket key resumed")
			assert.True(t, resumes(t, bothReversed, cfg), "the new ticket")
		})
	}
}
