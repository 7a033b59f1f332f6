package engine

import (
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// The handshake benchmarks run crypto/tls's client against the engine and,
// in a sibling sub-benchmark, against a crypto/tls server with the same key,
// suite and group, over net.Pipe, so that one run gives both costs. The
// client's work is the same in both and is included.
//
//	go test -run XXX -bench Handshake -benchmem ./internal/engine/

type benchCase struct {
	name   string
	key    func(*testPKI) *testKey
	client *tls.Config
}

func benchCases(p *testPKI) []benchCase {
	return []benchCase{
		{"TLS13_ECDSA", func(p *testPKI) *testKey { return p.p256 }, &tls.Config{
			MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519}}},
		// X25519 for the key exchange; P-256 listed too, as TLS 1.2 wants
		// the certificate's curve among supported_groups (RFC 8422, 5.1).
		{"TLS12_ECDHE_ECDSA", func(p *testPKI) *testKey { return p.p256 }, &tls.Config{
			MaxVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}},
		{"TLS12_RSA", func(p *testPKI) *testKey { return p.rsa }, &tls.Config{
			MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}},
	}
}

func BenchmarkHandshake(b *testing.B) {
	p := getPKI(b)
	for _, bc := range benchCases(p) {
		k := bc.key(p)
		client := bc.client.Clone()
		client.RootCAs, client.ServerName, client.SessionTicketsDisabled = p.serverRoots, k.name+".example.com", true
		b.Run(bc.name+"/engine", func(b *testing.B) {
			cfg := serverConfig(k)
			benchLoop(b, client, engineServer(b, &cfg, p.keys))
		})
		b.Run(bc.name+"/crypto_tls", func(b *testing.B) {
			server := &tls.Config{
				Certificates:           []tls.Certificate{{Certificate: k.cert.Chain, PrivateKey: k.signer}},
				CipherSuites:           client.CipherSuites,
				SessionTicketsDisabled: true,
			}
			benchLoop(b, client, func(conn net.Conn) error {
				return tls.Server(conn, server).Handshake()
			})
		})
	}
}

// engineServer runs one handshake under cfg on a connection.
func engineServer(b *testing.B, cfg *Config, keys KeyOps) func(net.Conn) error {
	ctx := context.Background()
	return func(conn net.Conn) error {
		h, err := NewHandshake(cfg)
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<14)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return err
			}
			res := h.Step(ctx, keys, buf[:n])
			if len(res.Output) > 0 {
				if _, err := conn.Write(res.Output); err != nil {
					return err
				}
			}
			if res.State != NeedInput {
				require.NotEqual(b, Failed, res.State, res.Reason)
				return nil
			}
		}
	}
}

// benchLoop runs b.N handshakes of a crypto/tls client against serve.
func benchLoop(b *testing.B, client *tls.Config, serve func(net.Conn) error) {
	b.ReportAllocs()
	for b.Loop() {
		s, c := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- tls.Client(c, client).Handshake() }()
		require.NoError(b, serve(s))
		require.NoError(b, <-done)
		s.Close()
		c.Close()
	}
}

// BenchmarkPendingHandshake measures the heap a handshake holds while it
// waits for the client's second flight (the state a service keeps between
// two Steps), reported as B/pending, and the size of its saved form
// (MarshalBinary) as B/saved.
func BenchmarkPendingHandshake(b *testing.B) {
	p := getPKI(b)
	for _, bc := range benchCases(p) {
		b.Run(bc.name, func(b *testing.B) {
			k := bc.key(p)
			cfg := serverConfig(k)
			client := bc.client.Clone()
			client.InsecureSkipVerify = true
			hello := captureClientHello(b, client)
			const n = 200
			pending := make([]*Handshake, n)
			var perHandshake float64
			for b.Loop() {
				clear(pending)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				for i := range pending {
					h, _ := NewHandshake(&cfg)
					res := h.Step(context.Background(), p.keys, hello)
					require.Equal(b, NeedInput, res.State, res.Reason)
					pending[i] = h
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perHandshake = float64(after.HeapAlloc-before.HeapAlloc) / n
			}
			runtime.KeepAlive(pending)
			saved, err := pending[0].MarshalBinary()
			require.NoError(b, err)
			b.ReportMetric(perHandshake, "B/pending")
			b.ReportMetric(float64(len(saved)), "B/saved")
		})
	}
}
