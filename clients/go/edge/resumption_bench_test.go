package edge

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// serveOneByte writes a byte on every connection l accepts and closes it:
// once a client has read it, the server has completed the handshake and
// the client has taken in a TLS 1.3 NewSessionTicket sent before it.
func serveOneByte(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			c.Write([]byte{1})
			c.Close()
		}()
	}
}

// handshakeOnce makes one connection to addr with cfg and reports whether
// it resumed.
func handshakeOnce(b *testing.B, addr string, cfg *tls.Config) bool {
	c, err := tls.Dial("tcp", addr, cfg)
	require.NoError(b, err)
	defer c.Close()
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(b, err)
	return c.ConnectionState().DidResume
}

// BenchmarkResumption measures, in one run and interleaved so that noise
// hits all alike, sequential handshakes per second of a crypto/tls client:
// full and resumed through the edge (tickets sealed and opened by the
// service's vault), and resumed by a local crypto/tls server with its own
// ticket keys, the baseline. It reports each rate and the ratios
// edge-resumed/local-resumed (target ≥0.8) and edge-resumed/edge-full.
//
//	go test -run '^$' -bench Resumption -benchtime 2000x ./clients/go/edge/
func BenchmarkResumption(b *testing.B) {
	srv := servicetest.Start(b, service.Options{Tickets: &service.TicketOptions{Deployment: "bench"}})
	key := srv.ServerKey(b, "bench-ec", "p256-pkcs8.pem", "ec.test")
	// The edge's own connection, as a deployed edge has.
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(b, err)
	b.Cleanup(func() { edgeClient.Close() })
	localCert, err := tls.X509KeyPair([]byte(key.CertPEM), servicetest.Fixture(b, "p256-pkcs8.pem"))
	require.NoError(b, err)

	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		b.Run(tls.VersionName(version), func(b *testing.B) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			el := NewListener(inner, &Config{Client: edgeClient, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}})
			b.Cleanup(func() { el.Close() })
			go serveOneByte(el)
			ll, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{localCert}})
			require.NoError(b, err)
			b.Cleanup(func() { ll.Close() })
			go serveOneByte(ll)

			client := func(cache bool) *tls.Config {
				cfg := &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MinVersion: version, MaxVersion: version}
				if cache {
					cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				}
				return cfg
			}
			edgeFull, edgeResumed, localResumed := client(false), client(true), client(true)
			require.False(b, handshakeOnce(b, el.Addr().String(), edgeResumed))
			require.False(b, handshakeOnce(b, ll.Addr().String(), localResumed))

			var full, resumed, local time.Duration
			timed := func(total *time.Duration, addr string, cfg *tls.Config, wantResumed bool) {
				start := time.Now()
				got := handshakeOnce(b, addr, cfg)
				*total += time.Since(start)
				require.Equal(b, wantResumed, got)
			}
			b.ResetTimer()
			for range b.N {
				timed(&full, el.Addr().String(), edgeFull, false)
				timed(&resumed, el.Addr().String(), edgeResumed, true)
				timed(&local, ll.Addr().String(), localResumed, true)
			}
			n := float64(b.N)
			rate := func(d time.Duration) float64 { return n / d.Seconds() }
			b.ReportMetric(rate(full), "edge-full-hs/s")
			b.ReportMetric(rate(resumed), "edge-resumed-hs/s")
			b.ReportMetric(rate(local), "local-resumed-hs/s")
			b.ReportMetric(rate(resumed)/rate(local), "edge/local-resumed")
			b.ReportMetric(rate(resumed)/rate(full), "edge-resumed/full")
		})
	}
}
