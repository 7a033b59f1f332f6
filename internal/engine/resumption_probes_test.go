package engine

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The probes here offer the engine hand-built TLS 1.3 ClientHellos with
// tickets it sealed and binders computed by the test itself, from RFC 8446,
// Sections 4.2.11.2 and 7.1 (not with the engine's key schedule), and
// check what the RFC says the server does.

// rfcExpandLabel is HKDF-Expand-Label, RFC 8446, Section 7.1.
func rfcExpandLabel(h crypto.Hash, secret []byte, label string, context []byte, n int) []byte {
	var b cryptobyte.Builder
	b.AddUint16(uint16(n))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("tls13 " + label)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(context) })
	out, err := hkdf.Expand(h.New, secret, string(b.BytesOrPanic()), n)
	if err != nil {
		panic(err)
	}
	return out
}

// rfcBinder is the PSK binder over a transcript ending in a truncated
// ClientHello, SHA-256.
func rfcBinder(psk, transcript []byte) []byte {
	early, err := hkdf.Extract(sha256.New, psk, make([]byte, 32))
	if err != nil {
		panic(err)
	}
	empty := sha256.Sum256(nil)
	binderKey := rfcExpandLabel(crypto.SHA256, early, "res binder", empty[:], 32)
	finishedKey := rfcExpandLabel(crypto.SHA256, binderKey, "finished", nil, 32)
	th := sha256.Sum256(transcript)
	mac := hmac.New(sha256.New, finishedKey)
	mac.Write(th[:])
	return mac.Sum(nil)
}

// offeredTicket is one PSK identity of a probe.
type offeredTicket struct {
	ticket []byte
	age    uint32 // obfuscated_ticket_age
	psk    []byte // for the binder; nil: a garbage binder
}

// resumeHello returns the ClientHello record base+psk_key_exchange_modes
// (modes)+pre_shared_key offering tickets, binders computed over the
// truncated ClientHello. binderLen is the length of each binder (32 for
// SHA-256); corrupt flips a bit of the first real binder.
func resumeHello(base rawHello, modes []byte, tickets []offeredTicket, binders int, binderLen int, corrupt bool) []byte {
	return resumeHelloAfter(nil, base, modes, tickets, binders, binderLen, corrupt)
}

// resumeHelloAfter is resumeHello for a ClientHello that follows the
// messages in transcript: after a HelloRetryRequest, message_hash of the
// first ClientHello and the HelloRetryRequest (RFC 8446, Section 4.2.11.2).
func resumeHelloAfter(transcript []byte, base rawHello, modes []byte, tickets []offeredTicket, binders int, binderLen int, corrupt bool) []byte {
	ids := make([]pskIdentity, len(tickets))
	for i, t := range tickets {
		ids[i] = pskIdentity{identity: t.ticket, obfuscatedTicketAge: t.age}
	}
	build := func(binderList [][]byte) rawHello {
		return base.with(rawExt{xPSKModes, append([]byte{byte(len(modes))}, modes...)}).with(rawExt{xPreSharedKey, pskExtension(ids, binderList)})
	}
	placeholder := make([][]byte, binders)
	for i := range placeholder {
		placeholder[i] = bytes.Repeat([]byte{0xbb}, binderLen)
	}
	msg := build(placeholder).message()
	bindersLen := 2 + binders*(1+binderLen)
	truncated := msg[:len(msg)-bindersLen]
	real := make([][]byte, binders)
	corrupted := false
	for i := range real {
		real[i] = placeholder[i]
		if i < len(tickets) && tickets[i].psk != nil {
			real[i] = rfcBinder(tickets[i].psk, slices.Concat(transcript, truncated))[:min(32, binderLen)]
			real[i] = append(real[i], make([]byte, binderLen-len(real[i]))...)
			if corrupt && !corrupted {
				real[i][0] ^= 1
				corrupted = true
			}
		}
	}
	return build(real).record()
}

// probeTicket seals a TLS 1.3 ticket for p256.example.com and ALPN h2
// (probeConfig's), created age ago, and returns it with its PSK and the
// obfuscated age a client would send now.
func probeTicket(t testing.TB, cfg *Config, age time.Duration, edit func(ts *ticketState)) offeredTicket {
	t.Helper()
	psk := bytes.Repeat([]byte{0x5a}, 32)
	ts := &ticketState{vers: tls.VersionTLS13, suite: tls.TLS_AES_128_GCM_SHA256, created: time.Now().Add(-age),
		ageAdd: 0x01020304, secret: bytes.Clone(psk), ems: true, serverName: "p256.example.com", alpn: "h2"}
	if edit != nil {
		edit(ts)
	}
	plaintext := ts.marshal()
	ticket, err := cfg.Tickets.Seal(context.Background(), plaintext)
	require.NoError(t, err)
	return offeredTicket{ticket: ticket, age: uint32(age/time.Millisecond) + ts.ageAdd, psk: psk}
}

func TestProbeResumptionTLS13(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(7)
	good := probeTicket(t, &cfg, 3*time.Second, nil)
	unknown := offeredTicket{ticket: []byte("a ticket from elsewhere"), age: 1}
	dhe, ke, both := []byte{pskModeDHEKE}, []byte{pskModeKE}, []byte{pskModeKE, pskModeDHEKE}
	base := hello13()
	tests := []struct {
		name     string
		cfg      *Config
		hello    []byte
		identity int    // selected identity, -1 for a full handshake
		why      string // in the trace of a full handshake
	}{
		// RFC 8446, Section 4.2.11: the server selects an identity and says
		// which in its ServerHello; Section 2.2: no Certificate follows.
		{"4.2.11 valid ticket and binder: identity 0 selected", &cfg, resumeHello(base, dhe, []offeredTicket{good}, 1, 32, false), 0, ""},
		{"4.2.11 unknown then valid ticket: identity 1 selected", &cfg,
			resumeHello(base, dhe, []offeredTicket{unknown, good}, 2, 32, false), 1, ""},
		// Section 4.2.9: the server must not pick a mode the client did not
		// list; psk_ke alone (no forward secrecy) is not resumed.
		{"4.2.9 psk_ke only: full handshake", &cfg, resumeHello(base, ke, []offeredTicket{good}, 1, 32, false), -1, "refused: psk_dhe_ke not offered"},
		{"4.2.9 psk_ke and psk_dhe_ke: resumed with psk_dhe_ke", &cfg, resumeHello(base, both, []offeredTicket{good}, 1, 32, false), 0, ""},
		// Unknown modes (IANA assigns only 0 and 1) are ignored, not
		// refused.
		{"4.2.9 unknown modes and psk_dhe_ke: resumed", &cfg, resumeHello(base, []byte{0x7f, pskModeDHEKE, 0xff}, []offeredTicket{good}, 1, 32, false), 0, ""},
		{"4.2.9 unknown modes only: full handshake", &cfg, resumeHello(base, []byte{0x02, 0xff}, []offeredTicket{good}, 1, 32, false), -1, "refused: psk_dhe_ke not offered"},
		// Section 9.2: with pre_shared_key, signature_algorithms may be left
		// out; the handshake then needs the resumption.
		{"9.2 no signature_algorithms, valid ticket: resumed", &cfg,
			resumeHello(base.without(xSignatureAlgs), dhe, []offeredTicket{good}, 1, 32, false), 0, ""},
		{"4.2.11 unknown ticket: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{unknown}, 1, 32, false), -1, "refused: ticket does not open"},
		{"4.6.1 TLS 1.2 ticket: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{probeTicket(t, &cfg, time.Second, func(ts *ticketState) {
			ts.vers = tls.VersionTLS12
		})}, 1, 32, false), -1, "refused: ticket of another TLS version"},
		{"4.6.1 obfuscated age past the lifetime: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{{ticket: good.ticket,
			age: uint32((maxTicketLifetime+time.Second)/time.Millisecond) + 0x01020304, psk: good.psk}}, 1, 32, false), -1, "refused: ticket age beyond its lifetime"},
		// Section 4.2.11: the age the client computes (obfuscated age minus
		// ticket_age_add) must agree with the server's view of it.
		{"4.2.11 obfuscated age ten minutes older than the ticket: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{{ticket: good.ticket,
			age: uint32((10*time.Minute)/time.Millisecond) + 0x01020304, psk: good.psk}}, 1, 32, false), -1, "refused: obfuscated_ticket_age does not match the ticket"},
		// An age sent without ticket_age_add: minus it, modulo 2^32, it is
		// weeks.
		{"4.2.11 obfuscated age without ticket_age_add: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{{ticket: good.ticket,
			age: 3000, psk: good.psk}}, 1, 32, false), -1, "refused: ticket age beyond its lifetime"},
		// Section 4.6.1: "Servers MUST NOT use any value greater than
		// 604800 seconds (7 days)", whatever age the client claims.
		{"4.6.1 ticket created 8 days ago, young obfuscated age: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{func() offeredTicket {
			old := probeTicket(t, &cfg, 8*24*time.Hour, nil)
			old.age = 1000 + 0x01020304
			return old
		}()}, 1, 32, false), -1, "refused: ticket expired"},
		{"4.6.1 ticket for another ALPN protocol: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{probeTicket(t, &cfg, time.Second, func(ts *ticketState) {
			ts.alpn = "http/1.1"
		})}, 1, 32, false), -1, "refused: ticket for another ALPN protocol"},
		{"4.6.1 server_name differs from the ticket's: full handshake", &cfg,
			resumeHello(base.replace(extSNI("x.p256.example.net")), dhe, []offeredTicket{good}, 1, 32, false), -1, "refused: ticket for another server name"},
		{"4.6.1 server_name in another case: resumed", &cfg,
			resumeHello(base.replace(extSNI("P256.Example.COM")), dhe, []offeredTicket{good}, 1, 32, false), 0, ""},
		{"4.6.1 SHA-384 ticket offered for a SHA-256 suite: full handshake", &cfg, resumeHello(base, dhe, []offeredTicket{probeTicket(t, &cfg, time.Second, func(ts *ticketState) {
			ts.suite = tls.TLS_AES_256_GCM_SHA384
		})}, 1, 32, false), -1, "refused: ticket for a cipher suite with another hash"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := NewHandshake(tc.cfg)
			require.NoError(t, err)
			keys := KeyOps(getPKI(t).keys)
			if tc.identity >= 0 {
				keys = noKeyOps // a resumption asks KeyOps nothing
			}
			res := h.Step(context.Background(), keys, tc.hello)
			require.Equal(t, NeedInput, res.State, "%s: %s\n%s", res.AlertDescription, res.Reason, traceText(res.Trace))
			msgs, _ := plaintextMessages(t, res.Output)
			sh := parseServerHello(t, msgs[0])
			selected, ok := sh.ext(xPreSharedKey)
			trace := traceText(res.Trace)
			if tc.identity < 0 {
				assert.False(t, ok, "pre_shared_key in the ServerHello of a full handshake")
				assert.Contains(t, trace, "sent Certificate")
				assert.Contains(t, trace, "resumption="+tc.why)
				return
			}
			require.True(t, ok, "no pre_shared_key in the ServerHello\n%s", trace)
			assert.Equal(t, []byte{0, byte(tc.identity)}, selected)
			assert.NotContains(t, trace, "Certificate")
			assert.True(t, h.resumed)
		})
	}
}

// TestProbeResumptionAlerts: what aborts a handshake that offers a ticket.
func TestProbeResumptionAlerts(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(7)
	good := probeTicket(t, &cfg, time.Second, nil)
	dhe := []byte{pskModeDHEKE}
	base := hello13()
	unknown := offeredTicket{ticket: []byte("a ticket from elsewhere"), age: 1}
	tests := []struct {
		name  string
		hello []byte
		want  Alert
	}{
		// RFC 8446, Section 4.2.11: "If this value is not present or does
		// not validate, the server MUST abort the handshake."
		{"4.2.11 wrong binder is decrypt_error", resumeHello(base, dhe, []offeredTicket{good}, 1, 32, true), alertDecryptError},
		{"4.2.11 binder longer than the hash is decrypt_error", resumeHello(base, dhe, []offeredTicket{good}, 1, 48, false), alertDecryptError},
		{"4.2.11 wrong binder after an unknown ticket is decrypt_error", resumeHello(base, dhe, []offeredTicket{unknown, good}, 2, 32, true), alertDecryptError},
		{"4.2.11 fewer binders than identities is illegal_parameter", resumeHello(base, dhe, []offeredTicket{good, unknown}, 1, 32, false), alertIllegalParameter},
		{"4.2.11 more binders than identities is illegal_parameter", resumeHello(base, dhe, []offeredTicket{good}, 2, 32, false), alertIllegalParameter},
		// Section 4.2.9 and 4.2.11, with a ticket that would resume.
		{"4.2.9 valid ticket without psk_key_exchange_modes is missing_extension",
			base.with(pskOffer(good.ticket, bytes.Repeat([]byte{7}, 32))).record(), alertMissingExtension},
		{"4.2.11 valid ticket, pre_shared_key not last is illegal_parameter",
			base.with(pskModesDHE).with(pskOffer(good.ticket, bytes.Repeat([]byte{7}, 32))).with(rawExt{0x1a1a, nil}).record(), alertIllegalParameter},
		// Section 9.2 lets a PSK offer leave signature_algorithms out; when
		// nothing resumes, the server authenticates with a certificate and
		// Section 4.2.3 has it abort with missing_extension.
		{"4.2.3 no signature_algorithms and an unknown ticket is missing_extension",
			resumeHello(base.without(xSignatureAlgs), dhe, []offeredTicket{unknown}, 1, 32, false), alertMissingExtension},
		{"4.2.3 no signature_algorithms and a psk_ke-only offer is missing_extension",
			resumeHello(base.without(xSignatureAlgs), []byte{pskModeKE}, []offeredTicket{good}, 1, 32, false), alertMissingExtension},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := stepHello(t, &cfg, tc.hello)
			expectAlert(t, res, tc.want)
		})
	}
}

// TestProbeResumptionEarlyDataSkipped: a resuming ClientHello with
// early_data, followed by 0-RTT records: the server resumes, does not
// accept the early data (no early_data in its EncryptedExtensions) and
// skips those records, which it cannot open (RFC 8446, Section 4.2.10).
func TestProbeResumptionEarlyDataSkipped(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(7)
	good := probeTicket(t, &cfg, time.Second, nil)
	in := resumeHello(hello13().with(extEarlyData), []byte{pskModeDHEKE}, []offeredTicket{good}, 1, 32, false)
	for range 3 {
		in = append(in, rawRecord(byte(record.ApplicationData), bytes.Repeat([]byte{0xee}, 200)...)...)
	}
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	res := h.Step(context.Background(), noKeyOps, in)
	require.Equal(t, NeedInput, res.State, res.Reason)
	assert.True(t, h.resumed)
	assert.Equal(t, 3*200, h.skippedEarlyData)
	assert.Contains(t, traceText(res.Trace), "early_data=offered (refused)")
	// Section 5.1: a plaintext record stays within 2^14 bytes while
	// protected-size 0-RTT records are skipped.
	expectAlert(t, h.Step(context.Background(), noKeyOps, rawRecord(byte(record.Alert), make([]byte, record.MaxPlaintext+1)...)), alertRecordOverflow)
}

// messageHash is the message_hash that replaces the first ClientHello in
// the transcript after a HelloRetryRequest, RFC 8446, Section 4.4.1.
func messageHash(clientHello []byte) []byte {
	sum := sha256.Sum256(clientHello)
	return append([]byte{254, 0, 0, 32}, sum[:]...)
}

// TestProbeResumptionAfterHelloRetryRequest: after a HelloRetryRequest the
// binder of the second ClientHello covers message_hash(ClientHello1) and
// the HelloRetryRequest before the truncated ClientHello2 (RFC 8446,
// Section 4.2.11.2), and refused 0-RTT data between the ClientHellos is
// skipped, up to a limit (Section 4.2.10).
func TestProbeResumptionAfterHelloRetryRequest(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(7)
	cfg.Groups = []tls.CurveID{tls.CurveP256} // the hellos offer an X25519 share
	good := probeTicket(t, &cfg, time.Second, nil)
	dhe := []byte{pskModeDHEKE}
	second := hello13().replace(extKeyShare(shareP256))
	zeroRTT := rawRecord(byte(record.ApplicationData), bytes.Repeat([]byte{0xee}, 200)...)
	// retry steps the first ClientHello record first (and what follows
	// it), expects a HelloRetryRequest and returns the transcript the
	// second ClientHello's binder covers.
	retry := func(t *testing.T, first []byte, more ...[]byte) (*Handshake, []byte) {
		t.Helper()
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		res := h.Step(context.Background(), noKeyOps, slices.Concat(append([][]byte{first}, more...)...))
		require.Equal(t, NeedInput, res.State, "%s: %s", res.AlertDescription, res.Reason)
		msgs, _ := plaintextMessages(t, res.Output)
		require.Equal(t, helloRetryRandomRFC, parseServerHello(t, msgs[0]).random, "a HelloRetryRequest")
		return h, slices.Concat(messageHash(first[record.HeaderLen:]), msgs[0].raw)
	}
	expectResumed := func(t *testing.T, h *Handshake, res StepResult) {
		t.Helper()
		require.Equal(t, NeedInput, res.State, "%s: %s\n%s", res.AlertDescription, res.Reason, traceText(res.Trace))
		msgs, _ := plaintextMessages(t, res.Output)
		selected, ok := parseServerHello(t, msgs[0]).ext(xPreSharedKey)
		require.True(t, ok, "no pre_shared_key in the ServerHello\n%s", traceText(res.Trace))
		assert.Equal(t, []byte{0, 0}, selected)
		assert.True(t, h.resumed)
		assert.True(t, h.didHRR)
	}
	first := resumeHello(hello13(), dhe, []offeredTicket{good}, 1, 32, false)

	t.Run("4.2.11.2 binder over message_hash, HelloRetryRequest and the truncated second ClientHello: resumed", func(t *testing.T) {
		h, transcript := retry(t, first)
		expectResumed(t, h, h.Step(context.Background(), noKeyOps, resumeHelloAfter(transcript, second, dhe, []offeredTicket{good}, 1, 32, false)))
	})
	t.Run("4.2.11.2 binder over the second ClientHello alone is decrypt_error", func(t *testing.T) {
		h, _ := retry(t, first)
		expectAlert(t, h.Step(context.Background(), noKeyOps, resumeHello(second, dhe, []offeredTicket{good}, 1, 32, false)), alertDecryptError)
	})
	t.Run("4.2.11.2 binder over the HelloRetryRequest without message_hash is decrypt_error", func(t *testing.T) {
		h, transcript := retry(t, first)
		hrr := transcript[4+32:]
		expectAlert(t, h.Step(context.Background(), noKeyOps, resumeHelloAfter(hrr, second, dhe, []offeredTicket{good}, 1, 32, false)), alertDecryptError)
	})
	t.Run("4.2.11.2 binder over the whole first ClientHello instead of its hash is decrypt_error", func(t *testing.T) {
		h, transcript := retry(t, first)
		whole := slices.Concat(first[record.HeaderLen:], transcript[4+32:])
		expectAlert(t, h.Step(context.Background(), noKeyOps, resumeHelloAfter(whole, second, dhe, []offeredTicket{good}, 1, 32, false)), alertDecryptError)
	})

	// Section 4.2.10: after a HelloRetryRequest "The server then ignores
	// early data by skipping all records with an external content type of
	// "application_data" [...], up to the configured max_early_data_size."
	earlyFirst := resumeHello(hello13().with(extEarlyData), dhe, []offeredTicket{good}, 1, 32, false)
	t.Run("4.2.10 0-RTT records before the second ClientHello are skipped, then it resumes", func(t *testing.T) {
		h, transcript := retry(t, earlyFirst, zeroRTT, zeroRTT, zeroRTT)
		assert.Equal(t, 3*200, h.skippedEarlyData)
		res := h.Step(context.Background(), noKeyOps, slices.Concat(zeroRTT, resumeHelloAfter(transcript, second, dhe, []offeredTicket{good}, 1, 32, false)))
		expectResumed(t, h, res)
		assert.Equal(t, 4*200, h.skippedEarlyData)
	})
	t.Run("4.2.10 0-RTT past the limit before the second ClientHello is unexpected_message", func(t *testing.T) {
		h, _ := retry(t, earlyFirst)
		big := rawRecord(byte(record.ApplicationData), make([]byte, record.MaxCiphertextTLS13)...)
		var res StepResult
		for range maxSkippedEarlyData/len(big) + 1 {
			res = h.Step(context.Background(), noKeyOps, big)
		}
		expectAlert(t, res, alertUnexpectedMessage)
	})
	t.Run("4.2.10 application data after a HelloRetryRequest without early_data is unexpected_message", func(t *testing.T) {
		h, _ := retry(t, first)
		expectAlert(t, h.Step(context.Background(), noKeyOps, zeroRTT), alertUnexpectedMessage)
	})
	// The second ClientHello has no early_data (Section 4.2.10: "A client
	// MUST NOT include the "early_data" extension in its followup
	// ClientHello"): nothing is skipped after it, and a record that does not
	// open under the handshake keys is bad_record_mac (Section 5.2).
	t.Run("4.2.10 0-RTT record after the second ClientHello is bad_record_mac", func(t *testing.T) {
		h, transcript := retry(t, earlyFirst)
		res := h.Step(context.Background(), noKeyOps, resumeHelloAfter(transcript, second, dhe, []offeredTicket{good}, 1, 32, false))
		expectResumed(t, h, res)
		expectAlert(t, h.Step(context.Background(), noKeyOps, zeroRTT), alertBadRecordMAC)
	})
	// Section 5.1: TLSPlaintext.length "MUST NOT exceed 2^14 bytes",
	// also while records of the protected size (0-RTT) are skipped.
	t.Run("5.1 plaintext second ClientHello record over 2^14 bytes while skipping 0-RTT is record_overflow", func(t *testing.T) {
		h, transcript := retry(t, earlyFirst)
		hello := func(pad int) []byte { // padding, RFC 7685, before pre_shared_key
			return resumeHelloAfter(transcript, second.with(rawExt{21, make([]byte, pad)}), dhe, []offeredTicket{good}, 1, 32, false)
		}
		rec := hello(record.MaxPlaintext + 1 - (len(hello(0)) - record.HeaderLen))
		require.Len(t, rec, record.HeaderLen+record.MaxPlaintext+1)
		expectAlert(t, h.Step(context.Background(), noKeyOps, rec), alertRecordOverflow)
	})
	t.Run("5.1 change_cipher_spec record over 2^14 bytes while skipping 0-RTT is record_overflow", func(t *testing.T) {
		h, _ := retry(t, earlyFirst)
		expectAlert(t, h.Step(context.Background(), noKeyOps, rawRecord(20, make([]byte, record.MaxPlaintext+1)...)), alertRecordOverflow)
	})
	t.Run("4.2.10 early_data in the second ClientHello is illegal_parameter", func(t *testing.T) {
		h, transcript := retry(t, earlyFirst)
		expectAlert(t, h.Step(context.Background(), noKeyOps, resumeHelloAfter(transcript, second.with(extEarlyData), dhe, []offeredTicket{good}, 1, 32, false)), alertIllegalParameter)
	})
}

// TestProbeNewSessionTicketTLS13 reads the NewSessionTicket of a full
// handshake as a client does, under the server application traffic keys,
// and checks it against RFC 8446, Section 4.6.1 and the PSK against Section
// 7.1, derived here: PSK = HKDF-Expand-Label(resumption_master_secret,
// "resumption", ticket_nonce, Hash.length), resumption_master_secret =
// Derive-Secret(master_secret, "res master", ClientHello...client Finished).
func TestProbeNewSessionTicketTLS13(t *testing.T) {
	type issued struct {
		lifetime, ageAdd uint32
		nonce            []byte
		state            *ticketState
		psk              []byte // derived by the test
	}
	issue := func(t *testing.T, cfg Config) issued {
		t.Helper()
		c := dial13(t, cfg, hello13().with(pskModesDHE))
		fin := c.finished()
		c.transcript.Write(fin)
		_, err := c.conn.Write(c.seal(record.Handshake, fin))
		require.NoError(t, err)
		typ, body := c.readRecord()
		inner, pt, err := c.in.Open(typ, 0x0303, body)
		require.NoError(t, err, "the NewSessionTicket under the server application traffic keys")
		require.Equal(t, record.Handshake, inner)
		msgs := splitMessages(t, pt)
		require.Len(t, msgs, 1, "one NewSessionTicket")
		require.Equal(t, typeNewSessionTicket, msgs[0].typ)
		var got issued
		var nonce, ticket, exts cryptobyte.String
		s := cryptobyte.String(msgs[0].body)
		require.True(t, s.ReadUint32(&got.lifetime) && s.ReadUint32(&got.ageAdd) && s.ReadUint8LengthPrefixed(&nonce) &&
			s.ReadUint16LengthPrefixed(&ticket) && s.ReadUint16LengthPrefixed(&exts) && s.Empty(), "NewSessionTicket fields")
		require.NotEmpty(t, ticket, "opaque ticket<1..2^16-1>")
		assert.Empty(t, exts, "no early_data: 0-RTT is never accepted")
		got.nonce = slices.Clone(nonce)
		plaintext, err := cfg.Tickets.Open(context.Background(), ticket)
		require.NoError(t, err)
		got.state, err = parseTicketState(plaintext)
		require.NoError(t, err)
		resMaster := rfcExpandLabel(crypto.SHA256, c.master, "res master", c.transcript.Sum(nil), 32)
		got.psk = rfcExpandLabel(crypto.SHA256, resMaster, "resumption", got.nonce, 32)
		c.conn.Close()
		out := <-c.done
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		assert.Equal(t, uint64(1), out.session.ServerSeq, "the NewSessionTicket took record 0")
		return got
	}
	cfg := probeConfig(t)
	cfg.Tickets = newAEADTicketKeys(7)
	a, b := issue(t, cfg), issue(t, cfg)
	for _, tk := range []issued{a, b} {
		// "Servers MUST NOT use any value greater than 604800 seconds (7
		// days)"; the default is the maximum.
		assert.Equal(t, uint32(604800), tk.lifetime)
		assert.Equal(t, tk.ageAdd, tk.state.ageAdd, "the server checks ages with the ticket_age_add it sent")
		assert.Equal(t, tk.psk, tk.state.secret, "Section 7.1: the ticket's PSK")
		assert.Equal(t, uint16(tls.VersionTLS13), tk.state.vers)
		assert.Equal(t, uint16(tls.TLS_AES_128_GCM_SHA256), tk.state.suite)
		assert.Equal(t, "p256.example.com", tk.state.serverName)
		assert.Equal(t, "h2", tk.state.alpn)
	}
	// "The server MUST generate a fresh value [of ticket_age_add] for each
	// ticket it sends"; each connection's PSK is its own.
	assert.NotEqual(t, a.ageAdd, b.ageAdd)
	assert.NotEqual(t, a.psk, b.psk)

	cfg.TicketLifetime = 36 * time.Hour
	assert.Equal(t, uint32(36*3600), issue(t, cfg).lifetime, "ticket_lifetime is the configured lifetime, in seconds")
}

// FuzzResumptionTLS13 mutates the extensions, the obfuscated age and the
// modes of a ClientHello offering a ticket that opens, and always gives it
// a binder that verifies, so that mutations reach what follows the binder
// check: ticket fit, HelloRetryRequest with a PSK (the second ClientHello
// comes from next, its binder recomputed over the retry's transcript), and
// the resumed flight. The state is saved and restored in between. The
// engine must wait or fail cleanly, never complete, panic or call KeyOps on
// a resumption (noKeyOps fails every call).
func FuzzResumptionTLS13(f *testing.F) {
	cfg := probeConfig(f)
	cfg.Tickets = newAEADTicketKeys(7)
	cfg.Groups = []tls.CurveID{tls.CurveP256} // an X25519 share gets a HelloRetryRequest
	good := probeTicket(f, &cfg, time.Second, nil)
	block := func(h rawHello) []byte { return h.withBlock() }
	base := hello13()
	f.Add(block(base), good.age, []byte{pskModeDHEKE}, block(base.replace(extKeyShare(shareP256))))
	f.Add(block(base.with(extEarlyData)), good.age, []byte{pskModeKE, pskModeDHEKE}, block(base.replace(extKeyShare(shareP256))))
	f.Add(block(base.replace(extKeyShare(shareP256))), good.age, []byte{pskModeDHEKE}, []byte(nil))
	f.Add(block(base.without(xSignatureAlgs)), good.age+5000, []byte{pskModeDHEKE}, block(base))
	f.Fuzz(func(t *testing.T, exts []byte, age uint32, modes []byte, next []byte) {
		if len(modes) == 0 || len(modes) > 255 {
			return
		}
		first, ok := parseRawExts(exts)
		second, ok2 := parseRawExts(next)
		if !ok || !ok2 {
			return
		}
		offer := []offeredTicket{{ticket: good.ticket, age: age, psk: good.psk}}
		hello1 := rawHello{legacyVersion: 0x0303, random: rawRandom, suites: suitesTLS13, compression: nullCompression, exts: first}
		rec := resumeHello(hello1, modes, offer, 1, 32, false)
		if len(rec) > record.HeaderLen+record.MaxPlaintext {
			return
		}
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		ctx := context.Background()
		res := h.Step(ctx, noKeyOps, rec)
		if fuzzedStepFailed(t, res, rec) {
			return
		}
		if !h.didHRR {
			assert.True(t, h.resumed, "a full handshake without a KeyOps call")
			return
		}
		msgs, _ := plaintextMessages(t, res.Output)
		transcript := slices.Concat(messageHash(rec[record.HeaderLen:]), msgs[0].raw)
		saved, err := h.MarshalBinary()
		require.NoError(t, err)
		h, err = RestoreHandshake(&cfg, saved)
		require.NoError(t, err, "restoring a state the engine saved")
		hello2 := hello1
		hello2.exts = second
		rec = resumeHelloAfter(transcript, hello2, modes, offer, 1, 32, false)
		if fuzzedStepFailed(t, h.Step(ctx, noKeyOps, rec), rec) {
			return
		}
		assert.True(t, h.resumed, "a full handshake without a KeyOps call")
	})
}

// parseRawExts reads an extensions block without its length prefix.
func parseRawExts(block []byte) ([]rawExt, bool) {
	s := cryptobyte.String(block)
	var exts []rawExt
	for !s.Empty() {
		var e rawExt
		if !s.ReadUint16(&e.typ) || !s.ReadUint16LengthPrefixed((*cryptobyte.String)(&e.data)) {
			return nil, false
		}
		exts = append(exts, e)
	}
	return exts, true
}
