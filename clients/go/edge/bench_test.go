package edge

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// BenchmarkBulk measures the record layer: 1 MiB per operation between a
// crypto/tls client and either the edge's Conn or a crypto/tls server, over
// loopback TCP, in each direction.
//
//	go test -run '^$' -bench Bulk ./clients/go/edge/
func BenchmarkBulk(b *testing.B) {
	s := newTestService(b)
	localCert, err := tls.X509KeyPair([]byte(s.ecds.CertPEM), servicetest.Fixture(b, "p256-pkcs8.pem"))
	require.NoError(b, err)
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256} {
		version := uint16(tls.VersionTLS12)
		if suite < 0x1400 && suite > 0x1300 {
			version = tls.VersionTLS13
		}
		for _, server := range []string{"edge", "crypto-tls"} {
			for _, dir := range []string{"write", "read"} {
				b.Run(tls.CipherSuiteName(suite)+"/"+server+"/"+dir, func(b *testing.B) {
					client, conn := benchPair(b, s, localCert, server, suite, version)
					buf := make([]byte, 1<<20)
					b.SetBytes(int64(len(buf)))
					b.ResetTimer()
					for range b.N {
						src, dst := io.Writer(conn), io.Reader(client)
						if dir == "read" {
							src, dst = client, conn
						}
						done := make(chan error, 1)
						go func() {
							_, err := src.Write(buf)
							done <- err
						}()
						_, err := io.ReadFull(dst, make([]byte, len(buf)))
						require.NoError(b, err)
						require.NoError(b, <-done)
					}
				})
			}
		}
	}
}

// benchPair connects a crypto/tls client to the kind of server named.
func benchPair(b *testing.B, s *testService, localCert tls.Certificate, server string, suite, version uint16) (*tls.Conn, net.Conn) {
	b.Helper()
	ccfg := s.clientConfig(suite, version, true)
	if server == "edge" {
		l, conns := listen(b, &Config{Client: s.client, Handshake: s.config(suite)})
		client, _ := dial(b, l, ccfg)
		return client, accept(b, conns)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer l.Close()
	scfg := &tls.Config{Certificates: []tls.Certificate{localCert}, CipherSuites: []uint16{suite}}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		tc := tls.Server(c, scfg)
		tc.Handshake()
		accepted <- tc
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	require.NoError(b, err)
	client := tls.Client(raw, ccfg)
	require.NoError(b, client.Handshake())
	conn := <-accepted
	b.Cleanup(func() { client.Close(); conn.Close() })
	return client, conn
}

// BenchmarkSilentClients measures issue 13's first attack: idle TCP
// connections to the edge, opened 16 at a time, with a caller of the
// service signing and a TLS client handshaking through the edge after each
// batch. It reports how many idle connections it took until either failed
// (idle-conns-until-refused; 0: never, up to 4× the service's caps) and what each pending
// connection costs the process, edge and service together (heap and
// stacks, B/pending-conn). Run it once:
//
//	go test -run '^$' -bench SilentClients -benchtime 1x ./clients/go/edge/
func BenchmarkSilentClients(b *testing.B) {
	const inFlight, step = 64, 16
	srv := servicetest.Start(b, capped(inFlight))
	key := srv.ServerKey(b, "flood-ec", "p256-pkcs8.pem", "ec.test")
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(b, err)
	b.Cleanup(func() { edgeClient.Close() })
	caller := handshaked.New(srv.Conn)
	for range b.N {
		l, accepted := listen(b, &Config{Client: edgeClient, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}},
			HandshakeTimeout: time.Minute, ClientHelloTimeout: time.Minute})
		go func() {
			for c := range accepted {
				c.Close()
			}
		}()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		goroutines := runtime.NumGoroutine()
		refusedAt, open := 0, 0
		var conns []net.Conn
		for open < 4*inFlight {
			for range step {
				c, err := net.Dial("tcp", l.Addr().String())
				require.NoError(b, err)
				conns = append(conns, c)
			}
			open += step
			// Each accepted connection has at least its own goroutine.
			require.Eventually(b, func() bool { return runtime.NumGoroutine() >= goroutines+open }, 5*time.Second, time.Millisecond)
			time.Sleep(20 * time.Millisecond) // for the service to see what the edge opened
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _, err := caller.Sign(ctx, key.ID, 0, pb.SignatureScheme_SIGNATURE_SCHEME_ECDSA_SECP256R1_SHA256, []byte("m"), nil)
			cancel()
			if err == nil {
				// And a TLS client through the edge.
				var tc *tls.Conn
				tc, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", l.Addr().String(),
					&tls.Config{ServerName: key.Name, RootCAs: key.Pool})
				if err == nil {
					tc.Close()
				}
			}
			if err != nil && refusedAt == 0 {
				refusedAt = open
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(refusedAt), "idle-conns-until-refused")
		b.ReportMetric(float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse)/float64(open), "B/pending-conn")
		for _, c := range conns {
			c.Close()
		}
		l.Close()
	}
}
