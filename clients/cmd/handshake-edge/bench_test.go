package main

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/handshaked/handshaked/internal/servicetest"
)

// BenchmarkRequests measures HTTPS requests with a full handshake each (a
// new connection per request) to the echo page, served by handshake-edge
// (handshake in handshaked) or by a crypto/tls server holding the same key
// locally. Compare req/s of edge and local.
//
//	go test -run '^$' -bench Requests ./clients/cmd/handshake-edge/
func BenchmarkRequests(b *testing.B) {
	f := newFixture(b)
	edgeAddr, _ := f.start(b)
	for _, tc := range []struct {
		name    string
		key     servicetest.ServerKey
		fixture string
		version uint16
		suites  []uint16
	}{
		{"TLS1.3-ECDSA", f.ecdsa, "p256-pkcs8.pem", tls.VersionTLS13, nil},
		{"TLS1.2-RSA", f.rsa, "rsa2048-pkcs1.pem", tls.VersionTLS12, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
	} {
		cert, err := tls.X509KeyPair([]byte(tc.key.CertPEM), servicetest.Fixture(b, tc.fixture))
		if err != nil {
			b.Fatal(err)
		}
		localAddr := localServer(b, &tls.Config{Certificates: []tls.Certificate{cert}})
		for _, server := range []struct{ name, addr string }{{"edge", edgeAddr}, {"local", localAddr}} {
			b.Run(tc.name+"/"+server.name, func(b *testing.B) {
				tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
					ServerName: tc.key.Name, RootCAs: tc.key.Pool, MinVersion: tc.version, MaxVersion: tc.version, CipherSuites: tc.suites}}
				defer tr.CloseIdleConnections()
				client := &http.Client{Transport: tr}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						resp, err := client.Get("https://" + server.addr + "/")
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			})
		}
	}
}

// localServer serves the echo page with crypto/tls and a local key.
func localServer(b *testing.B, cfg *tls.Config) string {
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(echo)}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).String()
}
