package edge

import (
	"crypto/tls"
	"io"
	"net"
	"testing"

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
	if err != nil {
		b.Fatal(err)
	}
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
						if _, err := io.ReadFull(dst, make([]byte, len(buf))); err != nil {
							b.Fatal(err)
						}
						if err := <-done; err != nil {
							b.Fatal(err)
						}
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
	if err != nil {
		b.Fatal(err)
	}
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
	if err != nil {
		b.Fatal(err)
	}
	client := tls.Client(raw, ccfg)
	if err := client.Handshake(); err != nil {
		b.Fatal(err)
	}
	conn := <-accepted
	b.Cleanup(func() { client.Close(); conn.Close() })
	return client, conn
}
