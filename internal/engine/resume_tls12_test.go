package engine

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
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
	assert.Equal(t, "accepted", traceField(res.relay.trace, Sent, "ServerHello", "resumption"))
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

// TestResumptionTLS12Refused: a ticket that must not resume gives a full
// handshake, never an error, and the trace says why.
func TestResumptionTLS12Refused(t *testing.T) {
	p := getPKI(t)
	in := func(d time.Duration) func() time.Time { return func() time.Time { return time.Now().Add(d) } }
	tests := []struct {
		name   string
		server func(cfg *Config)
		client func(cl *tls.Config, cache *sessionCache)
		why    string // the trace's
	}{
		// RFC 5077, Section 3.4: a ticket the server cannot use gets a full
		// handshake.
		{name: "tampered", client: func(_ *tls.Config, c *sessionCache) {
			c.alter = func(b []byte) []byte { b[len(b)/2] ^= 1; return b }
		}, why: "ticket does not open"},
		{name: "other deployment", server: func(cfg *Config) { cfg.Tickets = newAEADTicketKeys(1) }, why: "ticket does not open"},
		{name: "expired", server: func(cfg *Config) { cfg.Time = in(61 * time.Minute) }, why: "ticket expired"},
		// RFC 6066, Section 3: "A server that implements this extension MUST
		// NOT accept the request to resume the session if the server_name
		// extension contains a different name."
		{name: "RFC 6066 3 other SNI", client: func(cl *tls.Config, _ *sessionCache) { cl.ServerName = "b.p256.example.net" },
			why: "ticket for another server name"},
		{name: "suite no longer enabled", server: func(cfg *Config) {
			cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}
		}, why: "the ticket's cipher suite TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 is not enabled"},
		{name: "client certificate now required", server: func(cfg *Config) { cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA },
			client: func(cl *tls.Config, _ *sessionCache) { cl.Certificates = []tls.Certificate{p.clientCerts["p256"]} },
			why:    "ticket without the client certificate the server requires"},
		{name: "tickets off", server: func(cfg *Config) { cfg.Tickets = nil }, why: "TLS 1.2 tickets are off"},
		{name: "TLS 1.2 tickets off", server: func(cfg *Config) { cfg.DisableTLS12Tickets = true }, why: "TLS 1.2 tickets are off"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
			cfg.TicketLifetime = time.Hour
			cache := &sessionCache{}
			cl := resumingClient12(p, "a.p256.example.net", cache)
			expectFull(t, runInterop(t, interopCase{server: cfg, client: cl}))
			require.True(t, cache.has())
			cl = cl.Clone()
			if tc.server != nil {
				tc.server(&cfg)
			}
			if tc.client != nil {
				tc.client(cl, cache)
			}
			res := runInterop(t, interopCase{server: cfg, client: cl})
			s := expectFull(t, res)
			assert.NotZero(t, s.SignatureScheme, "a full handshake signs")
			assert.Equal(t, "refused: "+tc.why, traceField(res.relay.trace, Sent, "ServerHello", "resumption"))
			issued := cfg.Tickets != nil && !cfg.DisableTLS12Tickets
			assert.Equal(t, issued, traceHas(res.relay.trace, Sent, "NewSessionTicket"), "a fresh ticket in the full handshake")
		})
	}
}

// TestResumptionTLS12SessionProperties: what the resumed session keeps
// (client certificate, group, certificate) and what it negotiates anew
// (ALPN, RFC 7301, Section 3.1).
func TestResumptionTLS12SessionProperties(t *testing.T) {
	p := getPKI(t)
	cfg := ticketConfig(newAEADTicketKeys(1), p.rsa, p.p256)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
	cfg.NextProtos = []string{"h2", "http/1.1"}
	cache := &sessionCache{}
	cl := resumingClient12(p, "p256.example.com", cache)
	cl.Certificates = []tls.Certificate{p.clientCerts["ed25519"]}
	cfg.Groups = []tls.CurveID{tls.CurveP384, tls.CurveP256}
	cl.NextProtos = []string{"http/1.1"}
	full := expectFull(t, runInterop(t, interopCase{server: cfg, client: cl}))
	require.Equal(t, "http/1.1", full.ALPN)

	cl = cl.Clone()
	cl.NextProtos = []string{"h2"}
	s := expectResumed(t, runInterop(t, interopCase{server: cfg, client: cl, keys: noKeyOps}))
	assert.Equal(t, "h2", s.ALPN, "ALPN negotiated anew")
	assert.Equal(t, tls.CurveP384, s.Group, "the session's group")
	assert.Equal(t, 1, s.CertificateIndex, "the certificate for the SNI and suite")
	assert.Equal(t, "key/p256", s.KeyRef)
	require.Len(t, s.PeerCertificates, 1, "the ticket carries the client's certificate")
	assert.Equal(t, p.clientCerts["ed25519"].Certificate[0], s.PeerCertificates[0])

	// The ticket's certificate is checked again: under other ClientCAs it
	// no longer verifies, and the client gets a full handshake (where
	// crypto/tls, finding no certificate from the CAs asked for, sends
	// none and the engine refuses it).
	cfg.ClientCAs = p.serverRoots
	res := runInterop(t, interopCase{server: cfg, client: cl.Clone()})
	assert.Equal(t, "refused: client certificate of the ticket no longer verifies", traceField(res.relay.trace, Sent, "ServerHello", "resumption"))
	assert.False(t, res.state.DidResume)
}

// TestResumptionTLS12SealFails: when the ticket cannot be sealed the
// promised NewSessionTicket carries a zero-length ticket (RFC 5077, Section
// 3.3), the handshake completes, and the next one is a full handshake.
func TestResumptionTLS12SealFails(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	keys.failSeal(errors.New("vault unavailable"))
	cfg := ticketConfig(keys, p.p256)
	cache := &sessionCache{}
	cl := resumingClient12(p, "p256.example.com", cache)
	res := runInterop(t, interopCase{server: cfg, client: cl})
	expectFull(t, res)
	assert.Equal(t, "none (sealing failed)", traceField(res.relay.trace, Sent, "NewSessionTicket", "ticket"))
	assert.NotContains(t, traceText(res.relay.trace), "vault unavailable", "the vault's words stay out of the trace")

	keys.failSeal(nil)
	expectFull(t, runInterop(t, interopCase{server: cfg, client: cl.Clone()}))
	expectResumed(t, runInterop(t, interopCase{server: cfg, client: cl.Clone(), keys: noKeyOps}))
}

// Raw probes: tickets sealed by the test under the server's TicketKeys,
// offered in hand-assembled ClientHellos, the server's answer read and
// checked as a client would.

const xSessionTicket = 35 // RFC 5077, Section 3.2

var probeSessionID = bytes.Repeat([]byte{0x5e}, 32)

// probeTicketState is a TLS 1.2 session of dial12's suite for hello12's
// server name, with a fresh master secret.
func probeTicketState(created time.Time) *ticketState {
	secret := make([]byte, masterSecretLength)
	rand.Read(secret)
	return &ticketState{vers: tls.VersionTLS12, suite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, group: tls.X25519,
		created: created, secret: secret, ems: true, serverName: "p256.example.com", alpn: "h2"}
}

func sealProbeTicket(t *testing.T, keys TicketKeys, ts *ticketState) []byte {
	t.Helper()
	ticket, err := keys.Seal(context.Background(), ts.marshal())
	require.NoError(t, err)
	return ticket
}

// resumeHello12 is hello12 offering ticket with a session ID.
func resumeHello12(ticket []byte) rawHello {
	h := hello12().with(rawExt{xSessionTicket, ticket})
	h.sessionID = probeSessionID
	return h
}

func sessionIDEcho(m serverMsg) []byte {
	return m.body[2+32+1 : 2+32+1+int(m.body[2+32])]
}

// resumption12 is the client side of an abbreviated handshake, the server's
// flight read and checked.
type resumption12 struct {
	conn             net.Conn
	done             chan relayOutcome
	hello            helloFields
	sessionID        []byte
	ticketMsg        []byte // NewSessionTicket body
	transcript       hash.Hash
	master           []byte
	clientKey, clinv []byte
	serverKey, srvIV []byte
}

// dialResume12 sends hello and reads ServerHello, NewSessionTicket,
// ChangeCipherSpec and the server's Finished, which it verifies under
// master.
func dialResume12(t *testing.T, cfg Config, hello rawHello, master []byte) *resumption12 {
	t.Helper()
	conn, done := startProbeRelay(t, cfg)
	r := &resumption12{conn: conn, done: done, transcript: sha256.New(), master: master}
	r.transcript.Write(hello.message())
	_, err := conn.Write(hello.record())
	require.NoError(t, err)
	var buf, hs []byte
	tmp := make([]byte, 1<<16)
	next := func() (record.ContentType, []byte) {
		for {
			typ, _, body, n, err := record.Parse(buf, 1<<16-1)
			require.NoError(t, err)
			if n > 0 {
				body = slices.Clone(body)
				buf = buf[n:]
				return typ, body
			}
			m, err := conn.Read(tmp)
			require.NoError(t, err, "reading the server's flight")
			buf = append(buf, tmp[:m]...)
		}
	}
	typ, body := next()
	for typ == record.Handshake {
		hs = append(hs, body...)
		typ, body = next()
	}
	require.Equal(t, record.ChangeCipherSpec, typ, "ChangeCipherSpec after the plaintext messages; got %v %x", typ, body)
	require.Equal(t, []byte{1}, body)
	msgs := splitMessages(t, hs)
	require.Len(t, msgs, 2, "ServerHello and NewSessionTicket, no Certificate")
	r.hello = parseServerHello(t, msgs[0])
	r.sessionID = slices.Clone(sessionIDEcho(msgs[0]))
	require.Equal(t, typeNewSessionTicket, msgs[1].typ)
	r.ticketMsg = slices.Clone(msgs[1].body)
	for _, m := range msgs {
		r.transcript.Write(m.raw)
	}
	r.clientKey, r.serverKey, r.clinv, r.srvIV = record.NewSecret12(crypto.SHA256, master).KeyBlock(rawRandom, r.hello.random, 16, 4)
	in, err := record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, r.serverKey, r.srvIV, 0)
	require.NoError(t, err)
	typ, body = next()
	inner, fin, err := in.Open(typ, 0x0303, body)
	require.NoError(t, err, "the server's Finished under the keys of the ticket's master secret")
	require.Equal(t, record.Handshake, inner)
	want := marshalFinished(finishedVerifyData12(record.NewSecret12(crypto.SHA256, master), "server finished", r.transcript.Sum(nil)))
	require.Equal(t, want, fin, "server Finished over ClientHello, ServerHello, NewSessionTicket")
	r.transcript.Write(fin)
	return r
}

// finish sends the client's ChangeCipherSpec and Finished (altered by
// alter, if set) and returns what the server answered and its outcome.
func (r *resumption12) finish(t *testing.T, alter func(fin []byte)) ([]byte, relayOutcome) {
	t.Helper()
	out, err := record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, r.clientKey, r.clinv, 0)
	require.NoError(t, err)
	fin := r.clientFinished()
	if alter != nil {
		alter(fin)
	}
	rec, err := out.Seal(nil, record.Handshake, fin, 0)
	require.NoError(t, err)
	return r.send(t, slices.Concat(rawRecord(20, 1), rec))
}

// clientFinished is the client's correct Finished message.
func (r *resumption12) clientFinished() []byte {
	return marshalFinished(finishedVerifyData12(record.NewSecret12(crypto.SHA256, r.master), "client finished", r.transcript.Sum(nil)))
}

// send writes the client's second flight and returns what the server
// answered and its outcome.
func (r *resumption12) send(t *testing.T, flight []byte) ([]byte, relayOutcome) {
	t.Helper()
	_, err := r.conn.Write(flight)
	require.NoError(t, err)
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, _ := io.ReadAll(r.conn)
	r.conn.Close()
	return answer, <-r.done
}

// expectProtectedAlert checks that the server answered with the fatal alert
// want, protected under its keys (it has sent its ChangeCipherSpec), and
// that the engine reports the same.
func (r *resumption12) expectProtectedAlert(t *testing.T, answer []byte, out relayOutcome, want Alert) {
	t.Helper()
	assert.Equal(t, want, out.last.AlertDescription, "engine: %s", out.last.Reason)
	in, err := record.NewTLS12Cipher(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, r.serverKey, r.srvIV, 1)
	require.NoError(t, err)
	typ, _, body, _, err := record.Parse(answer, 1<<16-1)
	require.NoError(t, err)
	inner, alert, err := in.Open(typ, 0x0303, slices.Clone(body))
	require.NoError(t, err, "the alert is protected under the server's keys")
	assert.Equal(t, record.Alert, inner)
	assert.Equal(t, []byte{alertLevelFatal, byte(want)}, alert)
}

// parseNewSessionTicket12 splits a NewSessionTicket body, RFC 5077, Section
// 3.3.
func parseNewSessionTicket12(t *testing.T, body []byte) (hint uint32, ticket []byte) {
	t.Helper()
	s := cryptobyte.String(body)
	require.True(t, s.ReadUint32(&hint) && s.ReadUint16LengthPrefixed((*cryptobyte.String)(&ticket)) && s.Empty(), "NewSessionTicket")
	return hint, ticket
}

func TestProbeResumptionTLS12(t *testing.T) {
	p := getPKI(t)
	now := time.UnixMilli(time.Now().UnixMilli()) // a ticket's precision
	config := func() Config {
		cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
		cfg.NextProtos = []string{"h2"}
		cfg.TicketLifetime = 2 * time.Hour
		cfg.Time = func() time.Time { return now }
		return cfg
	}

	// RFC 5077, Section 3.1 and RFC 5246, Section 7.3: ServerHello,
	// NewSessionTicket, ChangeCipherSpec and Finished, then the client's
	// ChangeCipherSpec and Finished.
	t.Run("RFC 5077 3.1 abbreviated handshake", func(t *testing.T) {
		cfg := config()
		ts := probeTicketState(now.Add(-time.Hour))
		master := slices.Clone(ts.secret)
		r := dialResume12(t, cfg, resumeHello12(sealProbeTicket(t, cfg.Tickets, ts)), master)
		// RFC 5077, Section 3.4: "If the server accepts the ticket and the
		// Session ID is not empty, then it MUST respond with the same
		// Session ID present in the ClientHello."
		assert.Equal(t, probeSessionID, r.sessionID, "session ID echoed")
		assert.Equal(t, uint16(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), r.hello.suite)
		// RFC 7627, Section 5.3: the abbreviated handshake's ServerHello
		// carries extended_master_secret.
		ems, ok := r.hello.ext(xExtendedMaster)
		assert.True(t, ok && len(ems) == 0, "extended_master_secret in the ServerHello")
		// RFC 5746, Section 3.6, for resumptions too (Section 3).
		reneg, ok := r.hello.ext(xRenegotiationInfo)
		assert.True(t, ok, "renegotiation_info in the ServerHello")
		assert.Equal(t, []byte{0}, reneg, "empty renegotiated_connection")
		// RFC 6066, Section 3: "When resuming a session, the server MUST NOT
		// include a server_name extension in the server hello."
		_, ok = r.hello.ext(xServerName)
		assert.False(t, ok, "server_name in a resumed ServerHello")
		st, ok := r.hello.ext(xSessionTicket)
		assert.True(t, ok && len(st) == 0, "empty SessionTicket extension: a new ticket follows")

		// The fresh ticket holds the same session, created when it was.
		hint, ticket := parseNewSessionTicket12(t, r.ticketMsg)
		assert.Equal(t, uint32(time.Hour/time.Second), hint, "lifetime hint: what the session has left")
		plaintext, err := cfg.Tickets.Open(context.Background(), ticket)
		require.NoError(t, err)
		again, err := parseTicketState(plaintext)
		require.NoError(t, err)
		assert.Equal(t, master, again.secret)
		assert.Equal(t, ts.created.UnixMilli(), again.created.UnixMilli(), "the session's creation time is kept")

		_, out := r.finish(t, nil)
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		s := out.session
		assert.True(t, s.Resumed)
		assert.Equal(t, r.clientKey, s.ClientKey)
		assert.Equal(t, r.serverKey, s.ServerKey)
		assert.Equal(t, uint64(1), s.ClientSeq)
		assert.Equal(t, uint64(1), s.ServerSeq)
		assert.Equal(t, tls.X25519, s.Group)
		assert.Equal(t, "h2", s.ALPN)
		assert.True(t, s.ExtendedMasterSecret)
	})

	t.Run("RFC 5077 3.4 empty session ID resumes with an empty echo", func(t *testing.T) {
		cfg := config()
		ts := probeTicketState(now)
		hello := resumeHello12(sealProbeTicket(t, cfg.Tickets, ts))
		hello.sessionID = nil
		r := dialResume12(t, cfg, hello, slices.Clone(ts.secret))
		assert.Empty(t, r.sessionID)
		_, out := r.finish(t, nil)
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
	})

	t.Run("RFC 5746 3.6 SCSV without the extension: renegotiation_info in the resumed ServerHello", func(t *testing.T) {
		cfg := config()
		ts := probeTicketState(now)
		hello := resumeHello12(sealProbeTicket(t, cfg.Tickets, ts)).without(xRenegotiationInfo)
		hello.suites = append(slices.Clone(hello.suites), scsvRenegRaw)
		r := dialResume12(t, cfg, hello, slices.Clone(ts.secret))
		reneg, ok := r.hello.ext(xRenegotiationInfo)
		assert.True(t, ok && bytes.Equal(reneg, []byte{0}), "empty renegotiation_info")
	})

	// RFC 5246, Section 7.4.9: "Recipients of Finished messages MUST verify
	// that the contents are correct"; the server has changed its write
	// keys, so the alert is protected.
	t.Run("RFC 5246 7.4.9 wrong client Finished in a resumption is decrypt_error", func(t *testing.T) {
		cfg := config()
		ts := probeTicketState(now)
		r := dialResume12(t, cfg, resumeHello12(sealProbeTicket(t, cfg.Tickets, ts)), slices.Clone(ts.secret))
		answer, out := r.finish(t, func(fin []byte) { fin[len(fin)-1] ^= 1 })
		r.expectProtectedAlert(t, answer, out, alertDecryptError)
	})

	// RFC 5246, Section 7.3 (Figure 2): the client's ChangeCipherSpec
	// comes before its Finished, and the handshake does not take
	// application data before both.
	for _, tc := range []struct {
		name   string
		flight func(r *resumption12) []byte
	}{
		{"Finished without ChangeCipherSpec", func(r *resumption12) []byte { return handshakeRecord(typeFinished, r.clientFinished()[4:]) }},
		{"application data before ChangeCipherSpec", func(r *resumption12) []byte { return rawRecord(23, 1, 2, 3) }},
		{"a second ClientHello", func(r *resumption12) []byte { return hello12().record() }},
	} {
		t.Run("RFC 5246 7.3 "+tc.name+" in a resumption is unexpected_message", func(t *testing.T) {
			cfg := config()
			ts := probeTicketState(now)
			r := dialResume12(t, cfg, resumeHello12(sealProbeTicket(t, cfg.Tickets, ts)), slices.Clone(ts.secret))
			answer, out := r.send(t, tc.flight(r))
			r.expectProtectedAlert(t, answer, out, alertUnexpectedMessage)
		})
	}

	// The handshakes that must not resume.
	for _, tc := range []struct {
		name   string
		ticket func(ts *ticketState)
		hello  func(h rawHello) rawHello
		cfg    func(cfg *Config)
		alert  Alert // 0: a full handshake
		why    string
	}{
		// RFC 7627, Section 5.3: "If the original session used the
		// "extended_master_secret" extension but the new ClientHello does
		// not contain it, the server MUST abort the abbreviated handshake."
		{name: "RFC 7627 5.3 session with EMS, ClientHello without is handshake_failure",
			hello: func(h rawHello) rawHello { return h.without(xExtendedMaster) }, alert: alertHandshakeFailure},
		// "If the original session did not use the "extended_master_secret"
		// extension but the new ClientHello contains the extension, then the
		// server MUST NOT perform the abbreviated handshake. Instead, it
		// SHOULD continue with a full handshake".
		{name: "RFC 7627 5.3 session without EMS, ClientHello with it is a full handshake",
			ticket: func(ts *ticketState) { ts.ems = false },
			why:    "ticket without the extended master secret, which the client now offers (RFC 7627, Section 5.3)"},
		// "If neither the original session nor the new ClientHello uses the
		// extension, the server SHOULD abort the handshake."
		{name: "RFC 7627 5.3 neither session nor ClientHello with EMS is handshake_failure",
			ticket: func(ts *ticketState) { ts.ems = false },
			hello:  func(h rawHello) rawHello { return h.without(xExtendedMaster) }, alert: alertHandshakeFailure},
		// RFC 5246, Section 7.4.1.2: the session's cipher suite must be
		// among the client's.
		{name: "RFC 5246 7.4.1.2 ticket's suite not offered is a full handshake",
			ticket: func(ts *ticketState) { ts.suite = tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 },
			why:    "client does not offer the ticket's cipher suite TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"},
		{name: "RFC 6066 3 ticket for another server_name is a full handshake",
			ticket: func(ts *ticketState) { ts.serverName = "other.p256.example.net" }, why: "ticket for another server name"},
		{name: "TLS 1.3 ticket is a full handshake",
			ticket: func(ts *ticketState) { ts.vers = tls.VersionTLS13 }, why: "ticket of another TLS version"},
		{name: "expired ticket is a full handshake",
			ticket: func(ts *ticketState) { ts.created = now.Add(-2 * time.Hour) }, why: "ticket expired"},
		{name: "truncated ticket is a full handshake",
			hello: func(h rawHello) rawHello {
				ext, _ := helloFields{exts: h.exts}.ext(xSessionTicket)
				return h.replace(rawExt{xSessionTicket, ext[:len(ext)-1]})
			}, why: "ticket does not open"},
		// RFC 5746, Section 3.6, as in a full handshake.
		{name: "RFC 5746 3.6 non-empty renegotiation_info with a ticket is handshake_failure",
			hello: func(h rawHello) rawHello {
				return h.replace(rawExt{xRenegotiationInfo, append([]byte{12}, make([]byte, 12)...)})
			}, alert: alertHandshakeFailure},
		{name: "TLS 1.2 tickets off: full handshake", cfg: func(cfg *Config) { cfg.DisableTLS12Tickets = true }, why: "TLS 1.2 tickets are off"},
		// The session is reported under a certificate that fits its suite.
		{name: "no certificate for the ticket's suite any more: full handshake",
			cfg: func(cfg *Config) { cfg.Certificates = []Certificate{getPKI(t).rsa.cert} }, why: "no certificate fits the ticket's cipher suite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			ts := probeTicketState(now)
			if tc.ticket != nil {
				tc.ticket(ts)
			}
			hello := resumeHello12(sealProbeTicket(t, cfg.Tickets, ts))
			if tc.hello != nil {
				hello = tc.hello(hello)
			}
			res := probeHello(t, cfg, hello.record())
			if tc.alert != 0 {
				expectProbeAlert(t, res, tc.alert)
				return
			}
			require.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
			msgs, _ := plaintextMessages(t, res.received)
			require.GreaterOrEqual(t, len(msgs), 2)
			assert.Equal(t, typeCertificate, msgs[1].typ, "a full handshake")
			assert.NotEqual(t, probeSessionID, sessionIDEcho(msgs[0]), "session ID echoed in a full handshake")
			assert.Equal(t, "refused: "+tc.why, traceField(res.engine.Trace, Sent, "ServerHello", "resumption"))
		})
	}
}

// TestProbeTicketIssuedTLS12 checks the full handshake's side: the
// ServerHello acknowledges the SessionTicket extension only when a ticket
// will follow (RFC 5077, Section 3.2), and the NewSessionTicket comes
// before the server's ChangeCipherSpec, covered by its Finished, sealing
// the session's master secret (Section 3.3).
func TestProbeTicketIssuedTLS12(t *testing.T) {
	p := getPKI(t)
	askTicket := hello12().with(rawExt{xSessionTicket, nil})
	for _, tc := range []struct {
		name  string
		cfg   func(cfg *Config)
		hello rawHello
		want  bool
	}{
		{"RFC 5077 3.2 empty SessionTicket gets one", nil, askTicket, true},
		{"RFC 5077 3.2 no SessionTicket extension, no ticket", nil, hello12(), false},
		{"RFC 7627 5.3 no ticket for a session without EMS", nil, askTicket.without(xExtendedMaster), false},
		{"DisableTLS12Tickets", func(cfg *Config) { cfg.DisableTLS12Tickets = true }, askTicket, false},
		{"no TicketKeys", func(cfg *Config) { cfg.Tickets = nil }, askTicket, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			res := probeHello(t, cfg, tc.hello.record())
			require.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
			msgs, _ := plaintextMessages(t, res.received)
			_, ok := parseServerHello(t, msgs[0]).ext(xSessionTicket)
			assert.Equal(t, tc.want, ok, "SessionTicket extension in the ServerHello")
		})
	}

	t.Run("RFC 5077 3.3 NewSessionTicket before ChangeCipherSpec", func(t *testing.T) {
		cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
		c := dial12Hello(t, cfg, askTicket)
		fin := c.finished()
		c.transcript.Write(fin)
		_, err := c.conn.Write(slices.Concat(record.Append(nil, record.Handshake, 0x0303, c.cke), rawRecord(20, 1), c.seal(record.Handshake, fin)))
		require.NoError(t, err)
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		answer, _ := io.ReadAll(c.conn)
		out := <-c.done
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)

		var recs [][]byte // bodies: NewSessionTicket, ChangeCipherSpec, Finished
		var types []record.ContentType
		for len(answer) > 0 {
			typ, _, body, n, err := record.Parse(answer, 1<<16-1)
			require.NoError(t, err)
			require.NotZero(t, n, "truncated record")
			recs, types = append(recs, slices.Clone(body)), append(types, typ)
			answer = answer[n:]
		}
		require.Equal(t, []record.ContentType{record.Handshake, record.ChangeCipherSpec, record.Handshake}, types)
		msgs := splitMessages(t, recs[0])
		require.Len(t, msgs, 1)
		require.Equal(t, typeNewSessionTicket, msgs[0].typ)
		hint, ticket := parseNewSessionTicket12(t, msgs[0].body)
		assert.Equal(t, uint32(maxTicketLifetime/time.Second), hint)
		plaintext, err := cfg.Tickets.Open(context.Background(), ticket)
		require.NoError(t, err)
		ts, err := parseTicketState(plaintext)
		require.NoError(t, err)
		assert.Equal(t, c.master, ts.secret, "the ticket seals the session's master secret")
		assert.True(t, ts.ems)
		assert.Equal(t, uint16(tls.VersionTLS12), ts.vers)
		assert.Equal(t, "p256.example.com", ts.serverName)
		c.transcript.Write(msgs[0].raw)

		// The Finished, under the server's keys, covers the
		// NewSessionTicket.
		_, serverKey, _, serverIV := record.NewSecret12(crypto.SHA256, c.master).KeyBlock(rawRandom, c.random, 16, 4)
		in, err := record.NewTLS12Cipher(0xc02b, serverKey, serverIV, 0)
		require.NoError(t, err)
		_, got, err := in.Open(record.Handshake, 0x0303, recs[2])
		require.NoError(t, err)
		assert.Equal(t, marshalFinished(finishedVerifyData12(record.NewSecret12(crypto.SHA256, c.master), "server finished", c.transcript.Sum(nil))), got)
	})
}

// FuzzResumptionTLS12 feeds ClientHellos carrying tickets that open (the
// fuzzer mutates around them) and what follows to a server with tickets on;
// the pending state of an abbreviated handshake is saved and restored in
// between. The engine must fail cleanly or wait, never complete or panic.
func FuzzResumptionTLS12(f *testing.F) {
	p := getPKI(f)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256, p.rsa)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA
	ccsAndJunk := []byte{20, 3, 3, 0, 1, 1, 22, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	for _, change := range []func(ts *ticketState){
		func(*ticketState) {},
		func(ts *ticketState) { ts.ems = false },
		func(ts *ticketState) { ts.suite = tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 },
		func(ts *ticketState) { ts.peerCerts = [][]byte{p.clientCerts["p256"].Certificate[0]} },
		func(ts *ticketState) { ts.secret = ts.secret[:47] },
	} {
		ts := probeTicketState(time.Now())
		change(ts)
		ticket, err := cfg.Tickets.Seal(context.Background(), ts.marshal())
		require.NoError(f, err)
		f.Add(resumeHello12(ticket).record(), ccsAndJunk)
		f.Add(resumeHello12(ticket).without(xExtendedMaster).record(), []byte(nil))
	}
	f.Fuzz(func(t *testing.T, hello, next []byte) {
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		ctx := context.Background()
		for i, in := range [][]byte{hello, next} {
			if fuzzedStepFailed(t, h.Step(ctx, p.keys, in), in) {
				return
			}
			if i == 0 {
				saved, err := h.MarshalBinary()
				require.NoError(t, err)
				h, err = RestoreHandshake(&cfg, saved)
				require.NoError(t, err, "restoring a state the engine saved")
			}
		}
	})
}

// BenchmarkResumptionTLS12 is BenchmarkResumption for TLS 1.2: full and
// resumed handshakes of crypto/tls's client through the engine (resumed
// ones with noKeyOps, which fails any vault call), and resumed ones against
// a crypto/tls server with its own tickets, in one run.
//
//	go test -run XXX -bench ResumptionTLS12 -benchmem ./internal/engine/
func BenchmarkResumptionTLS12(b *testing.B) {
	p := getPKI(b)
	client := func(tickets bool) *tls.Config {
		return &tls.Config{RootCAs: p.serverRoots, ServerName: "p256.example.com", MaxVersion: tls.VersionTLS12,
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
			SessionTicketsDisabled: !tickets, ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	}
	b.Run("full/engine", func(b *testing.B) {
		cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
		benchLoop(b, client(false), engineServe(b, &cfg, p.keys))
	})
	b.Run("resumed/engine", func(b *testing.B) {
		cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
		cl := client(true)
		benchHandshake(b, cl, engineServe(b, &cfg, p.keys)) // the first ticket
		resume := engineServe(b, &cfg, noKeyOps)
		benchLoop(b, cl, resume)
		require.True(b, benchHandshake(b, cl, resume).DidResume)
	})
	b.Run("resumed/crypto_tls", func(b *testing.B) {
		server := &tls.Config{Certificates: []tls.Certificate{{Certificate: p.p256.cert.Chain, PrivateKey: p.p256.signer}}}
		cl := client(true)
		serve := func(conn net.Conn) error { return tls.Server(conn, server).Handshake() }
		benchHandshake(b, cl, serve)
		benchLoop(b, cl, serve)
		require.True(b, benchHandshake(b, cl, serve).DidResume)
	})
}

// transcriptTicketKeys seals and opens the tickets of the recorded
// transcripts under a fixed key.
func transcriptTicketKeys() TicketKeys {
	key := sha256.Sum256([]byte("handshaked transcript ticket key"))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &aeadTicketKeys{id: 1, aead: aead}
}
