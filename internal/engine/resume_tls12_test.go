package engine

import (
	"crypto/tls"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TLS 1.2 resumption with RFC 5077 tickets, against crypto/tls's client and
// its session cache.

func resumingClient12(p *testPKI, serverName string, cache tls.ClientSessionCache) *tls.Config {
	cl := clientConfig(p, serverName)
	cl.SessionTicketsDisabled, cl.ClientSessionCache, cl.MaxVersion = false, cache, tls.VersionTLS12
	return cl
}

func traceHas(tr []TraceEvent, dir Direction, msg string) bool {
	return slices.ContainsFunc(tr, func(e TraceEvent) bool { return e.Direction == dir && e.Message == msg })
}

func traceField(tr []TraceEvent, dir Direction, msg, key string) string {
	for _, e := range tr {
		if e.Direction == dir && e.Message == msg {
			for _, f := range e.Fields {
				if f.Key == key {
					return f.Value
				}
			}
		}
	}
	return ""
}

// expectFull checks a successful full handshake: the certificate was sent.
func expectFull(t *testing.T, res interopResult) *Session {
	t.Helper()
	s := expectSuccess(t, res)
	assert.False(t, s.Resumed, "engine resumed")
	assert.False(t, res.state.DidResume, "client resumed")
	assert.True(t, traceHas(res.relay.trace, Sent, "Certificate"), "no Certificate in a full handshake")
	return s
}

// expectResumed checks an abbreviated handshake on both sides.
func expectResumed(t *testing.T, res interopResult) *Session {
	t.Helper()
	s := expectSuccess(t, res)
	require.True(t, s.Resumed, "engine did a full handshake: %s\n%s", s, traceText(res.relay.trace))
	assert.True(t, res.state.DidResume, "client did not resume")
	assert.False(t, traceHas(res.relay.trace, Sent, "Certificate"), "Certificate sent in an abbreviated handshake")
	assert.True(t, s.ExtendedMasterSecret)
	assert.Equal(t, "session ticket", traceField(res.relay.trace, Sent, "ServerHello", "resumed"))
	return s
}

// TestResumptionTLS12 resumes crypto/tls's client over every key exchange
// and suite hash, the input cut in every way and the handshake moved
// between Handshake values after every Step.
func TestResumptionTLS12(t *testing.T) {
	p := getPKI(t)
	for _, tc := range []struct {
		key   string
		suite uint16
	}{
		{"p256", tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		{"ed25519", tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		{"p384", tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
		{"rsa", tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		{"rsa", tls.TLS_RSA_WITH_AES_256_GCM_SHA384},
	} {
		for _, mode := range []splitMode{splitWhole, splitRandom, splitBytes} {
			for _, hop := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/%v/hop=%v", tc.key, tls.CipherSuiteName(tc.suite), mode, hop)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					cfg := ticketConfig(newAEADTicketKeys(1), p.key(tc.key))
					cl := resumingClient12(p, tc.key+".example.com", tls.NewLRUClientSessionCache(1))
					cl.CipherSuites = []uint16{tc.suite}
					ic := interopCase{server: cfg, client: cl, mode: mode, hop: hop}
					res := runInterop(t, ic)
					full := expectFull(t, res)
					assert.True(t, traceHas(res.relay.trace, Sent, "NewSessionTicket"), "no ticket issued")

					// Issue 10, item 6: a resumed handshake makes no call to the
					// vault at all (noKeyOps fails every one).
					ic.keys = noKeyOps
					s := expectResumed(t, runInterop(t, ic))
					assert.Equal(t, full.CertificateIndex, s.CertificateIndex)
					assert.Equal(t, full.KeyRef, s.KeyRef)
					assert.Equal(t, tls.SignatureScheme(0), s.SignatureScheme, "no signature in a resumed handshake")
					// The ticket issued in the resumption resumes again.
					expectResumed(t, runInterop(t, ic))
				})
			}
		}
	}
}
