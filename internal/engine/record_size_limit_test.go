package engine

import (
	"context"
	"crypto/tls"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The record_size_limit extension, RFC 8449, in real handshakes with the
// engine: tlsfuzzer's test-record-size-limit.py, as far as the engine
// writes records.

const xRecordSizeLimit = 28

// u16 is v as it goes on the wire.
func u16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// extRecordSizeLimit is a record_size_limit extension of value v.
func extRecordSizeLimit(v uint16) rawExt { return rawExt{xRecordSizeLimit, u16(v)} }

// recordSizeLimitValues are client limits from the smallest allowed to the
// largest a uint16 holds, and what the server may then put in a TLS 1.3
// record's TLSInnerPlaintext (RFC 8449, Section 4: the limit counts the
// content type; above 2^14+1 it counts as 2^14+1).
var recordSizeLimitValues = []struct {
	limit uint16
	inner int
}{
	{64, 64},
	{65, 65},
	{100, 100},
	{1000, 1000},
	{1 << 14, 1 << 14},
	{1<<14 + 1, 1<<14 + 1},
	{1<<14 + 2, 1<<14 + 1},
	{1<<16 - 1, 1<<14 + 1},
}

// eeExtensions is the extensions of an EncryptedExtensions message.
func eeExtensions(t *testing.T, m serverMsg) helloFields {
	t.Helper()
	require.Equal(t, typeEncryptedExtensions, m.typ)
	s := cryptobyte.String(m.body)
	f := helloFields{exts: parseExtensions(t, &s)}
	require.True(t, s.Empty(), "data after the EncryptedExtensions")
	return f
}

// TestRecordSizeLimitTLS13 is RFC 8449, Section 4 in TLS 1.3: the server
// answers in EncryptedExtensions with 2^14+1, never in the ServerHello, and
// every protected record it writes (EncryptedExtensions to Finished, which
// a 1 KiB certificate chain spreads over many records at the smallest
// limits, and the NewSessionTicket) has a TLSInnerPlaintext within the
// client's limit; the session reports what the caller may put in a record.
func TestRecordSizeLimitTLS13(t *testing.T) {
	p := getPKI(t)
	cfg := ticketConfig(newAEADTicketKeys(1), p.p256)
	cfg.NextProtos = []string{"h2"}
	for _, v := range recordSizeLimitValues {
		t.Run("record_size_limit "+strconv.Itoa(int(v.limit)), func(t *testing.T) {
			c := dial13(t, cfg, hello13().with(pskModesDHE).with(extRecordSizeLimit(v.limit)))
			flight := 0 // TLSInnerPlaintext bytes of the server's flight
			for _, n := range c.protected {
				flight += n - 16
			}
			_, ok := c.hello.ext(xRecordSizeLimit)
			assert.False(t, ok, "record_size_limit in the TLS 1.3 ServerHello (RFC 8449, Section 4: in EncryptedExtensions)")
			limit, ok := eeExtensions(t, c.serverMsgs[0]).ext(xRecordSizeLimit)
			assert.True(t, ok, "no record_size_limit in the EncryptedExtensions")
			assert.Equal(t, u16(1<<14+1), limit, "the server's limit: 2^14 and the content type")

			alert, res := c.send(c.seal(record.Handshake, c.finished()))
			require.Nil(t, alert, "alert %v: %s", alertName(alert), res.Reason)
			require.Equal(t, Complete, res.State, res.Reason)
			s := c.outcome.session
			require.NotNil(t, s)
			assert.Equal(t, v.inner-1, s.RecordPlaintextLimit, "plaintext a record of the caller's may carry")
			assert.NotZero(t, s.ServerSeq, "a NewSessionTicket went out")
			// Each protected record: TLSInnerPlaintext and the 16-byte tag
			// (the engine pads nothing).
			require.NotEmpty(t, c.protected)
			for i, n := range c.protected {
				assert.LessOrEqual(t, n-16, v.inner, "record %d of %d", i, len(c.protected))
			}
			if flight > v.inner {
				// Split, the flight fills its first record to the limit.
				assert.Equal(t, v.inner+16, c.protected[0], "the first record of a flight over the limit")
			}
			assert.Equal(t, strconv.Itoa(int(v.limit)), traceField(c.outcome.trace, Received, "ClientHello", "record_size_limit"))
			assert.Equal(t, "16385", traceField(c.outcome.trace, Sent, "EncryptedExtensions", "record_size_limit"))
		})
	}
	t.Run("resumption answers the limit anew", func(t *testing.T) {
		// RFC 8449, Section 4: "During renegotiation or resumption, the
		// record size limit is renegotiated."
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		hello := resumeHello(hello13().with(extRecordSizeLimit(64)), []byte{pskModeDHEKE}, []offeredTicket{probeTicket(t, &cfg, time.Second, nil)}, 1, 32, false)
		res := h.Step(context.Background(), noKeyOps, hello)
		require.Equal(t, NeedInput, res.State, res.Reason)
		require.True(t, h.resumed)
		assert.Equal(t, "16385", traceField(res.Trace, Sent, "EncryptedExtensions", "record_size_limit"))
		assert.Equal(t, 63, h.maxFragment(), "what the NewSessionTicket and the edge's records may carry")
	})
	t.Run("no record_size_limit, no answer", func(t *testing.T) {
		expectNoAnswer13(t, cfg, hello13().with(pskModesDHE))
	})
}

// expectNoAnswer13 runs a TLS 1.3 handshake of hello and checks that the
// server answers no record_size_limit and leaves records at 2^14.
func expectNoAnswer13(t *testing.T, cfg Config, hello rawHello) {
	t.Helper()
	c := dial13(t, cfg, hello)
	_, ok := eeExtensions(t, c.serverMsgs[0]).ext(xRecordSizeLimit)
	assert.False(t, ok, "record_size_limit in the EncryptedExtensions")
	alert, res := c.send(c.seal(record.Handshake, c.finished()))
	require.Nil(t, alert, "alert %v: %s", alertName(alert), res.Reason)
	require.NotNil(t, c.outcome.session)
	assert.Equal(t, record.MaxPlaintext, c.outcome.session.RecordPlaintextLimit)
	assert.Empty(t, traceField(c.outcome.trace, Sent, "EncryptedExtensions", "record_size_limit"))
}

// TestRecordSizeLimitTLS12 is RFC 8449, Section 4 in TLS 1.2: the server
// answers in the ServerHello with 2^14, in a full handshake and in a
// resumption (the limit is negotiated anew), and the session reports the
// client's limit, which in TLS 1.2 is the plaintext alone.
func TestRecordSizeLimitTLS12(t *testing.T) {
	cfg := probeConfig(t)
	for _, v := range recordSizeLimitValues {
		t.Run("record_size_limit "+strconv.Itoa(int(v.limit)), func(t *testing.T) {
			c := dial12Hello(t, cfg, hello12().with(extRecordSizeLimit(v.limit)))
			limit, ok := c.hello.ext(xRecordSizeLimit)
			assert.True(t, ok, "no record_size_limit in the ServerHello")
			assert.Equal(t, u16(1<<14), limit, "the server's limit: 2^14")
			alert, out := c.send(slices.Concat(rawRecord(20, 1), c.seal(record.Handshake, c.finished())))
			require.Nil(t, alert, "alert %v", alertName(alert))
			require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
			assert.Equal(t, min(int(v.limit), 1<<14), out.session.RecordPlaintextLimit)
			assert.Equal(t, "16384", traceField(out.trace, Sent, "ServerHello", "record_size_limit"))
		})
	}
	t.Run("no record_size_limit, no answer", func(t *testing.T) {
		c := dial12(t, cfg)
		_, ok := c.hello.ext(xRecordSizeLimit)
		assert.False(t, ok, "record_size_limit in the ServerHello, not asked for")
		_, out := c.send(slices.Concat(rawRecord(20, 1), c.seal(record.Handshake, c.finished())))
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		assert.Equal(t, record.MaxPlaintext, out.session.RecordPlaintextLimit)
	})
	t.Run("resumption answers the limit anew", func(t *testing.T) {
		now := time.UnixMilli(time.Now().UnixMilli())
		cfg := ticketConfig(newAEADTicketKeys(1), getPKI(t).p256)
		cfg.NextProtos = []string{"h2"}
		cfg.Time = func() time.Time { return now }
		ts := probeTicketState(now)
		r := dialResume12(t, cfg, resumeHello12(sealProbeTicket(t, cfg.Tickets, ts)).with(extRecordSizeLimit(64)), slices.Clone(ts.secret))
		limit, ok := r.hello.ext(xRecordSizeLimit)
		assert.True(t, ok, "no record_size_limit in the resumed ServerHello")
		assert.Equal(t, u16(1<<14), limit)
		_, out := r.finish(t, nil)
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		assert.True(t, out.session.Resumed)
		assert.Equal(t, 64, out.session.RecordPlaintextLimit)
	})
}

// TestRecordSizeLimitRefused: RFC 8449, Section 4, "An endpoint MUST treat
// receipt of a smaller value [than 64] as a fatal error and generate an
// "illegal_parameter" alert"; a body that is not one uint16 does not
// decode (RFC 8446, Section 6.2: decode_error).
func TestRecordSizeLimitRefused(t *testing.T) {
	cfg := probeConfig(t)
	cases := []struct {
		name string
		data []byte
		want Alert
	}{
		{"63 is illegal_parameter", []byte{0, 63}, alertIllegalParameter},
		{"0 is illegal_parameter", []byte{0, 0}, alertIllegalParameter},
		{"an empty body is decode_error", nil, alertDecodeError},
		{"a 1-byte body is decode_error", []byte{64}, alertDecodeError},
		{"a 3-byte body is decode_error", []byte{0, 64, 0}, alertDecodeError},
	}
	for _, tc := range cases {
		for vers, hello := range map[string]rawHello{"TLS 1.2": hello12(), "TLS 1.3": hello13()} {
			t.Run(vers+" "+tc.name, func(t *testing.T) {
				expectProbeAlert(t, probeHello(t, cfg, hello.with(rawExt{xRecordSizeLimit, tc.data}).record()), tc.want)
			})
		}
	}
}

// TestRecordSizeLimitHelloRetryRequest: RFC 8446, Section 4.1.2, the
// second ClientHello keeps the first's extensions but for key_share,
// early_data, cookie, pre_shared_key and padding, so a record_size_limit
// changed, dropped or added is illegal_parameter (tlsfuzzer's "modified
// extension in 2nd CH in HRR handshake" and its kin); kept, the flight
// after the HelloRetryRequest answers it.
func TestRecordSizeLimitHelloRetryRequest(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Groups = []tls.CurveID{tls.CurveP256}
	with := hello13().with(extRecordSizeLimit(1<<14 + 1))
	without := hello13()
	second := func(h rawHello) []byte { return h.replace(extKeyShare(shareP256)).record() }
	for _, tc := range []struct {
		name          string
		first, second []byte
	}{
		{"changed", with.record(), second(with.replace(extRecordSizeLimit(1 << 14)))},
		{"dropped", with.record(), second(without)},
		{"added", without.record(), second(with)},
	} {
		t.Run(tc.name+" in the second ClientHello is illegal_parameter", func(t *testing.T) {
			expectProbeAlert(t, probe(t, cfg, slices.Concat(tc.first, tc.second)), alertIllegalParameter)
		})
	}
	t.Run("kept in the second ClientHello is answered", func(t *testing.T) {
		res := probeWith(t, cfg, slices.Concat(with.record(), second(with)), 2)
		msgs, _ := plaintextMessages(t, res.received)
		require.Len(t, msgs, 2, "HelloRetryRequest and ServerHello")
		for _, m := range msgs {
			_, ok := parseServerHello(t, m).ext(xRecordSizeLimit)
			assert.False(t, ok, "record_size_limit in a HelloRetryRequest or TLS 1.3 ServerHello")
		}
		assert.Equal(t, "16385", traceField(res.engine.Trace, Sent, "EncryptedExtensions", "record_size_limit"))
	})
}

// TestRecordSizeLimitSaved: a handshake saved after the ClientHello keeps
// the client's limit (state codec version 5); one without the extension is
// saved as version 4, as the previous release wrote it, and reads as no
// limit. So is one whose client's limit, once answered, leaves records at
// 2^14 (GnuTLS and Firefox send the protocol's maximum): during a rolling
// upgrade its next step may go to a replica of the previous release, which
// reads only version 4. Waiting for the second ClientHello, the limit is
// kept whatever it is: it is still to be answered and compared.
func TestRecordSizeLimitSaved(t *testing.T) {
	p := getPKI(t)
	cfg := probeConfig(t)
	hrr := probeConfig(t)
	hrr.Groups = []tls.CurveID{tls.CurveP256}
	for _, tc := range []struct {
		cfg     *Config
		hello   rawHello
		version byte
		limit   int
	}{
		{&cfg, hello13().with(extRecordSizeLimit(100)), stateCodecVersion, 99},
		{&cfg, hello12().with(extRecordSizeLimit(100)), stateCodecVersion, 100},
		{&cfg, hello13(), stateCodecNoRecordLimit, record.MaxPlaintext},
		{&cfg, hello13().with(extRecordSizeLimit(1<<14 + 1)), stateCodecNoRecordLimit, record.MaxPlaintext},
		{&cfg, hello13().with(extRecordSizeLimit(1<<16 - 1)), stateCodecNoRecordLimit, record.MaxPlaintext},
		{&cfg, hello13().with(extRecordSizeLimit(1 << 14)), stateCodecVersion, 1<<14 - 1},
		{&cfg, hello12().with(extRecordSizeLimit(1 << 14)), stateCodecNoRecordLimit, record.MaxPlaintext},
		{&hrr, hello13().with(extRecordSizeLimit(1<<14 + 1)), stateCodecVersion, record.MaxPlaintext},
	} {
		cfg := *tc.cfg
		h, err := NewHandshake(&cfg)
		require.NoError(t, err)
		res := h.Step(context.Background(), p.keys, tc.hello.record())
		require.Equal(t, NeedInput, res.State, res.Reason)
		saved, err := h.MarshalBinary()
		require.NoError(t, err)
		assert.Equal(t, tc.version, saved[0], "codec version")
		restored, err := RestoreHandshake(&cfg, saved)
		require.NoError(t, err)
		assert.Equal(t, tc.limit, restored.maxFragment())
		if tc.version == stateCodecNoRecordLimit {
			// Read as version 5, the same bytes would take what follows
			// for a limit: refused, not misread.
			saved[0] = stateCodecVersion
			_, err = RestoreHandshake(&cfg, saved)
			assert.ErrorIs(t, err, errBadState)
		}
	}
}

// TestRecordSizeLimitHelloRetryRequestAcrossReleases: in a rolling upgrade
// a replica of the previous release, which knew nothing of
// record_size_limit, may send the HelloRetryRequest and save the state, and
// a replica of this release take the second ClientHello. That state is
// codec version 4, with no limit and a fingerprint of the first ClientHello
// that leaves the extension out; a second ClientHello that keeps the
// extension, as RFC 8446, Section 4.1.2 has it, is accepted, and its limit
// answered and kept to.
func TestRecordSizeLimitHelloRetryRequestAcrossReleases(t *testing.T) {
	p := getPKI(t)
	cfg := probeConfig(t)
	cfg.Groups = []tls.CurveID{tls.CurveP256}
	with := hello13().with(extRecordSizeLimit(100))
	_, old := stepHello(t, &cfg, with.record())
	_, without := stepHello(t, &cfg, hello13().record())
	require.Equal(t, state13SecondClientHello, old.state)
	// What the previous release saved: no limit, its fingerprint (that of
	// the same ClientHello without the extension), only the flags it had.
	old.recordLimit, old.hrrHello = 0, without.hrrHello
	saved, err := old.MarshalBinary()
	require.NoError(t, err)
	require.Equal(t, byte(stateCodecNoRecordLimit), saved[0])
	saved[2] &= byte((flagIssueTicket<<1 - 1) >> 8)
	restored, err := RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	// Half the second ClientHello first, so that this release saves the
	// state still waiting for it, and another replica takes the rest.
	second := with.replace(extKeyShare(shareP256)).record()
	res := restored.Step(context.Background(), p.keys, second[:len(second)/2])
	require.Equal(t, NeedInput, res.State, res.Reason)
	saved, err = restored.MarshalBinary()
	require.NoError(t, err)
	restored, err = RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	res = restored.Step(context.Background(), p.keys, second[len(second)/2:])
	require.Equal(t, NeedInput, res.State, res.Reason)
	assert.Equal(t, "16385", traceField(res.Trace, Sent, "EncryptedExtensions", "record_size_limit"))
	assert.Equal(t, 99, restored.maxFragment(), "the limit of the second ClientHello")
	_, rest := plaintextMessages(t, res.Output)
	for len(rest) > 0 {
		_, _, body, n, err := record.Parse(rest, record.MaxCiphertextTLS13)
		require.NoError(t, err)
		require.NotZero(t, n)
		assert.LessOrEqual(t, len(body)-16, 100, "TLSInnerPlaintext of a protected record")
		rest = rest[n:]
	}

	// Saved by this release, the same state without the limit is no
	// longer taken for the previous release's: adding the extension in
	// the second ClientHello stays illegal_parameter.
	saved, err = without.MarshalBinary()
	require.NoError(t, err)
	restored, err = RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	res = restored.Step(context.Background(), p.keys, with.replace(extKeyShare(shareP256)).record())
	require.Equal(t, Failed, res.State)
	assert.Equal(t, alertIllegalParameter, res.AlertDescription, res.Reason)

	// The previous release's state, and a limit below 64 in the second
	// ClientHello, where this release checks it first.
	saved, err = without.MarshalBinary()
	require.NoError(t, err)
	saved[2] &= byte((flagIssueTicket<<1 - 1) >> 8)
	restored, err = RestoreHandshake(&cfg, saved)
	require.NoError(t, err)
	res = restored.Step(context.Background(), p.keys, hello13().with(extRecordSizeLimit(63)).replace(extKeyShare(shareP256)).record())
	require.Equal(t, Failed, res.State)
	assert.Equal(t, alertIllegalParameter, res.AlertDescription, res.Reason)
}

// TestRecordSizeLimitWithMaxFragmentLength is RFC 8449, Section 5: "A
// server that supports the "record_size_limit" extension MUST ignore a
// "max_fragment_length" that appears in a ClientHello if both extensions
// appear." A client that sends both (GnuTLS does, for a limit that
// max_fragment_length can express) gets record_size_limit answered and
// kept to, and no max_fragment_length (RFC 6066, Section 4) in either
// version.
func TestRecordSizeLimitWithMaxFragmentLength(t *testing.T) {
	const xMaxFragmentLength = 1
	mfl := rawExt{xMaxFragmentLength, []byte{1}} // 2^9
	cfg := probeConfig(t)
	t.Run("TLS 1.3", func(t *testing.T) {
		c := dial13(t, cfg, hello13().with(pskModesDHE).with(mfl).with(extRecordSizeLimit(1000)))
		ee := eeExtensions(t, c.serverMsgs[0])
		_, ok := ee.ext(xMaxFragmentLength)
		assert.False(t, ok, "max_fragment_length in the EncryptedExtensions")
		limit, _ := ee.ext(xRecordSizeLimit)
		assert.Equal(t, u16(1<<14+1), limit)
		alert, res := c.send(c.seal(record.Handshake, c.finished()))
		require.Nil(t, alert, "alert %v: %s", alertName(alert), res.Reason)
		require.NotNil(t, c.outcome.session)
		assert.Equal(t, 999, c.outcome.session.RecordPlaintextLimit, "record_size_limit, not max_fragment_length")
		for i, n := range c.protected {
			assert.LessOrEqual(t, n-16, 1000, "record %d", i)
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		c := dial12Hello(t, cfg, hello12().with(mfl).with(extRecordSizeLimit(1000)))
		_, ok := c.hello.ext(xMaxFragmentLength)
		assert.False(t, ok, "max_fragment_length in the ServerHello")
		limit, _ := c.hello.ext(xRecordSizeLimit)
		assert.Equal(t, u16(1<<14), limit)
		_, out := c.send(slices.Concat(rawRecord(20, 1), c.seal(record.Handshake, c.finished())))
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		assert.Equal(t, 1000, out.session.RecordPlaintextLimit, "record_size_limit, not max_fragment_length")
	})
}

// TestRecordSizeLimitNotHonored: a caller that does not say it keeps to
// Session.RecordPlaintextLimit (an edge or a REST client older than the
// field) writes records of 2^14, so the engine leaves the client's
// record_size_limit unanswered, as before it knew the extension: the limit
// is then not negotiated, and 2^14 within what the client must take (RFC
// 8449, Section 4: "When the record_size_limit extension is negotiated, an
// endpoint MUST NOT generate a protected record with plaintext that is
// larger than the RecordSizeLimit value it receives from its peer").
func TestRecordSizeLimitNotHonored(t *testing.T) {
	cfg := probeConfig(t)
	cfg.CallerHonorsRecordSizeLimit = false
	for _, limit := range []uint16{63, 100} {
		t.Run("TLS 1.3 record_size_limit "+strconv.Itoa(int(limit)), func(t *testing.T) {
			expectNoAnswer13(t, cfg, hello13().with(pskModesDHE).with(extRecordSizeLimit(limit)))
		})
		t.Run("TLS 1.2 record_size_limit "+strconv.Itoa(int(limit)), func(t *testing.T) {
			c := dial12Hello(t, cfg, hello12().with(extRecordSizeLimit(limit)))
			_, ok := c.hello.ext(xRecordSizeLimit)
			assert.False(t, ok, "record_size_limit answered for a caller that does not keep to it")
			_, out := c.send(slices.Concat(rawRecord(20, 1), c.seal(record.Handshake, c.finished())))
			require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
			assert.Equal(t, record.MaxPlaintext, out.session.RecordPlaintextLimit)
		})
	}
}
