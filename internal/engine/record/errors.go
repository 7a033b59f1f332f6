package record

import "errors"

// TLS alert descriptions (RFC 8446 §6.2) that record-layer failures map to.
const (
	alertUnexpectedMessage uint8 = 10
	alertBadRecordMAC      uint8 = 20
	alertRecordOverflow    uint8 = 22
	alertDecodeError       uint8 = 50
)

// Error is a record-layer failure caused by the peer's bytes. Alert names the
// TLS alert description to send before closing, so callers need not match
// error strings. Errors from this package are either an *Error (possibly
// wrapped with detail; use errors.As) or a local failure for which
// internal_error is the fitting alert.
type Error struct {
	alert uint8
	text  string
}

func (e *Error) Error() string { return e.text }

// Alert returns the TLS AlertDescription for this failure.
func (e *Error) Alert() uint8 { return e.alert }

// Sentinel errors. Errors returned by this package wrap one of them when the
// peer is at fault; compare with errors.Is.
var (
	// ErrBadRecordMAC reports a record that failed authentication
	// (bad_record_mac, RFC 8446 §5.2).
	ErrBadRecordMAC error = &Error{alertBadRecordMAC, "record: bad record MAC"}
	// ErrRecordOverflow reports a record or plaintext over the size limit
	// (record_overflow, RFC 8446 §5.2, RFC 5246 §7.2.2).
	ErrRecordOverflow error = &Error{alertRecordOverflow, "record: record overflow"}
	// ErrUnexpectedMessage reports a record of a type that is unknown or not
	// allowed where it appeared (unexpected_message, RFC 8446 §5, §5.4).
	ErrUnexpectedMessage error = &Error{alertUnexpectedMessage, "record: unexpected message"}
	// ErrDecode reports a record header that cannot be TLS
	// (decode_error).
	ErrDecode error = &Error{alertDecodeError, "record: malformed record"}
)

// ErrSequenceExhausted reports that a Cipher has used its last sequence
// number. RFC 8446 §5.3 and RFC 5246 §6.1 forbid wrapping: the caller must
// rekey (TLS 1.3 KeyUpdate) or close the connection.
var ErrSequenceExhausted = errors.New("record: sequence number exhausted")
