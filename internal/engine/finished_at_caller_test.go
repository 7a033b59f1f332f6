package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/clientfinished"
	"github.com/handshaked/handshaked/internal/engine/record"
)

// verifyFinished does what an edge does with a session completed before the
// client's Finished: it verifies the Finished with clientfinished, writes
// the held-back output, and leaves the bytes after the Finished in
// out.leftover; on a refused Finished it sends the alert under the server's
// session write key (TLS 1.3: the application traffic key at sequence 0;
// TLS 1.2: the write key after the server's Finished) and sets out.err and
// out.finishErr.
func (r *relay) verifyFinished(conn net.Conn, out *relayOutcome) {
	s := out.session
	p := s.PendingFinished
	var (
		v   *clientfinished.Verifier
		err error
	)
	if s.Version == tls.VersionTLS12 {
		v, err = clientfinished.New12(s.CipherSuite, p.Message, s.ClientKey, s.ClientIV)
	} else {
		v, err = clientfinished.New(s.CipherSuite, p.Message, p.Key, p.IV, p.SkipEarlyData)
	}
	if err != nil {
		out.err = err
		return
	}
	buf := make([]byte, 1<<16)
	for in := out.leftover; ; {
		if len(in) > 0 {
			if r.tamperFinished != nil {
				in = r.tamperFinished(s, in)
			}
			done, rest, err := v.Feed(in)
			var fe *clientfinished.Error
			if errors.As(err, &fe) {
				out.finishErr, out.err = fe, fe
				if !fe.Peer {
					c, err := record.NewTLS13Cipher(s.CipherSuite, s.ServerTrafficSecret, 0)
					if s.Version == tls.VersionTLS12 {
						c, err = record.NewTLS12Cipher(s.CipherSuite, s.ServerKey, s.ServerIV, s.ServerSeq)
					}
					if err == nil {
						rec, _ := c.Seal(nil, record.Alert, []byte{alertLevelFatal, fe.Alert}, 0)
						conn.Write(rec)
					}
				}
				drainAfterAlert(conn)
				return
			}
			if err != nil {
				out.err = err
				return
			}
			if done {
				if _, err := conn.Write(p.Output); err != nil {
					out.err = err
				}
				out.leftover = slices.Clone(rest)
				return
			}
		}
		n, err := conn.Read(buf)
		if err != nil {
			out.err = fmt.Errorf("reading the client Finished: %w", err)
			return
		}
		in = buf[:n]
	}
}

// TestCallerVerifiesFinished runs crypto/tls's client through the engine
// completing on its first flight: one Step for the whole handshake, the
// client's Finished verified by the caller, then application data both
// ways with the session keys. Client authentication and TLS 1.2 complete
// on the client's Finished as without the option.
func TestCallerVerifiesFinished(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name      string
		mode      splitMode
		coalesce  bool
		server    func(cfg *Config)
		client    func(cl *tls.Config)
		steps     int
		atCaller  bool
		checkSess func(t *testing.T, s *Session)
	}{
		{name: "P-256", steps: 1, atCaller: true},
		{name: "coalesced with application data", coalesce: true, steps: 1, atCaller: true},
		{name: "byte by byte", mode: splitBytes, atCaller: true},
		{name: "SHA-384", server: func(cfg *Config) { cfg.CipherSuitesTLS13 = []uint16{tls.TLS_AES_256_GCM_SHA384} }, steps: 1, atCaller: true},
		{name: "ChaCha20", server: func(cfg *Config) { cfg.CipherSuitesTLS13 = []uint16{tls.TLS_CHACHA20_POLY1305_SHA256} }, steps: 1, atCaller: true},
		// Coalesced: the client's change_cipher_spec after the
		// HelloRetryRequest may otherwise come alone, in a Step of its own.
		{name: "HRR", coalesce: true, server: func(cfg *Config) { cfg.Groups = []tls.CurveID{tls.CurveP384} },
			client: func(cl *tls.Config) { cl.CurvePreferences = []tls.CurveID{tls.CurveP256, tls.CurveP384} }, steps: 2, atCaller: true,
			checkSess: func(t *testing.T, s *Session) { assert.True(t, s.DidHelloRetryRequest) }},
		{name: "client auth required", server: func(cfg *Config) { cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA },
			client: func(cl *tls.Config) { cl.Certificates = []tls.Certificate{p.clientCerts["p384"]} }, steps: 2},
		{name: "client auth optional, no certificate", server: func(cfg *Config) { cfg.ClientAuth, cfg.ClientCAs = ClientAuthOptional, p.clientCA }, steps: 2},
		{name: "TLS 1.2", client: func(cl *tls.Config) { cl.MaxVersion = tls.VersionTLS12 }, steps: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := serverConfig(p.p256)
			cfg.CallerVerifiesFinished = true
			if tc.server != nil {
				tc.server(&cfg)
			}
			cl := clientConfig(p, "p256.example.com")
			if tc.client != nil {
				tc.client(cl)
			}
			res := runInterop(t, interopCase{server: cfg, client: cl, mode: tc.mode, coalesce: tc.coalesce})
			s := expectSuccess(t, res)
			assert.Equal(t, tc.atCaller, s.PendingFinished != nil, "completed before the client Finished")
			if tc.steps > 0 {
				assert.Equal(t, tc.steps, res.relay.steps, "engine steps")
			}
			if tc.atCaller {
				assert.Contains(t, traceText(res.relay.trace), "received Finished verified_by=caller")
				assert.Equal(t, uint64(0), s.ServerSeq, "no ticket: nothing before the application data")
			}
			if tc.checkSess != nil {
				tc.checkSess(t, s)
			}
		})
	}
}

// TestCallerVerifiesFinishedResumption: the ticket of a handshake completed
// before the client's Finished goes out only after it is verified and
// resumes, again in one Step and with no key operation.
func TestCallerVerifiesFinishedResumption(t *testing.T) {
	p := getPKI(t)
	keys := newAEADTicketKeys(1)
	cfg := ticketConfig(keys, p.p256)
	cfg.CallerVerifiesFinished = true
	cache := &sessionCache{}
	cl := resumingClient(p, "p256.example.com", cache)

	res := runInterop(t, interopCase{server: cfg, client: cl})
	first := expectSuccess(t, res)
	require.NotNil(t, first.PendingFinished)
	assert.False(t, first.Resumed)
	assert.Equal(t, 1, res.relay.steps)
	assert.NotEmpty(t, first.PendingFinished.Output, "the NewSessionTicket is held back")
	assert.Equal(t, uint64(1), first.ServerSeq, "the NewSessionTicket takes record 0")
	require.True(t, cache.has(), "the client got the ticket after its Finished")

	res = runInterop(t, interopCase{server: cfg, client: cl.Clone(), keys: noKeyOps})
	s := expectSuccess(t, res)
	require.NotNil(t, s.PendingFinished)
	assert.True(t, s.Resumed)
	assert.True(t, res.state.DidResume)
	assert.Equal(t, 1, res.relay.steps)
	assert.Equal(t, uint64(1), s.ServerSeq)
}

// finishedTamper returns a tamperFinished that rewrites the first record
// opening under the client handshake key at sequence 0 (the client's
// Finished): change gets its plaintext and returns the inner type and
// content to seal instead.
func finishedTamper(suite uint16, change func(pt []byte) (record.ContentType, []byte)) func(s *Session, in []byte) []byte {
	done := false
	return func(s *Session, in []byte) []byte {
		p := s.PendingFinished
		out := slices.Clone(in)
		for off := 0; !done && off < len(out); {
			typ, vers, body, n, err := record.Parse(out[off:], record.MaxCiphertextTLS13)
			if err != nil || n == 0 {
				break
			}
			if typ == record.ApplicationData {
				open, err := record.NewTLS13KeyCipher(suite, p.Key, p.IV, 0)
				if err != nil {
					panic(err)
				}
				if inner, pt, err := open.Open(typ, vers, slices.Clone(body)); err == nil && inner == record.Handshake {
					done = true
					typ, pt := change(pt)
					seal, _ := record.NewTLS13KeyCipher(suite, p.Key, p.IV, 0)
					rec, err := seal.Seal(nil, typ, pt, 0)
					if err != nil {
						panic(err)
					}
					return slices.Concat(out[:off], rec, out[off+n:])
				}
			}
			off += n
		}
		return out
	}
}

// TestCallerVerifiesFinishedRefused: a wrong or missing client Finished is
// refused by the caller with the alert RFC 8446 calls for,
// which the client reads (protected under the server application traffic
// key at sequence 0); no ticket goes out and no application data is read
// with the session keys.
func TestCallerVerifiesFinishedRefused(t *testing.T) {
	p := getPKI(t)
	const suite = tls.TLS_AES_128_GCM_SHA256
	tests := []struct {
		name   string
		tamper func(s *Session, in []byte) []byte
		alert  Alert
		client string
	}{
		// RFC 8446, Section 4.4.4: "MUST terminate the connection with a
		// "decrypt_error" alert".
		{name: "wrong verify_data", alert: alertDecryptError, client: "error decrypting message",
			tamper: finishedTamper(suite, func(pt []byte) (record.ContentType, []byte) {
				pt[len(pt)-1] ^= 1
				return record.Handshake, pt
			})},
		// Section 6.2: a Finished of the wrong length does not decode.
		{name: "short verify_data", alert: alertDecodeError, client: "error decoding message",
			tamper: finishedTamper(suite, func(pt []byte) (record.ContentType, []byte) {
				return record.Handshake, append([]byte{typeFinished, 0, 0, byte(len(pt) - 5)}, pt[4:len(pt)-1]...)
			})},
		// No Finished: application data under the handshake key instead.
		// (A record that does not authenticate: clients/go/edge.)
		{name: "application data instead of Finished", alert: alertUnexpectedMessage, client: "unexpected message",
			tamper: finishedTamper(suite, func(pt []byte) (record.ContentType, []byte) { return record.ApplicationData, []byte("early") })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keys := newAEADTicketKeys(1)
			cfg := ticketConfig(keys, p.p256)
			cfg.CipherSuitesTLS13 = []uint16{suite}
			cfg.CallerVerifiesFinished = true
			cache := &sessionCache{}
			cl := resumingClient(p, "p256.example.com", cache)
			res := runInterop(t, interopCase{server: cfg, client: cl, tamperFinished: tc.tamper})
			require.NotNil(t, res.relay.finishErr, "relay error %v", res.relay.err)
			assert.Equal(t, uint8(tc.alert), res.relay.finishErr.Alert, "%s", res.relay.finishErr.Reason)
			require.Error(t, res.clientErr)
			assert.ErrorContains(t, res.clientErr, "remote error: tls: "+tc.client, "the client read the protected alert")
			assert.False(t, cache.has(), "no ticket before a verified Finished")
		})
	}
}

// TestCallerVerifiesFinishedTLS12Resumption: a TLS 1.2 abbreviated
// handshake completes in the Step that returns the server's flight (RFC
// 5246, Section 7.3), with no key operation, every key exchange, suite and
// hash, the input whole or byte by byte; the caller verifies the client's
// ChangeCipherSpec and Finished, and application data then goes both ways
// from client and server sequence number 1. The full handshake before it
// completes on the client's Finished, its Finished coming first.
func TestCallerVerifiesFinishedTLS12Resumption(t *testing.T) {
	p := getPKI(t)
	for _, tc := range []struct {
		key   string
		suite uint16
	}{
		{"p256", tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		{"ed25519", tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		{"p384", tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
		{"rsa", tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
	} {
		for _, mode := range []splitMode{splitWhole, splitBytes} {
			for _, coalesce := range []bool{false, true} {
				// Coalesced: the client's application data comes with its
				// Finished, for the record layer after it.
				t.Run(fmt.Sprintf("%s/%v/coalesced=%v", tls.CipherSuiteName(tc.suite), mode, coalesce), func(t *testing.T) {
					t.Parallel()
					testCallerVerifiesFinishedTLS12Resumption(t, p, tc.key, tc.suite, mode, coalesce)
				})
			}
		}
	}
}

func testCallerVerifiesFinishedTLS12Resumption(t *testing.T, p *testPKI, key string, suite uint16, mode splitMode, coalesce bool) {
	cfg := ticketConfig(newAEADTicketKeys(1), p.key(key))
	cfg.CallerVerifiesFinished = true
	cl := resumingClient12(p, key+".example.com", tls.NewLRUClientSessionCache(1))
	cl.CipherSuites = []uint16{suite}
	ic := interopCase{server: cfg, client: cl, mode: mode, coalesce: coalesce}
	res := runInterop(t, ic)
	full := expectFull(t, res)
	assert.Nil(t, full.PendingFinished, "a full handshake completes on the client's Finished")

	ic.keys = noKeyOps
	for range 2 { // the ticket of the resumption resumes again
		res = runInterop(t, ic)
		s := expectResumed(t, res)
		require.NotNil(t, s.PendingFinished, "completed before the client's Finished")
		if mode == splitWhole {
			assert.Equal(t, 1, res.relay.steps, "engine steps")
		}
		assert.Nil(t, s.PendingFinished.Key, "the Finished opens under the session's client key")
		assert.Empty(t, s.PendingFinished.Output, "nothing held back: the ticket is in the server's flight")
		assert.Len(t, s.PendingFinished.Message, 4+12)
		assert.Equal(t, uint64(1), s.ClientSeq, "the client's Finished takes record 0")
		assert.Equal(t, uint64(1), s.ServerSeq, "the server's Finished took record 0")
		tr := traceText(res.relay.trace)
		assert.Contains(t, tr, "received ChangeCipherSpec verified_by=caller")
		assert.Contains(t, tr, "received Finished verified_by=caller")
	}
}

// flightTamper12 collects the client's records after the server's flight
// of a TLS 1.2 abbreviated handshake until the first two (its
// ChangeCipherSpec and Finished) are in, and replaces them with what
// change makes of them.
func flightTamper12(change func(s *Session, ccs, fin []byte) []byte) func(s *Session, in []byte) []byte {
	var held []byte
	done := false
	return func(s *Session, in []byte) []byte {
		if done {
			return in
		}
		held = append(held, in...)
		_, _, _, n1, err := record.Parse(held, record.MaxCiphertextTLS12)
		if err != nil || n1 == 0 {
			return nil
		}
		_, _, _, n2, err := record.Parse(held[n1:], record.MaxCiphertextTLS12)
		if err != nil || n2 == 0 {
			return nil
		}
		done = true
		return slices.Concat(change(s, held[:n1], held[n1:n1+n2]), held[n1+n2:])
	}
}

// resealFinished12 opens the client's Finished record under the session's
// client key and seals what change makes of its plaintext instead.
func resealFinished12(s *Session, fin []byte, change func(pt []byte) []byte) []byte {
	typ, vers, body, _, err := record.Parse(fin, record.MaxCiphertextTLS12)
	if err != nil {
		panic(err)
	}
	open, err := record.NewTLS12Cipher(s.CipherSuite, s.ClientKey, s.ClientIV, 0)
	if err != nil {
		panic(err)
	}
	typ, pt, err := open.Open(typ, vers, slices.Clone(body))
	if err != nil {
		panic(err)
	}
	seal, _ := record.NewTLS12Cipher(s.CipherSuite, s.ClientKey, s.ClientIV, 0)
	rec, err := seal.Seal(nil, typ, change(pt), 0)
	if err != nil {
		panic(err)
	}
	return rec
}

// TestCallerVerifiesFinishedTLS12Refused: the caller refuses a TLS 1.2
// client's second flight that is not its ChangeCipherSpec and then its
// right Finished, with the alert the engine would send, protected under
// the server write key after the server's Finished, which the client
// reads; no application data is read with the session keys.
func TestCallerVerifiesFinishedTLS12Refused(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name   string
		change func(s *Session, ccs, fin []byte) []byte
		alert  Alert
		client string
	}{
		// RFC 5246, Section 7.4.9: "Recipients of Finished messages MUST
		// verify that the contents are correct"; decrypt_error (7.2.2).
		{name: "wrong verify_data", alert: alertDecryptError, client: "error decrypting message",
			change: func(s *Session, ccs, fin []byte) []byte {
				return slices.Concat(ccs, resealFinished12(s, fin, func(pt []byte) []byte { pt[len(pt)-1] ^= 1; return pt }))
			}},
		{name: "short verify_data", alert: alertDecodeError, client: "error decoding message",
			change: func(s *Session, ccs, fin []byte) []byte {
				return slices.Concat(ccs, resealFinished12(s, fin, func(pt []byte) []byte { return append([]byte{typeFinished, 0, 0, 11}, pt[4:15]...) }))
			}},
		// Section 7.3: the ChangeCipherSpec comes first; without it the
		// Finished (protected) is an unexpected record.
		{name: "missing ChangeCipherSpec", alert: alertUnexpectedMessage, client: "unexpected message",
			change: func(s *Session, ccs, fin []byte) []byte { return fin }},
		{name: "Finished before ChangeCipherSpec", alert: alertUnexpectedMessage, client: "unexpected message",
			change: func(s *Session, ccs, fin []byte) []byte { return slices.Concat(fin, ccs) }},
		{name: "ChangeCipherSpec twice", alert: alertUnexpectedMessage, client: "unexpected message",
			change: func(s *Session, ccs, fin []byte) []byte { return slices.Concat(ccs, ccs, fin) }},
		{name: "application data instead of Finished", alert: alertUnexpectedMessage, client: "unexpected message",
			change: func(s *Session, ccs, fin []byte) []byte {
				c, _ := record.NewTLS12Cipher(s.CipherSuite, s.ClientKey, s.ClientIV, 0)
				rec, _ := c.Seal(nil, record.ApplicationData, []byte("GET /"), 0)
				return slices.Concat(ccs, rec)
			}},
		{name: "Finished garbled", alert: alertBadRecordMAC, client: "bad record MAC",
			change: func(s *Session, ccs, fin []byte) []byte {
				fin = slices.Clone(fin)
				fin[len(fin)-1] ^= 1
				return slices.Concat(ccs, fin)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
			cfg.CallerVerifiesFinished = true
			cl := resumingClient12(p, "p256.example.com", tls.NewLRUClientSessionCache(1))
			expectFull(t, runInterop(t, interopCase{server: cfg, client: cl}))
			res := runInterop(t, interopCase{server: cfg, client: cl.Clone(), keys: noKeyOps, tamperFinished: flightTamper12(tc.change)})
			require.NotNil(t, res.relay.finishErr, "relay error %v", res.relay.err)
			assert.Equal(t, uint8(tc.alert), res.relay.finishErr.Alert, "%s", res.relay.finishErr.Reason)
			require.Error(t, res.clientErr)
			assert.ErrorContains(t, res.clientErr, "remote error: tls: "+tc.client, "the client read the protected alert")
		})
	}
}
