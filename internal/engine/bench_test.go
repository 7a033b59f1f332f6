package engine

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
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
			benchLoop(b, client, engineServe(b, &cfg, p.keys))
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

// engineServe runs the engine's handshake on conn, as an edge would.
func engineServe(b *testing.B, cfg *Config, keys KeyOps) func(net.Conn) error {
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

// benchLoop runs b.N handshakes of a crypto/tls client against serve. The
// client reads until the server closes, taking in a NewSessionTicket sent
// after the handshake.
func benchLoop(b *testing.B, client *tls.Config, serve func(net.Conn) error) {
	b.ReportAllocs()
	for b.Loop() {
		benchHandshake(b, client, serve)
	}
}

// benchHandshake runs one handshake and returns the client's view of it.
func benchHandshake(b *testing.B, client *tls.Config, serve func(net.Conn) error) tls.ConnectionState {
	s, c := net.Pipe()
	done := make(chan error, 1)
	tc := tls.Client(c, client)
	go func() {
		err := tc.Handshake()
		if err == nil {
			io.Copy(io.Discard, tc)
		}
		done <- err
	}()
	require.NoError(b, serve(s))
	s.Close()
	require.NoError(b, <-done)
	c.Close()
	return tc.ConnectionState()
}

// BenchmarkResumption compares, in one run, TLS 1.3 full and resumed
// handshakes through the engine (tickets sealed with AES-256-GCM in
// process) with those of a crypto/tls server using its own tickets.
//
//	go test -run XXX -bench Resumption -benchmem ./internal/engine/
func BenchmarkResumption(b *testing.B) {
	p := getPKI(b)
	k := p.p256
	for _, resumed := range []bool{false, true} {
		name := "full"
		if resumed {
			name = "resumed"
		}
		client := func() *tls.Config {
			return &tls.Config{RootCAs: p.serverRoots, ServerName: "p256.example.com", MinVersion: tls.VersionTLS13,
				CurvePreferences: []tls.CurveID{tls.X25519}, SessionTicketsDisabled: !resumed,
				ClientSessionCache: tls.NewLRUClientSessionCache(1)}
		}
		b.Run(name+"/engine", func(b *testing.B) {
			cfg := ticketConfig(newAEADTicketKeys(1), k)
			cl := client()
			serve := engineServe(b, &cfg, p.keys)
			benchHandshake(b, cl, serve) // the first ticket
			benchLoop(b, cl, serve)
			require.Equal(b, resumed, benchHandshake(b, cl, serve).DidResume)
		})
		b.Run(name+"/crypto_tls", func(b *testing.B) {
			server := &tls.Config{Certificates: []tls.Certificate{{Certificate: k.cert.Chain, PrivateKey: k.signer}}}
			cl := client()
			serve := func(conn net.Conn) error { return tls.Server(conn, server).Handshake() }
			benchHandshake(b, cl, serve)
			benchLoop(b, cl, serve)
			require.Equal(b, resumed, benchHandshake(b, cl, serve).DidResume)
		})
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

// BenchmarkFirstFlightTrace measures a server's first flight (one Step on
// crypto/tls's ClientHello: key exchange, signature, records) with its
// trace and without (OmitTrace), the two alternating in one run: what
// decoding the messages for the trace costs a handshake.
//
//	go test -run XXX -bench FirstFlightTrace -benchmem -count 4 ./internal/engine/
func BenchmarkFirstFlightTrace(b *testing.B) {
	p := getPKI(b)
	for _, bc := range benchCases(p) {
		k := bc.key(p)
		cfg := serverConfig(k)
		client := bc.client.Clone()
		client.InsecureSkipVerify = true
		hello := captureClientHello(b, client)
		for _, omit := range []bool{false, true} {
			b.Run(bc.name+map[bool]string{false: "/traced", true: "/omitted"}[omit], func(b *testing.B) {
				for b.Loop() {
					h, _ := NewHandshake(&cfg)
					h.OmitTrace(omit)
					if res := h.Step(context.Background(), p.keys, hello); res.State != NeedInput {
						b.Fatal(res.Reason)
					}
				}
			})
		}
	}
}

// BenchmarkLargeClientHello measures the first Step (signature included)
// on TLS 1.3 ClientHellos that fill their lists with thousands of
// entries, as tlsfuzzer's test-extensions.py does: 16000 empty
// extensions, and 5000 key shares for groups among 7000 supported_groups.
// The checks that pair entries (one extension of each type, one share per
// group and each for a listed group, RFC 8446, Sections 4.2 and 4.2.8)
// take a set (codePoints); comparing every pair made these ClientHellos
// cost 38 and 12 ms, which any client could make the server spend.
//
//	go test -run XXX -bench LargeClientHello -benchmem ./internal/engine/
func BenchmarkLargeClientHello(b *testing.B) {
	p := getPKI(b)
	cfg := serverConfig(p.p256)
	manyExts := hello13()
	for i := range 16000 {
		manyExts.exts = append(manyExts.exts, rawExt{uint16(90 + i), nil})
	}
	var groups []uint16
	var shares []rawExt
	for g := range 7000 {
		groups = append(groups, uint16(0x2000+g))
		if g >= 2000 {
			shares = append(shares, rawExt{uint16(0x2000 + g), []byte{1}})
		}
	}
	manyShares := hello13().replace(extGroups(append(groups, 0x001d)...)).replace(extKeyShare(append(shares, shareX25519)...))
	for _, bc := range []struct {
		name  string
		hello rawHello
	}{{"16000 extensions", manyExts}, {"5000 key shares", manyShares}} {
		hello := record.Append(nil, record.Handshake, 0x0301, bc.hello.message())
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				h, _ := NewHandshake(&cfg)
				if res := h.Step(context.Background(), p.keys, hello); res.State != NeedInput {
					b.Fatal(res.Reason)
				}
			}
		})
	}
}
