package engine

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// seedHellos are ClientHello records of crypto/tls's client in several
// configurations, and those of the recorded transcripts (OpenSSL, GnuTLS,
// Chromium).
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
	// record_size_limit (RFC 8449) at its smallest, in either version;
	// GnuTLS's recorded ClientHellos carry it at its largest.
	for _, h := range []rawHello{hello12(), hello13()} {
		out = append(out, h.with(extRecordSizeLimit(minRecordSizeLimit)).record())
	}
	for _, tc := range transcriptCases {
		data, err := os.ReadFile(transcriptPath(tc.name))
		require.NoError(t, err)
		var tr recordedTranscript
		require.NoError(t, json.Unmarshal(data, &tr))
		rec, err := hex.DecodeString(tr.Steps[0].In)
		require.NoError(t, err)
		// One ClientHello record, the shape both fuzz targets take.
		if _, _, _, n, err := record.Parse(rec, record.MaxPlaintext); err == nil && n == len(rec) {
			out = append(out, rec)
		}
	}
	return out
}

func FuzzClientHello(f *testing.F) {
	for _, rec := range seedHellos(f) {
		f.Add(rec[record.HeaderLen+4:])
	}
	// A ClientHello offering two tickets (pre_shared_key, RFC 8446,
	// Section 4.2.11).
	two := []offeredTicket{{ticket: []byte("one"), age: 1, psk: make([]byte, 32)}, {ticket: []byte("two"), age: 2}}
	f.Add(resumeHello(hello13(), []byte{pskModeKE, pskModeDHEKE}, two, 2, 32, false)[record.HeaderLen+4:])
	f.Fuzz(func(t *testing.T, body []byte) {
		var m clientHelloMsg
		if !m.unmarshal(body) {
			return
		}
		(&Handshake{}).noteClientHello(&m)
		helloFingerprint(&m, true)
		validHostname(m.serverName)
		// What was understood survives re-encoding.
		var again clientHelloMsg
		require.True(t, again.unmarshal(m.marshal()[4:]), "re-encoded ClientHello rejected")
		require.Equal(t, normalizeHello(m), normalizeHello(again), "round trip")
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
	// Resumption: ClientHellos offering a ticket the engine sealed, with a
	// right and a wrong binder.
	cfg.Tickets = newAEADTicketKeys(9)
	cfg.NextProtos = []string{"h2"}
	ticket := probeTicket(f, &cfg, time.Second, nil)
	for _, corrupt := range []bool{false, true} {
		rec := resumeHello(hello13(), []byte{pskModeDHEKE}, []offeredTicket{ticket}, 1, 32, corrupt)
		f.Add(uint8(0), uint16(len(rec)), rec)
	}
	f.Fuzz(func(t *testing.T, prefix uint8, split uint16, data []byte) {
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		ctx := context.Background()
		if i := int(prefix) % (len(hellos) + 1); i > 0 {
			res := h.Step(ctx, p.keys, hellos[i-1])
			require.Equal(t, NeedInput, res.State, "real ClientHello %d: %s", i-1, res.Reason)
		}
		cut := min(int(split), len(data))
		for _, in := range [][]byte{data[:cut], data[cut:]} {
			if fuzzedStepFailed(t, h.Step(ctx, p.keys, in), in) {
				return
			}
		}
	})
}

// fuzzedStepFailed checks what a Step made of fuzzed input in: it consumed
// everything if it waits for more, failed with an alert or a reason and no
// output, and never completed. It reports whether the handshake failed.
func fuzzedStepFailed(t *testing.T, res StepResult, in []byte) bool {
	t.Helper()
	switch res.State {
	case NeedInput:
		require.Equal(t, len(in), res.Consumed, "NeedInput consumes everything")
	case Failed:
		require.False(t, res.Alert == nil && res.Reason == "", "failure without alert or reason")
		require.Nil(t, res.Output, "output on failure")
		return true
	case Complete:
		require.Fail(t, "handshake completed on fuzzed input")
	}
	return false
}
