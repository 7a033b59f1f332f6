package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sessionCache is a client session cache holding the last ticket whatever
// the server name, so that a test can offer a ticket where the client
// itself would not; alter, when set, rewrites the ticket on its way out.
type sessionCache struct {
	mu    sync.Mutex
	cs    *tls.ClientSessionState
	alter func(ticket []byte) []byte
}

func (c *sessionCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cs == nil || c.alter == nil {
		return c.cs, c.cs != nil
	}
	ticket, state, err := c.cs.ResumptionState()
	if err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(c.alter(append([]byte(nil), ticket...)), state)
	return cs, err == nil
}

func (c *sessionCache) Put(_ string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs != nil {
		c.cs = cs
	}
}

func (c *sessionCache) has() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cs != nil
}

// resumingClient is a TLS 1.3 crypto/tls client that keeps its tickets.
func resumingClient(p *testPKI, serverName string, cache tls.ClientSessionCache) *tls.Config {
	cl := clientConfig(p, serverName)
	cl.SessionTicketsDisabled = false
	cl.ClientSessionCache = cache
	cl.MinVersion = tls.VersionTLS13
	return cl
}

// noKeyOps fails every call: a handshake that succeeds with it made no
// private-key operation (nor asked the vault anything).
var noKeyOps = &testKeyOps{failWith: errors.New("no key operation expected"), schemesErr: errors.New("no key operation expected")}

func ticketConfig(keys TicketKeys, certs ...*testKey) Config {
	cfg := serverConfig(certs...)
	cfg.Tickets = keys
	return cfg
}

// TestResumeTLS13 resumes crypto/tls's client through the engine: the
// first handshake is a full one and issues a ticket, the second resumes
// with psk_dhe_ke and makes no key operation, in several shapes.
func TestResumeTLS13(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name   string
		mode   splitMode
		hop    bool
		server func(cfg *Config)
		client func(cl *tls.Config)
		check  func(t *testing.T, s *Session)
	}{
		{name: "whole"},
		{name: "bytes", mode: splitBytes, hop: true},
		{name: "random", mode: splitRandom},
		{name: "HRR", server: func(cfg *Config) { cfg.Groups = []tls.CurveID{tls.CurveP384} },
			client: func(cl *tls.Config) { cl.CurvePreferences = []tls.CurveID{tls.CurveP256, tls.CurveP384} },
			check:  func(t *testing.T, s *Session) { assert.True(t, s.DidHelloRetryRequest) }},
		{name: "HRR saved", mode: splitRandom, hop: true, server: func(cfg *Config) { cfg.Groups = []tls.CurveID{tls.CurveP384} },
			client: func(cl *tls.Config) { cl.CurvePreferences = []tls.CurveID{tls.CurveP256, tls.CurveP384} }},
		{name: "ALPN", server: func(cfg *Config) { cfg.NextProtos = []string{"h2", "http/1.1"} },
			client: func(cl *tls.Config) { cl.NextProtos = []string{"http/1.1"} },
			check:  func(t *testing.T, s *Session) { assert.Equal(t, "http/1.1", s.ALPN) }},
		{name: "SHA-384 suite", server: func(cfg *Config) { cfg.CipherSuitesTLS13 = []uint16{tls.TLS_AES_256_GCM_SHA384} },
			check: func(t *testing.T, s *Session) { assert.Equal(t, uint16(tls.TLS_AES_256_GCM_SHA384), s.CipherSuite) }},
		{name: "client auth", server: func(cfg *Config) { cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA },
			client: func(cl *tls.Config) { cl.Certificates = []tls.Certificate{p.clientCerts["p384"]} },
			check: func(t *testing.T, s *Session) {
				require.Len(t, s.PeerCertificates, 1, "the ticket carries the client's certificate")
				assert.Equal(t, p.clientCerts["p384"].Certificate[0], s.PeerCertificates[0])
			}},
		{name: "TLS 1.2 tickets off", server: func(cfg *Config) { cfg.DisableTLS12Tickets = true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keys := newAEADTicketKeys(1)
			cfg := ticketConfig(keys, p.p256)
			if tc.server != nil {
				tc.server(&cfg)
			}
			cache := &sessionCache{}
			cl := resumingClient(p, "p256.example.com", cache)
			if tc.client != nil {
				tc.client(cl)
			}
			first := expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl, mode: tc.mode, hop: tc.hop}))
			assert.False(t, first.Resumed)
			assert.NotZero(t, first.SignatureScheme)
			assert.Equal(t, uint64(1), first.ServerSeq, "the NewSessionTicket took record 0")
			require.True(t, cache.has(), "the client got a ticket")
			require.Equal(t, int64(1), keys.sealed.Load())

			res := runInterop(t, interopCase{server: cfg, client: cl.Clone(), mode: tc.mode, hop: tc.hop, keys: noKeyOps})
			s := expectSuccess(t, res)
			assert.True(t, s.Resumed, "engine session %s", s)
			assert.True(t, res.state.DidResume, "client resumed")
			assert.Zero(t, s.SignatureScheme, "no signature in a resumed handshake")
			assert.Equal(t, "p256.example.com", s.ServerName)
			assert.Equal(t, uint64(1), s.ServerSeq, "a fresh ticket on the resumed connection too")
			trace := traceText(res.relay.trace)
			assert.Contains(t, trace, "resumption=accepted identity 0")
			assert.Contains(t, trace, "psk_key_exchange_modes=psk_dhe_ke pre_shared_key=1 identities")
			assert.NotContains(t, trace, "sent Certificate")
			assert.Contains(t, trace, "sent NewSessionTicket")
			if tc.check != nil {
				tc.check(t, s)
			}

			// And the ticket of the resumed connection resumes again.
			res = runInterop(t, interopCase{server: cfg, client: cl.Clone(), keys: noKeyOps})
			assert.True(t, expectSuccess(t, res).Resumed)
		})
	}
}

// TestResumeTLS13SuiteChange: a ticket resumes under another suite with the
// same hash (RFC 8446, Section 4.6.1), not under one with another hash.
func TestResumeTLS13SuiteChange(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	for _, tc := range []struct {
		first, second uint16
		resumed       bool
	}{
		{tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256, true},
		{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, false},
		{tls.TLS_AES_256_GCM_SHA384, tls.TLS_AES_128_GCM_SHA256, false},
	} {
		name := tls.CipherSuiteName(tc.first) + " then " + tls.CipherSuiteName(tc.second)
		cache := &sessionCache{}
		cl := resumingClient(p, "p256.example.com", cache)
		cfg := ticketConfig(keys, p.p256)
		cfg.CipherSuitesTLS13 = []uint16{tc.first}
		expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
		cfg.CipherSuitesTLS13 = []uint16{tc.second}
		res := runInterop(t, interopCase{server: cfg, client: cl.Clone()})
		s := expectSuccess(t, res)
		assert.Equal(t, tc.second, s.CipherSuite, name)
		assert.Equal(t, tc.resumed, s.Resumed, name)
		assert.Equal(t, tc.resumed, res.state.DidResume, name)
		if !tc.resumed {
			assert.Contains(t, traceText(res.relay.trace), "ticket for a cipher suite with another hash", name)
		}
	}
}

// TestResumeTLS13Refused: a ticket that must not resume gives a full
// handshake, never an error, and the trace says why.
func TestResumeTLS13Refused(t *testing.T) {
	p := getPKI(t)
	type change struct {
		server func(cfg *Config)
		client func(cl *tls.Config, cache *sessionCache)
	}
	in := func(d time.Duration) func() time.Time { return func() time.Time { return time.Now().Add(d) } }
	tests := []struct {
		name   string
		change change
		why    string
	}{
		{"tampered", change{client: func(_ *tls.Config, c *sessionCache) {
			c.alter = func(b []byte) []byte { b[len(b)/2] ^= 1; return b }
		}}, "ticket does not open"},
		{"other deployment", change{server: func(cfg *Config) { cfg.Tickets = newAEADTicketKeys(1) }}, "ticket does not open"},
		{"expired", change{server: func(cfg *Config) { cfg.Time = in(time.Hour) }}, "ticket expired"},
		{"age mismatch", change{server: func(cfg *Config) { cfg.Time = in(30 * time.Minute) }}, "obfuscated_ticket_age does not match the ticket"},
		{"other SNI", change{client: func(cl *tls.Config, _ *sessionCache) { cl.ServerName = "b.p256.example.net" }}, "ticket for another server name"},
		{"other ALPN", change{server: func(cfg *Config) { cfg.NextProtos = []string{"h2", "http/1.1"} },
			client: func(cl *tls.Config, _ *sessionCache) { cl.NextProtos = []string{"h2"} }}, "ticket for another ALPN protocol"},
		{"client certificate now required", change{server: func(cfg *Config) { cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA },
			client: func(cl *tls.Config, _ *sessionCache) { cl.Certificates = []tls.Certificate{p.clientCerts["p256"]} }},
			"ticket without the client certificate the server requires"},
		{"tickets off", change{server: func(cfg *Config) { cfg.Tickets = nil }}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
			cfg.TicketLifetime = time.Hour
			cfg.NextProtos = []string{"http/1.1"}
			cache := &sessionCache{}
			cl := resumingClient(p, "a.p256.example.net", cache)
			cl.NextProtos = []string{"http/1.1"}
			expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
			require.True(t, cache.has())
			cl = cl.Clone()
			if tc.change.server != nil {
				tc.change.server(&cfg)
			}
			if tc.change.client != nil {
				tc.change.client(cl, cache)
			}
			res := runInterop(t, interopCase{server: cfg, client: cl})
			s := expectSuccess(t, res)
			assert.False(t, s.Resumed)
			assert.False(t, res.state.DidResume)
			assert.NotZero(t, s.SignatureScheme, "a full handshake signs")
			if tc.why != "" {
				assert.Contains(t, traceText(res.relay.trace), "resumption=refused: "+tc.why)
			}
		})
	}
}

// TestResumeTLS13WrongBinder: a ticket that opens with a binder that does
// not verify aborts the handshake with decrypt_error (RFC 8446, Section
// 4.2.11); the binder ends the ClientHello, so the last byte is flipped.
func TestResumeTLS13WrongBinder(t *testing.T) {
	p := getPKI(t)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	cache := &sessionCache{}
	cl := resumingClient(p, "p256.example.com", cache)
	expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
	tampered := false
	res := runInterop(t, interopCase{server: cfg, client: cl.Clone(), mode: splitRecords, tamper: func(h *Handshake, rec []byte) []byte {
		if !tampered {
			tampered = true
			rec = append([]byte(nil), rec...)
			rec[len(rec)-1] ^= 0x80
		}
		return rec
	}})
	expectFailure(t, res, alertDecryptError)
	assert.Contains(t, res.relay.last.Reason, "PSK binder does not verify")
}

// TestResumeTLS13SealFails: when the ticket cannot be sealed the handshake
// completes without a ticket, and the next one is a full handshake.
func TestResumeTLS13SealFails(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	keys.failSeal(errors.New("vault unavailable"))
	cfg := ticketConfig(keys, p.p256)
	cache := &sessionCache{}
	cl := resumingClient(p, "p256.example.com", cache)
	res := runInterop(t, interopCase{server: cfg, client: cl})
	s := expectSuccess(t, res)
	assert.Equal(t, uint64(0), s.ServerSeq, "no NewSessionTicket")
	assert.Contains(t, traceText(res.relay.trace), "NewSessionTicket error=not sent: ticket sealing failed")
	assert.NotContains(t, traceText(res.relay.trace), "vault unavailable", "the vault's words stay out of the trace")
	assert.False(t, cache.has())
}

// TestResumeTLS13ClientCertificateRechecked: the client certificate a
// ticket carries must still verify under the current ClientCAs; when it
// does not, the client gets a full handshake (where crypto/tls, finding no
// certificate from the CAs asked for, sends none).
func TestResumeTLS13ClientCertificateRechecked(t *testing.T) {
	p := getPKI(t)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA
	cache := &sessionCache{}
	cl := resumingClient(p, "p256.example.com", cache)
	cl.Certificates = []tls.Certificate{p.clientCerts["ed25519"]}
	expectSuccess(t, runInterop(t, interopCase{server: cfg, client: cl}))
	res := runInterop(t, interopCase{server: cfg, client: cl.Clone(), keys: noKeyOps})
	require.True(t, expectSuccess(t, res).Resumed, "same ClientCAs: resumes")

	cfg.ClientCAs = p.serverRoots // the client CA is no longer trusted
	res = runInterop(t, interopCase{server: cfg, client: cl.Clone()})
	assert.Contains(t, traceText(res.relay.trace), "resumption=refused: client certificate of the ticket no longer verifies")
	s := expectSuccess(t, res)
	assert.False(t, s.Resumed)
	assert.Empty(t, s.PeerCertificates, "the ticket's certificate is not carried forward")
	assert.False(t, res.state.DidResume)
}

// TestNoTicketWithoutPSKDHE: a client that lists no psk_dhe_ke (crypto/tls
// with SessionTicketsDisabled sends no psk_key_exchange_modes) gets no
// ticket it could not use (RFC 8446, Section 4.2.9).
func TestNoTicketWithoutPSKDHE(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	res := runInterop(t, interopCase{server: ticketConfig(keys, p.p256), client: clientConfig(p, "p256.example.com")})
	s := expectSuccess(t, res)
	assert.Equal(t, uint64(0), s.ServerSeq)
	assert.Zero(t, keys.sealed.Load())
	assert.NotContains(t, traceText(res.relay.trace), "NewSessionTicket")
}

// paddedTicketKeys seals tickets padded to size bytes, as a long client
// certificate chain would make them.
type paddedTicketKeys struct {
	*aeadTicketKeys
	size int
}

func (k paddedTicketKeys) Seal(ctx context.Context, plaintext []byte) ([]byte, error) {
	ticket, err := k.aeadTicketKeys.Seal(ctx, plaintext)
	return append(ticket, make([]byte, k.size-len(ticket))...), err
}

// TestTicketTooLong: a sealed ticket longer than a NewSessionTicket can
// carry (2^16-1 bytes) is not sent; the handshake completes.
func TestTicketTooLong(t *testing.T) {
	p := getPKI(t)
	// crypto/tls reads handshake messages of up to 2^16 bytes: a 60000-byte
	// ticket is as long as it takes.
	for _, size := range []int{60000, maxTicketLen + 1} {
		cache := &sessionCache{}
		res := runInterop(t, interopCase{server: ticketConfig(paddedTicketKeys{newAEADTicketKeys(1), size}, p.p256),
			client: resumingClient(p, "p256.example.com", cache)})
		s := expectSuccess(t, res)
		sent := size <= maxTicketLen
		assert.Equal(t, sent, cache.has(), "ticket of %d bytes", size)
		assert.Equal(t, sent, s.ServerSeq > 0, "ticket of %d bytes (one record per 2^14 bytes)", size)
		if !sent {
			assert.Contains(t, traceText(res.relay.trace), "NewSessionTicket error=not sent: sealed ticket too long")
		}
	}
}
