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
// out.leftover; on a refused Finished it sends the alert under the server
// application traffic key at sequence 0 and sets out.err and out.finishErr.
func (r *relay) verifyFinished(conn net.Conn, out *relayOutcome) {
	s := out.session
	p := s.PendingFinished
	v, err := clientfinished.New(s.CipherSuite, p.Message, p.Key, p.IV, p.SkipEarlyData)
	if err != nil {
		out.err = err
		return
	}
	buf := make([]byte, 1<<16)
	for in := out.leftover; ; {
		if len(in) > 0 {
			if r.tamperFinished != nil {
				in = r.tamperFinished(p, in)
			}
			done, rest, err := v.Feed(in)
			var fe *clientfinished.Error
			if errors.As(err, &fe) {
				out.finishErr, out.err = fe, fe
				if !fe.Peer {
					c, err := record.NewTLS13Cipher(s.CipherSuite, s.ServerTrafficSecret, 0)
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
func finishedTamper(suite uint16, change func(pt []byte) (record.ContentType, []byte)) func(p *PendingFinished, in []byte) []byte {
	done := false
	return func(p *PendingFinished, in []byte) []byte {
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
		tamper func(p *PendingFinished, in []byte) []byte
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
