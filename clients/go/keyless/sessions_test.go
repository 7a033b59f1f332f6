package keyless_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// countingVault forwards to the real client and counts the private-key
// operations: a resumed handshake must make none.
type countingVault struct {
	*handshaked.Client
	signs atomic.Int64
}

func (v *countingVault) Sign(ctx context.Context, id string, version uint32, scheme pb.SignatureScheme, message, digest []byte) ([]byte, uint32, error) {
	v.signs.Add(1)
	return v.Client.Sign(ctx, id, version, scheme, message, digest)
}

// startTLSServer is an ordinary crypto/tls server with a keyless
// certificate and vault session tickets; it writes "hello" on every
// connection.
func startTLSServer(t *testing.T, v *countingVault, keyID string, maxVersion uint16, tickets *keyless.SessionTickets) string {
	t.Helper()
	cert, err := keyless.Certificate(context.Background(), v, keyID)
	require.NoError(t, err)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: maxVersion}
	if tickets != nil {
		tickets.Configure(cfg)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("hello"))
					io.Copy(io.Discard, c)
				}
			})
		}
	})
	return l.Addr().String()
}

// connect makes one connection with cfg (whose session cache carries
// tickets between calls) and reports whether it resumed.
func connect(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	// Reading the server's bytes also takes in its TLS 1.3 NewSessionTicket.
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))
	return c.ConnectionState().DidResume
}

// TestSessionTicketsAcrossServers: two crypto/tls servers sharing nothing
// but the vault resume each other's sessions, TLS 1.2 and 1.3, with no
// private-key operation; a server with its own ticket keys does not; and a
// ticket outlives a rotation of the vault's ticket key, but not its
// retirement.
func TestSessionTicketsAcrossServers(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	const rotation, lifetime = time.Hour, 2 * time.Hour
	srv := servicetest.Start(t, service.Options{Tickets: &service.TicketOptions{Deployment: "keyless-test", Rotation: rotation, Lifetime: lifetime, Now: clock.Now}})
	key := srv.ServerKey(t, "web-ec", "p256-pkcs8.pem", "ec.test")
	client := handshaked.New(srv.Conn)
	v := &countingVault{Client: client}

	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			a := startTLSServer(t, v, key.ID, version, keyless.NewSessionTickets(v, key.ID))
			b := startTLSServer(t, v, key.ID, version, keyless.NewSessionTickets(v, key.ID))
			alone := startTLSServer(t, v, key.ID, version, nil)
			cfg := &tls.Config{ServerName: key.Name, RootCAs: key.Pool, ClientSessionCache: tls.NewLRUClientSessionCache(8)}

			signs := v.signs.Load()
			require.False(t, connect(t, a, cfg), "first connection")
			require.Equal(t, signs+1, v.signs.Load(), "a full handshake signs once")
			assert.True(t, connect(t, b, cfg), "server b resumes server a's session")
			assert.True(t, connect(t, a, cfg), "server a resumes server b's session")
			assert.Equal(t, signs+1, v.signs.Load(), "a resumed handshake makes no private-key operation")
			assert.False(t, connect(t, alone, cfg), "a server with its own ticket keys resumed the fleet's session")

			// Across the rotation boundary the previous key's tickets resume
			// (and the resumption gets a ticket under the new key)...
			require.False(t, connect(t, a, cfg), "fresh session")
			clock.Add(rotation)
			assert.True(t, connect(t, b, cfg), "a ticket of the previous ticket key after a rotation")
			assert.True(t, connect(t, a, cfg), "a ticket of the new ticket key")

			// ...and once a key is retired, its tickets get a full handshake.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			require.False(t, connect(t, a, cfg), "fresh session")
			clock.Add(rotation + lifetime)
			signs = v.signs.Load()
			assert.False(t, connect(t, b, cfg), "a ticket of a retired ticket key resumed")
			assert.Equal(t, signs+1, v.signs.Load(), "the full handshake signs")
			assert.True(t, connect(t, a, cfg), "the new ticket resumes")
		})
	}
}

// TestSessionTicketsVaultUnreachable: with the vault gone, a server seals
// tickets with its own keys and still resumes them itself.
func TestSessionTicketsVaultUnreachable(t *testing.T) {
	srv := servicetest.Start(t, service.Options{Tickets: &service.TicketOptions{Deployment: "keyless-test"}})
	key := srv.ServerKey(t, "web-ec", "p256-pkcs8.pem", "ec.test")
	v := &countingVault{Client: handshaked.New(srv.Conn)}
	cert, err := keyless.Certificate(context.Background(), v, key.ID)
	require.NoError(t, err)

	// This server's tickets go to a service that is not there.
	dead, err := handshaked.Dial("127.0.0.1:1", handshaked.WithInsecure())
	require.NoError(t, err)
	defer dead.Close()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	tickets := keyless.NewSessionTickets(dead, key.ID)
	tickets.Timeout = 500 * time.Millisecond
	tickets.Configure(cfg)
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("hello"))
					io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	client := &tls.Config{ServerName: key.Name, RootCAs: key.Pool, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	require.False(t, connect(t, l.Addr().String(), client))
	assert.True(t, connect(t, l.Addr().String(), client), "a locally sealed ticket resumes on its server")
}
