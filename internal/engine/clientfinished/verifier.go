// Package clientfinished verifies a client's Finished the handshake engine
// predicted (engine.Config.CallerVerifiesFinished): it reads the client's
// records after the server's flight and compares the Finished with the
// expected one in constant time. In TLS 1.3 it drops compatibility
// change_cipher_spec records, skips refused 0-RTT data and opens the
// records under the client handshake traffic key (RFC 8446, Sections
// 4.4.4, 5 and 4.2.10); in a TLS 1.2 abbreviated handshake it takes the
// client's ChangeCipherSpec and opens the records after it under the
// client write key (RFC 5246, Sections 7.1, 7.3 and 7.4.9). The edge uses
// it to complete a handshake in one service round trip; it never sees a
// secret from which another key could be derived.
package clientfinished

import (
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TLS alert descriptions (RFC 8446, Section 6.2) a Verifier fails with.
const (
	AlertUnexpectedMessage uint8 = 10
	AlertBadRecordMAC      uint8 = 20
	AlertRecordOverflow    uint8 = 22
	AlertDecodeError       uint8 = 50
	AlertDecryptError      uint8 = 51
	AlertInternalError     uint8 = 80
)

// The engine's bounds (internal/engine/conn.go), kept the same here so
// that verifying at the edge refuses what the engine refuses.
const (
	// maxSkippedEarlyData bounds the refused 0-RTT data skipped.
	maxSkippedEarlyData = 1 << 16
	// maxDroppedCCS bounds the compatibility change_cipher_spec records
	// dropped after the server's flight.
	maxDroppedCCS = 16
)

const typeFinished = 20

// Error is a failed verification. Alert is the alert to send, protected
// under the server's session write key (the client switched its read key
// on the server's Finished): in TLS 1.3 the server application traffic
// key, in TLS 1.2 the server write key at the sequence number after the
// server's Finished; none is sent when Peer (the client sent the alert
// itself).
type Error struct {
	Alert  uint8
	Peer   bool
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("client Finished: %s (%s)", e.Reason, record.AlertName(e.Alert))
}

func fail(alert uint8, format string, args ...any) *Error {
	return &Error{Alert: alert, Reason: fmt.Sprintf(format, args...)}
}

// Verifier checks one client's Finished. It is not safe for concurrent use.
type Verifier struct {
	cipher   *record.Cipher
	expected []byte
	// tls12: the client's ChangeCipherSpec comes first, then every record
	// is protected (RFC 5246, Section 7.1); changedCipher: it came.
	tls12, changedCipher bool
	skipEarly            bool
	skipped              int
	dropped              int
	in                   []byte // a partial record
	msg                  []byte // handshake bytes opened so far
	done                 bool
}

// New returns a Verifier for the Finished message expected (type, length
// and verify_data), carried in records of suite protected under the client
// handshake traffic key and iv from sequence number 0. skipEarlyData says
// that refused 0-RTT records may come first.
func New(suite uint16, expected, key, iv []byte, skipEarlyData bool) (*Verifier, error) {
	if err := checkExpected(expected); err != nil {
		return nil, err
	}
	c, err := record.NewTLS13KeyCipher(suite, key, iv, 0)
	if err != nil {
		return nil, fmt.Errorf("clientfinished: %w", err)
	}
	return &Verifier{cipher: c, expected: expected, skipEarly: skipEarlyData}, nil
}

// New12 returns a Verifier for the client Finished expected (type, length
// and verify_data) of a TLS 1.2 abbreviated handshake of suite (RFC 5246,
// Section 7.3; RFC 5077, Section 3.1): after the server's flight the client
// sends a ChangeCipherSpec, then its Finished in records protected under
// its write key and fixed IV of the key block from sequence number 0 (the
// session's client_write_key and client_write_iv).
func New12(suite uint16, expected, key, iv []byte) (*Verifier, error) {
	if err := checkExpected(expected); err != nil {
		return nil, err
	}
	c, err := record.NewTLS12Cipher(suite, key, iv, 0)
	if err != nil {
		return nil, fmt.Errorf("clientfinished: %w", err)
	}
	return &Verifier{cipher: c, expected: expected, tls12: true}, nil
}

// Cipher12 is, once a TLS 1.2 Finished is verified, the cipher the
// client's next records open under: the same write key, its sequence
// number past the records that carried the Finished (RFC 5246, Section
// 6.1). Nil before, and in TLS 1.3, whose application data has keys of
// its own.
func (v *Verifier) Cipher12() *record.Cipher {
	if !v.tls12 || !v.done {
		return nil
	}
	return v.cipher
}

func checkExpected(expected []byte) error {
	if len(expected) < 4 || expected[0] != typeFinished || int(expected[1])<<16|int(expected[2])<<8|int(expected[3]) != len(expected)-4 {
		return errors.New("clientfinished: the expected Finished is not a Finished message")
	}
	return nil
}

// Feed takes the client's next bytes (any amount). It returns done once the
// Finished is verified, with the bytes after the record that carried it
// (application data for the record layer), or an *Error. Nothing is
// returned of what the client sent before its Finished: without client
// authentication there is nothing else.
func (v *Verifier) Feed(in []byte) (done bool, rest []byte, err error) {
	if v.done {
		return true, in, nil
	}
	data := in
	if len(v.in) > 0 {
		data = append(v.in, in...)
		v.in = nil
	}
	for {
		typ, vers, body, n, err := record.Parse(data, v.maxRecordLen())
		if err != nil {
			return false, nil, fail(alertOf(err), "bad record: %v", err)
		}
		if n == 0 {
			v.in = append([]byte(nil), data...)
			return false, nil, nil
		}
		data = data[n:]
		if err := v.record(typ, vers, body); err != nil {
			return false, nil, err
		}
		if v.done {
			return true, data, nil
		}
	}
}

// maxRecordLen is the largest record body allowed next.
func (v *Verifier) maxRecordLen() int {
	switch {
	case !v.tls12:
		// Protected records are application_data on the outside and may
		// be longer than 2^14 (RFC 8446, Section 5.2); record13 checks
		// the plaintext ones.
		return record.MaxCiphertextTLS13
	case v.changedCipher:
		return record.MaxCiphertextTLS12
	}
	// RFC 5246, Section 6.2.1: TLSPlaintext.length MUST NOT exceed 2^14.
	return record.MaxPlaintext
}

func (v *Verifier) record(typ record.ContentType, vers uint16, body []byte) error {
	if v.tls12 {
		return v.record12(typ, vers, body)
	}
	return v.record13(typ, vers, body)
}

// record12 takes a record of a TLS 1.2 client after the server's flight of
// an abbreviated handshake: the ChangeCipherSpec, then only protected
// records (RFC 5246, Sections 7.1 and 7.3), as the engine would.
func (v *Verifier) record12(typ record.ContentType, vers uint16, body []byte) error {
	switch {
	case typ == record.ChangeCipherSpec && v.changedCipher:
		return fail(AlertUnexpectedMessage, "a second change_cipher_spec")
	case typ == record.ChangeCipherSpec:
		if len(body) != 1 || body[0] != 1 {
			return fail(AlertUnexpectedMessage, "malformed change_cipher_spec")
		}
		v.changedCipher = true
		return nil
	case v.changedCipher:
		return v.open(typ, vers, body)
	case typ == record.Alert:
		return v.alert(body)
	}
	// The Finished, or anything else, before the ChangeCipherSpec: in the
	// abbreviated handshake the client's ChangeCipherSpec comes first
	// (RFC 5246, Section 7.3).
	return fail(AlertUnexpectedMessage, "%v record while expecting the client's change_cipher_spec", typ)
}

// record13 takes a record of a TLS 1.3 client after the server's flight.
func (v *Verifier) record13(typ record.ContentType, vers uint16, body []byte) error {
	// RFC 8446, Section 5.1: TLSPlaintext.length "MUST NOT exceed 2^14
	// bytes".
	if typ != record.ApplicationData && len(body) > record.MaxPlaintext {
		return fail(AlertRecordOverflow, "%v record of %d bytes, over 2^14", typ, len(body))
	}
	switch typ {
	case record.ApplicationData:
	case record.ChangeCipherSpec:
		// RFC 8446, Section 5: a change_cipher_spec of the single byte 1
		// before the peer's Finished is dropped; anything else is
		// unexpected_message.
		if len(v.msg) > 0 {
			return fail(AlertUnexpectedMessage, "change_cipher_spec inside a fragmented handshake message")
		}
		if len(body) != 1 || body[0] != 1 {
			return fail(AlertUnexpectedMessage, "malformed change_cipher_spec")
		}
		if v.dropped++; v.dropped > maxDroppedCCS {
			return fail(AlertUnexpectedMessage, "more than %d change_cipher_spec records", maxDroppedCCS)
		}
		return nil
	case record.Alert:
		return v.alert(body)
	default:
		// RFC 8446, Section 5: after the server's flight every handshake
		// record of the client is protected.
		return fail(AlertUnexpectedMessage, "unprotected %v record after the server's Finished", typ)
	}
	return v.open(typ, vers, body)
}

// open opens a protected record of the client's, which must carry (part
// of) its Finished or an alert.
func (v *Verifier) open(typ record.ContentType, vers uint16, body []byte) error {
	// Open decrypts in place, and body is the caller's buffer: work on a
	// copy.
	work := append([]byte(nil), body...)
	inner, plaintext, err := v.cipher.Open(typ, vers, work)
	if err != nil {
		if v.skipEarly && errors.Is(err, record.ErrBadRecordMAC) {
			// Refused 0-RTT data is protected under keys the server never
			// derived (RFC 8446, Section 4.2.10).
			if v.skipped += len(body); v.skipped > maxSkippedEarlyData {
				return fail(AlertUnexpectedMessage, "too much refused early data")
			}
			return nil
		}
		return fail(alertOf(err), "cannot open record: %v", err)
	}
	v.skipEarly = false
	switch inner {
	case record.Handshake:
	case record.Alert:
		return v.alert(plaintext)
	default:
		return fail(AlertUnexpectedMessage, "%v record before the client's Finished", inner)
	}
	v.msg = append(v.msg, plaintext...)
	return v.message()
}

// message checks the handshake bytes opened so far: they must be a
// Finished, which ends its record since keys change after it (RFC 8446,
// Section 5.1), and nothing follows it in TLS 1.2 either: it ends the
// client's flight (RFC 5246, Section 7.3).
func (v *Verifier) message() error {
	if v.msg[0] != typeFinished {
		return fail(AlertUnexpectedMessage, "handshake message %d while expecting the client Finished", v.msg[0])
	}
	if len(v.msg) < 4 {
		return nil
	}
	// verify_data is opaque[Hash.length] (RFC 8446, Section 4.4.4), 12
	// bytes in TLS 1.2 (RFC 5246, Section 7.4.9): a Finished of another
	// length cannot be decoded (RFC 8446, Section 6.2). Its length is
	// public.
	if n := int(v.msg[1])<<16 | int(v.msg[2])<<8 | int(v.msg[3]); n != len(v.expected)-4 {
		return fail(AlertDecodeError, "%d-byte client Finished, want %d", n, len(v.expected)-4)
	}
	switch {
	case len(v.msg) < len(v.expected):
		return nil
	case len(v.msg) > len(v.expected):
		return fail(AlertUnexpectedMessage, "data after the client Finished in the same record")
	}
	ok := subtle.ConstantTimeCompare(v.msg, v.expected) == 1
	clear(v.msg)
	v.msg = nil
	if !ok {
		return fail(AlertDecryptError, "client Finished does not match the transcript")
	}
	v.done = true
	return nil
}

// alert is a client's alert before its Finished: any ends the handshake
// (close_notify and user_canceled leave nothing to finish).
func (v *Verifier) alert(body []byte) error {
	if len(v.msg) > 0 {
		// RFC 8446, Section 5.1: no other records inside a fragmented
		// handshake message.
		return fail(AlertUnexpectedMessage, "alert record inside a fragmented handshake message")
	}
	if len(body) != 2 {
		return fail(AlertDecodeError, "malformed alert")
	}
	return &Error{Alert: body[1], Peer: true, Reason: "client sent alert " + record.AlertName(body[1])}
}

// alertOf is the alert a record-layer error calls for.
func alertOf(err error) uint8 {
	var re *record.Error
	if errors.As(err, &re) {
		return re.Alert()
	}
	return AlertInternalError
}
