package engine

import (
	"context"
	"crypto/tls"
	"reflect"
	"testing"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// seedHellos are ClientHello records of crypto/tls's client in several
// configurations.
func seedHellos(t testing.TB) [][]byte {
	p := getPKI(t)
	var out [][]byte
	for _, cfg := range []*tls.Config{
		{ServerName: "p256.example.com"},
		{ServerName: "rsa.example.com", MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "x.example.com", CurvePreferences: []tls.CurveID{tls.CurveP384}, NextProtos: []string{"h2"}},
		{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}, InsecureSkipVerify: true},
		{Certificates: []tls.Certificate{p.clientCerts["p256"]}, InsecureSkipVerify: true},
	} {
		cfg.RootCAs = p.serverRoots
		out = append(out, captureClientHello(t, cfg))
	}
	return out
}

func FuzzClientHello(f *testing.F) {
	for _, rec := range seedHellos(f) {
		f.Add(rec[record.HeaderLen+4:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var m clientHelloMsg
		if !m.unmarshal(body) {
			return
		}
		traceClientHello(&m)
		helloFingerprint(&m)
		validHostname(m.serverName)
		// What was understood survives re-encoding.
		var again clientHelloMsg
		if !again.unmarshal(m.marshal()[4:]) {
			t.Fatal("re-encoded ClientHello rejected")
		}
		if !reflect.DeepEqual(normalizeHello(again), normalizeHello(m)) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, m)
		}
	})
}

// FuzzEngine feeds arbitrary bytes to a fresh handshake, or to one that has
// already answered a real ClientHello, in two Steps.
func FuzzEngine(f *testing.F) {
	hellos := seedHellos(f)
	for i, rec := range hellos {
		f.Add(uint8(0), uint16(len(rec)/2), rec)
		f.Add(uint8(i+1), uint16(3), []byte{20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 20, 1, 2, 3})
		f.Add(uint8(i+1), uint16(0), rec)
	}
	f.Add(uint8(0), uint16(1), []byte("GET / HTTP/1.1\r\n\r\n"))
	p := getPKI(f)
	cfg := serverConfig(p.p256, p.rsa)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA
	f.Fuzz(func(t *testing.T, prefix uint8, split uint16, data []byte) {
		h, err := NewHandshake(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if i := int(prefix) % (len(hellos) + 1); i > 0 {
			if res := h.Step(ctx, p.keys, hellos[i-1]); res.State != NeedInput {
				t.Fatalf("real ClientHello: %v %s", res.State, res.Reason)
			}
		}
		cut := min(int(split), len(data))
		for _, in := range [][]byte{data[:cut], data[cut:]} {
			res := h.Step(ctx, p.keys, in)
			switch res.State {
			case NeedInput:
				if res.Consumed != len(in) {
					t.Fatalf("NeedInput consumed %d of %d", res.Consumed, len(in))
				}
			case Failed:
				if res.Alert == nil && res.Reason == "" {
					t.Fatal("failure without alert or reason")
				}
				if res.Output != nil {
					t.Fatal("output on failure")
				}
				return
			case Complete:
				t.Fatal("handshake completed on fuzzed input")
			}
		}
	})
}
