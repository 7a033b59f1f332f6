package engine

import (
	"context"
	"crypto/tls"
	"errors"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// maxSkippedEarlyData bounds the refused 0-RTT data the server skips
// (RFC 8446, Section 4.2.10 lets it choose; tickets we never issued cannot
// promise more).
const maxSkippedEarlyData = 1 << 16

// maxDroppedCCS bounds the compatibility change_cipher_spec records dropped
// in each wait for a TLS 1.3 client: before its second ClientHello after a
// HelloRetryRequest, and after the server's flight. RFC 8446, Section 5
// says to drop them without giving a number; a client sends one (Appendix
// D.4), so more than a few is a peer wasting our time. crypto/tls allows
// 16 non-advancing records.
const maxDroppedCCS = 16

// errPeerAlert marks a failure the client announced with an alert: nothing
// is sent back.
var errPeerAlert = errors.New("peer alert")

// Step feeds the client's next bytes (any amount: partial records, several
// records, byte by byte) to the handshake. The engine buffers incomplete
// records and messages itself, so every byte given is consumed except those
// after the client's Finished. A Step after Complete or Failed does nothing
// and reports the same state.
func (h *Handshake) Step(ctx context.Context, keys KeyOps, in []byte) StepResult {
	switch h.state {
	case stateComplete:
		return StepResult{State: Complete}
	case stateFailed:
		return StepResult{State: Failed, Reason: "handshake already failed"}
	}
	h.ctx, h.keys = ctx, keys
	alertsProtected := h.writeCipher != nil
	consumed, err := h.consume(in)
	res := StepResult{Consumed: consumed, Trace: h.trace, State: NeedInput, Output: h.out}
	h.ctx, h.keys, h.out, h.flight, h.trace = nil, nil, nil, nil, nil
	switch {
	case err != nil:
		h.state = stateFailed
		res.State, res.Output, res.Reason = Failed, nil, err.Error()
		res.AlertDescription = alertOf(err)
		if !errors.Is(err, errPeerAlert) {
			res.Alert = h.alertRecord(res.AlertDescription, alertsProtected)
			if !h.omitTrace {
				res.Trace = append(res.Trace, h.alertEvent(Sent, alertLevelFatal, res.AlertDescription))
			}
		}
		h.wipe()
	case h.state == stateComplete:
		res.State = Complete
	}
	return res
}

// consume processes every complete record of h.inBuf+in. It returns how
// many bytes of in were used.
func (h *Handshake) consume(in []byte) (int, error) {
	data, buffered := in, len(h.inBuf)
	if buffered > 0 {
		data = append(h.inBuf, in...)
	}
	h.inBuf = nil
	off := 0
	for h.state != stateComplete {
		typ, vers, body, n, err := record.Parse(data[off:], h.maxRecordLen())
		if err != nil {
			if h.state == stateClientHello && off == 0 && sslv2ClientHello(data) {
				return len(in), fail(alertUnexpectedMessage, "SSL 2.0 compatible ClientHello refused (RFC 8446, Appendix D.5)")
			}
			return len(in), failWrap(alertOf(err), err, "bad record")
		}
		if n == 0 {
			break
		}
		off += n
		if err := h.handleRecord(typ, vers, body); err != nil {
			return max(off-buffered, 0), err
		}
	}
	if h.state == stateComplete {
		return off - buffered, nil
	}
	if off < len(data) {
		h.inBuf = append([]byte(nil), data[off:]...)
	}
	return len(in), nil
}

// sslv2ClientHello reports whether data starts like an SSL 2.0 compatible
// CLIENT-HELLO (RFC 5246, Appendix E.2): a two-byte header with the high bit
// set, then msg_type 1. RFC 8446, Appendix D.5 forbids negotiating TLS 1.3
// with one and does not recommend accepting one for older versions, so the
// engine refuses it; only the reason differs from other garbage.
func sslv2ClientHello(data []byte) bool {
	return len(data) >= 3 && data[0]&0x80 != 0 && data[2] == 1
}

// maxRecordLen is the largest record body allowed next: plaintext until the
// client protects its records (RFC 8446, Section 5.1 and 5.2; RFC 5246,
// Section 6.2).
func (h *Handshake) maxRecordLen() int {
	switch {
	case h.vers == tls.VersionTLS13 && (h.readCipher != nil || h.skipEarlyData):
		return record.MaxCiphertextTLS13
	case h.readCipher != nil:
		return record.MaxCiphertextTLS12
	}
	return record.MaxPlaintext
}

func (h *Handshake) handleRecord(typ record.ContentType, vers uint16, body []byte) error {
	// RFC 8446, Section 5.1: TLSPlaintext.length "MUST NOT exceed 2^14
	// bytes". maxRecordLen lets protected lengths through once 0-RTT or
	// protected records may come, and in TLS 1.3 those are all
	// application_data on the outside: any other type is plaintext.
	if h.vers == tls.VersionTLS13 && typ != record.ApplicationData && len(body) > record.MaxPlaintext {
		return fail(alertRecordOverflow, "%v record of %d bytes, over 2^14", typ, len(body))
	}
	if typ == record.ChangeCipherSpec {
		return h.handleChangeCipherSpec(body)
	}
	protected := h.readCipher != nil && (typ == record.ApplicationData || h.vers != tls.VersionTLS13)
	if typ == record.ApplicationData && h.readCipher == nil && h.skipEarlyData {
		// After a HelloRetryRequest, 0-RTT records are skipped unread,
		// RFC 8446, Section 4.2.10.
		return h.skipEarly(len(body), errors.New("application data before the second ClientHello"))
	}
	if protected {
		// Open decrypts in place, and body may be the caller's buffer: work
		// on a copy at the end of hsBuf, where the plaintext is kept anyway.
		start := len(h.hsBuf)
		h.hsBuf = append(h.hsBuf, body...)
		inner, plaintext, err := h.readCipher.Open(typ, vers, h.hsBuf[start:])
		if err != nil {
			h.hsBuf = h.hsBuf[:start]
			if h.skipEarlyData && errors.Is(err, record.ErrBadRecordMAC) {
				// Refused 0-RTT data is protected under keys the server never
				// derived, so it fails to open; skip it.
				return h.skipEarly(len(body), err)
			}
			return failWrap(alertOf(err), err, "cannot open record")
		}
		h.skipEarlyData = false
		if inner != record.Handshake {
			plaintext = append([]byte(nil), plaintext...)
			h.hsBuf = h.hsBuf[:start]
			return h.handleContent(inner, plaintext)
		}
		h.hsBuf = h.hsBuf[:start+copy(h.hsBuf[start:], plaintext)]
		return h.processMessages()
	}
	if typ == record.Handshake && h.readCipher != nil {
		return fail(alertUnexpectedMessage, "unprotected handshake record after keys changed")
	}
	if typ == record.Handshake {
		h.hsBuf = append(h.hsBuf, body...)
		return h.processMessages()
	}
	return h.handleContent(typ, body)
}

// handleContent handles alert and application data records.
func (h *Handshake) handleContent(typ record.ContentType, body []byte) error {
	if len(h.hsBuf) > 0 {
		// RFC 8446, Section 5.1: no other records inside a fragmented message.
		return fail(alertUnexpectedMessage, "%v record inside a fragmented handshake message", typ)
	}
	if typ != record.Alert {
		return fail(alertUnexpectedMessage, "%v record before the handshake completed", typ)
	}
	if len(body) != 2 {
		return fail(alertDecodeError, "malformed alert")
	}
	h.note(h.alertEvent(Received, body[0], Alert(body[1])))
	// Any alert ends the handshake: close_notify and user_canceled leave
	// nothing to finish, and the others are fatal.
	return &alertError{alert: Alert(body[1]), reason: "client sent alert " + Alert(body[1]).String(), err: errPeerAlert}
}

func (h *Handshake) skipEarly(n int, cause error) error {
	h.skippedEarlyData += n
	if h.skippedEarlyData > maxSkippedEarlyData {
		return failWrap(alertUnexpectedMessage, cause, "too much refused early data")
	}
	return nil
}

// handleChangeCipherSpec takes the TLS 1.2 ChangeCipherSpec, or drops a TLS
// 1.3 compatibility one (RFC 8446, Section 5 and Appendix D.4).
func (h *Handshake) handleChangeCipherSpec(body []byte) error {
	if len(h.hsBuf) > 0 {
		return fail(alertUnexpectedMessage, "change_cipher_spec inside a fragmented handshake message")
	}
	if len(body) != 1 || body[0] != 1 {
		return fail(alertUnexpectedMessage, "malformed change_cipher_spec")
	}
	h.note(h.event(Received, "ChangeCipherSpec"))
	switch {
	case h.vers == tls.VersionTLS13:
		if h.droppedCCS++; h.droppedCCS > maxDroppedCCS {
			return fail(alertUnexpectedMessage, "more than %d change_cipher_spec records in a TLS 1.3 handshake", maxDroppedCCS)
		}
		return nil
	case h.state == state12ChangeCipherSpec, h.state == state12ResumeChangeCipherSpec:
		c, err := h.newCipher(nil, h.clientKey, h.clientIV, 0)
		if err != nil {
			return err
		}
		h.readCipher = c
		h.state = state12ClientFinished
		if h.resumed {
			h.state = state12ResumeClientFinished
		}
		return nil
	}
	return fail(alertUnexpectedMessage, "change_cipher_spec while expecting %s", stateNames[h.state])
}

// processMessages handles every complete handshake message in hsBuf. What
// a message's header alone decides is decided once the header is in, not
// after waiting for a body that changes nothing: a type the state does not
// expect, and a Finished of another length than its verify_data. The
// edge's own check of the client Finished (clientfinished) answers the
// same way, on the header.
func (h *Handshake) processMessages() error {
	for h.state != stateComplete && len(h.hsBuf) >= 4 {
		typ, n := h.hsBuf[0], int(h.hsBuf[1])<<16|int(h.hsBuf[2])<<8|int(h.hsBuf[3])
		st, ok := steps[h.state]
		if !ok || st.msg != typ {
			if typ == typeClientHello {
				return fail(alertUnexpectedMessage, "renegotiation refused: ClientHello while expecting %s", stateNames[h.state])
			}
			return fail(alertUnexpectedMessage, "unexpected %s while expecting %s", messageName(typ), stateNames[h.state])
		}
		if typ == typeFinished {
			// verify_data is opaque[Hash.length] in TLS 1.3 (RFC 8446,
			// Section 4.4.4) and 12 bytes in TLS 1.2 (RFC 5246, Section
			// 7.4.9): a Finished of another length is a message that
			// cannot be decoded (RFC 8446, Section 6.2), not a wrong MAC.
			// Its length is public.
			want := finishedVerifyLength
			if h.vers == tls.VersionTLS13 {
				want = h.suite.Hash.Size()
			}
			if n != want {
				return fail(alertDecodeError, "%d-byte client Finished, want %d", n, want)
			}
		}
		// Only the message the state expects gets here: a larger bound
		// is not there for the taking before the handshake reaches it.
		limit := maxHandshakeMessage
		switch typ {
		case typeClientHello:
			limit = record.MaxClientHello
		case typeCertificate:
			limit = maxCertificateMessage
		}
		if n > limit {
			// No ClientHello is longer than its fields can hold: one
			// whose header says more has "the length of the message ...
			// incorrect", RFC 8446, Section 6.2's decode_error (as
			// tlsfuzzer expects). The other bounds are the engine's own,
			// below what the protocol allows.
			if typ == typeClientHello {
				return fail(alertDecodeError, "%d-byte ClientHello, longer than its fields can be (%d)", n, limit)
			}
			return fail(alertIllegalParameter, "%d-byte handshake message exceeds %d", n, limit)
		}
		if len(h.hsBuf) < 4+n {
			break
		}
		msg := h.hsBuf[:4+n]
		h.hsBuf = h.hsBuf[4+n:]
		if len(h.hsBuf) > 0 && st.endsRecord {
			return fail(alertUnexpectedMessage, "data after the %s in the same record", stateNames[h.state])
		}
		if err := st.handle(h, msg[4:], msg); err != nil {
			return err
		}
	}
	if len(h.hsBuf) == 0 {
		h.hsBuf = nil
	}
	return nil
}

// step is what a state waiting for a handshake message does: the message
// type it expects, its handler, and whether that message must end its
// record (a ClientHello ends the client's flight, and keys change after it
// in TLS 1.3 and after Finished in both versions, RFC 8446, Section 5.1).
type step struct {
	msg        uint8
	handle     func(h *Handshake, body, raw []byte) error
	endsRecord bool
}

// steps holds the step of every state that waits for a handshake message
// (state12ChangeCipherSpec waits for a record instead): a new state is one
// more entry.
var steps = map[handshakeState]step{
	stateClientHello:               {typeClientHello, (*Handshake).processClientHello, true},
	state12ClientCertificate:       {typeCertificate, (*Handshake).processClientCertificate12, false},
	state12ClientKeyExchange:       {typeClientKeyExchange, (*Handshake).processClientKeyExchange, false},
	state12ClientCertificateVerify: {typeCertificateVerify, (*Handshake).processClientCertificateVerify12, false},
	state12ClientFinished:          {typeFinished, (*Handshake).processClientFinished12, true},
	state12ResumeClientFinished:    {typeFinished, (*Handshake).processResumedClientFinished12, true},
	state13SecondClientHello:       {typeClientHello, (*Handshake).processSecondClientHello, true},
	state13ClientCertificate:       {typeCertificate, (*Handshake).processClientCertificate13, false},
	state13ClientCertificateVerify: {typeCertificateVerify, (*Handshake).processClientCertificateVerify13, false},
	state13ClientFinished:          {typeFinished, (*Handshake).processClientFinished13, true},
}

// sendMessage adds a handshake message to the transcript and to the flight
// being written.
func (h *Handshake) sendMessage(msg []byte, ev TraceEvent) {
	h.transcript.write(msg)
	h.flight = append(h.flight, msg...)
	h.note(ev)
}

// flush writes the pending flight as records: plaintext, in fragments of at
// most 2^14 bytes, or protected under the current write keys, in fragments
// the client's record_size_limit allows (maxFragment).
func (h *Handshake) flush() error {
	if h.writeCipher == nil {
		if len(h.flight) > 0 {
			h.out = record.Append(h.out, record.Handshake, tls.VersionTLS12, h.flight)
		}
		h.flight = h.flight[:0]
		return nil
	}
	size := h.maxFragment()
	for rest := h.flight; len(rest) > 0; {
		frag := rest[:min(len(rest), size)]
		rest = rest[len(frag):]
		var err error
		if h.out, err = h.writeCipher.Seal(h.out, record.Handshake, frag, 0); err != nil {
			return err
		}
	}
	h.flight = h.flight[:0]
	return nil
}

// sendChangeCipherSpec flushes the flight and writes a change_cipher_spec
// record.
func (h *Handshake) sendChangeCipherSpec() error {
	if err := h.flush(); err != nil {
		return err
	}
	h.out = record.Append(h.out, record.ChangeCipherSpec, tls.VersionTLS12, []byte{1})
	h.note(h.event(Sent, "ChangeCipherSpec"))
	return nil
}

// alertRecord builds the fatal alert record for a failure, protected if the
// client already holds the server's write keys.
func (h *Handshake) alertRecord(a Alert, protected bool) []byte {
	body := []byte{alertLevelFatal, byte(a)}
	if protected && h.writeCipher != nil {
		if rec, err := h.writeCipher.Seal(nil, record.Alert, body, 0); err == nil {
			return rec
		}
	}
	vers := uint16(tls.VersionTLS12)
	if h.vers == 0 {
		// Before negotiation, the oldest version a client may speak, so
		// that a TLS 1.0-only client can read its protocol_version alert.
		vers = tls.VersionTLS10
	}
	return record.Append(nil, record.Alert, vers, body)
}

// newCipher builds the record protection of one direction: from a traffic
// secret in TLS 1.3, from a key and IV of the key block in TLS 1.2.
func (h *Handshake) newCipher(secret, key, iv []byte, seq uint64) (*record.Cipher, error) {
	if h.suite == nil {
		return nil, errors.New("engine: no cipher suite negotiated")
	}
	if h.suite.TLS13 {
		return record.NewTLS13Cipher(h.suite.ID, secret, seq)
	}
	return record.NewTLS12Cipher(h.suite.ID, key, iv, seq)
}

// wipe drops the secrets of a failed handshake.
func (h *Handshake) wipe() {
	for _, s := range [][]byte{h.masterSecret, h.clientKey, h.clientIV, h.serverKey, h.serverIV,
		h.clientHandshake, h.clientTraffic, h.serverTraffic, h.exporterSecret, h.master13} {
		clear(s)
	}
	h.ecdheKey, h.master12 = nil, nil
	h.inBuf, h.hsBuf, h.transcript, h.readCipher, h.writeCipher = nil, nil, nil, nil, nil
}
