package engine

import (
	"crypto/tls"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The record_size_limit extension, RFC 8449.
//
// A client that sends it names the largest protected record it will take;
// the server answers with its own limit, in the TLS 1.2 ServerHello or the
// TLS 1.3 EncryptedExtensions (never the TLS 1.3 ServerHello, Section 4).
// The server's limit is the protocol's maximum, so what it accepts is what
// it accepts without the extension (maxRecordLen, record.Cipher.Open: a
// larger record is record_overflow). The client's limit binds every
// protected record the server sends from then on (Section 4: "Unprotected
// messages are not subject to this limit"): those the engine writes (TLS
// 1.3: EncryptedExtensions to Finished and the NewSessionTicket; TLS 1.2:
// the Finished) and, through Session.RecordPlaintextLimit, those the
// caller writes under the session keys. Each handshake, resumptions
// included, negotiates it anew; a ticket does not carry it.

// minRecordSizeLimit is the smallest record_size_limit a client may send:
// "An endpoint MUST treat receipt of a smaller value as a fatal error and
// generate an "illegal_parameter" alert" (RFC 8449, Section 4).
const minRecordSizeLimit = 64

// ownRecordSizeLimit is the server's record_size_limit at vers, the
// protocol's largest record (RFC 8449, Section 4): 2^14 bytes of plaintext
// in TLS 1.2, and in TLS 1.3 one more, as the limit counts the inner
// content type (the whole TLSInnerPlaintext).
func ownRecordSizeLimit(vers uint16) uint16 {
	if vers == tls.VersionTLS13 {
		return record.MaxPlaintext + 1
	}
	return record.MaxPlaintext
}

// takeRecordSizeLimit keeps the client's record_size_limit, refusing one
// below the minimum, if the caller honors it (Config.
// CallerHonorsRecordSizeLimit); else the extension is ignored, as by a
// server that does not implement it.
func (h *Handshake) takeRecordSizeLimit(ch *clientHelloMsg) error {
	if !h.cfg.CallerHonorsRecordSizeLimit || !ch.has(extensionRecordSizeLimit) {
		return nil
	}
	if ch.recordSizeLimit < minRecordSizeLimit {
		return fail(alertIllegalParameter, "record_size_limit %d is below %d (RFC 8449, Section 4)", ch.recordSizeLimit, minRecordSizeLimit)
	}
	h.recordLimit = ch.recordSizeLimit
	return nil
}

// recordSizeLimitAnswer is the record_size_limit the server sends: its
// own, if the client sent one, else 0 (no extension, RFC 8446, Section
// 4.2).
func (h *Handshake) recordSizeLimitAnswer() uint16 {
	if h.recordLimit == 0 {
		return 0
	}
	return ownRecordSizeLimit(h.vers)
}

// maxFragment is the most plaintext the server puts in one protected
// record: 2^14 bytes, or fewer as the client's record_size_limit says. A
// limit above the protocol's maximum counts as the maximum (RFC 8449,
// Section 4: a client may advertise more, and "A server MUST NOT enforce
// this restriction"). In TLS 1.3 the limit includes the inner content type
// byte, and the server adds no padding, so a record carries one byte
// fewer than the limit.
func (h *Handshake) maxFragment() int {
	if h.recordLimit == 0 {
		return record.MaxPlaintext
	}
	limit := min(h.recordLimit, ownRecordSizeLimit(h.vers))
	if h.vers == tls.VersionTLS13 {
		limit--
	}
	return int(limit)
}
