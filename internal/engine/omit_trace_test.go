package engine

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOmitTrace: Steps that omit the trace carry none, whatever the
// handshake does (client certificates, HelloRetryRequest, tickets issued
// and resumed in both versions, the client's Finished left to the caller,
// a failure with an alert, the handshake saved and restored after every
// Step), and the handshake comes out as the same one traced: the same
// messages, so the same session on both sides.
func TestOmitTrace(t *testing.T) {
	p := getPKI(t)
	clientAuth := func(cfg *Config, cl *tls.Config) {
		cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
		cl.Certificates = []tls.Certificate{p.clientCerts["p384"]}
	}
	for _, tc := range []struct {
		name    string
		mode    splitMode
		hop     bool
		resume  bool // a second handshake resumes the first's ticket
		setup   func(cfg *Config, cl *tls.Config)
		failure Alert // the handshake fails with it, 0 for success
	}{
		{name: "TLS 1.3 client auth, byte by byte, restored", mode: splitBytes, hop: true, setup: clientAuth},
		{name: "TLS 1.2 ECDHE client auth", setup: func(cfg *Config, cl *tls.Config) {
			clientAuth(cfg, cl)
			cl.MaxVersion = tls.VersionTLS12
		}},
		{name: "TLS 1.2 RSA key exchange", setup: func(cfg *Config, cl *tls.Config) {
			cfg.Certificates = []Certificate{p.rsa.cert}
			cl.ServerName, cl.MaxVersion, cl.CipherSuites = "rsa.example.com", tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
		}},
		{name: "HelloRetryRequest", setup: func(cfg *Config, cl *tls.Config) {
			cfg.Groups, cl.CurvePreferences = []tls.CurveID{tls.CurveP384}, []tls.CurveID{tls.CurveP256, tls.CurveP384}
		}},
		{name: "TLS 1.3 resumed, restored", hop: true, resume: true},
		{name: "TLS 1.2 resumed", resume: true, setup: func(cfg *Config, cl *tls.Config) { cl.MaxVersion = tls.VersionTLS12 }},
		{name: "TLS 1.3 resumed, Finished at the caller", resume: true, setup: func(cfg *Config, cl *tls.Config) { cfg.CallerVerifiesFinished = true }},
		{name: "TLS 1.2 resumed, Finished at the caller", resume: true, setup: func(cfg *Config, cl *tls.Config) {
			cfg.CallerVerifiesFinished, cl.MaxVersion = true, tls.VersionTLS12
		}},
		{name: "failure", failure: alertProtocolVersion, setup: func(cfg *Config, cl *tls.Config) {
			cfg.MinVersion, cl.MaxVersion = tls.VersionTLS13, tls.VersionTLS12
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			run := func(omit bool) []interopResult {
				cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
				cl := resumingClient(p, "p256.example.com", &sessionCache{})
				cl.MinVersion = 0
				if tc.setup != nil {
					tc.setup(&cfg, cl)
				}
				ic := interopCase{server: cfg, client: cl, mode: tc.mode, hop: tc.hop, omitTrace: omit}
				results := []interopResult{runInterop(t, ic)}
				if tc.resume {
					ic.keys = noKeyOps
					results = append(results, runInterop(t, ic))
				}
				return results
			}
			traced, omitted := run(false), run(true)
			for i := range traced {
				if tc.failure != 0 {
					expectFailure(t, traced[i], tc.failure)
					expectFailure(t, omitted[i], tc.failure)
					require.NotNil(t, omitted[i].relay.last.Alert, "the alert is sent without its trace event")
				} else {
					want, got := expectSuccess(t, traced[i]), expectSuccess(t, omitted[i])
					assert.Equal(t, i > 0, got.Resumed, "resumed")
					assert.Equal(t, want.Resumed, got.Resumed, "resumed")
					assert.Equal(t, want.Group, got.Group, "group")
					assert.Equal(t, want.SignatureScheme, got.SignatureScheme, "signature scheme")
					assert.Equal(t, want.PeerCertificates, got.PeerCertificates, "client certificates")
					assert.Equal(t, want.DidHelloRetryRequest, got.DidHelloRetryRequest, "HelloRetryRequest")
					assert.Equal(t, want.PendingFinished != nil, got.PendingFinished != nil, "Finished at the caller")
				}
				assert.NotEmpty(t, traced[i].relay.trace, "traced")
				assert.Empty(t, omitted[i].relay.trace, "trace omitted:\n%s", traceText(omitted[i].relay.trace))
			}
		})
	}
}

// TestOmitTraceBuildsNone: a Step that omits the trace does not build it
// and drop it at the end: decoding the messages into text is the cost
// omitting saves. The trace of a first flight, TLS 1.3 or TLS 1.2, takes
// some 25 allocations (of about 335 and 170 for the whole Step).
func TestOmitTraceBuildsNone(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(versionName(vers), func(t *testing.T) {
			cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
			cl := resumingClient(p, "p256.example.com", &sessionCache{})
			cl.MinVersion, cl.MaxVersion = vers, vers
			hello := captureClientHello(t, cl)
			allocs := func(omit bool) float64 {
				return testing.AllocsPerRun(20, func() {
					h, err := NewHandshake(&cfg)
					require.NoError(t, err)
					h.OmitTrace(omit)
					res := h.Step(context.Background(), p.keys, hello)
					require.Equal(t, NeedInput, res.State, res.Reason)
					require.Equal(t, omit, len(res.Trace) == 0)
				})
			}
			traced, omitted := allocs(false), allocs(true)
			t.Logf("allocations of the server flight: %.0f traced, %.0f omitted", traced, omitted)
			assert.LessOrEqual(t, omitted, traced-20, "omitting the trace saves its allocations")
		})
	}
}
