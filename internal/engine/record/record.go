// Package record implements TLS record framing and AEAD record protection for
// TLS 1.2 (RFC 5246, RFC 5288, RFC 7905) and TLS 1.3 (RFC 8446).
//
// It is shared by the handshake engine, which protects its flights with it,
// and by edge record layers, which protect application data with the session
// keys the engine exports. It holds no connection state beyond one
// direction's keys and sequence number, and it never reads or writes a
// socket: callers hand it bytes and get bytes back.
package record

import (
	"encoding/binary"
	"fmt"
)

// ContentType is the type of a TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1).
type ContentType uint8

// The content types of TLS 1.2 and TLS 1.3. Heartbeat (RFC 6520) is not
// supported and is rejected like any unknown type.
const (
	ChangeCipherSpec ContentType = 20
	Alert            ContentType = 21
	Handshake        ContentType = 22
	ApplicationData  ContentType = 23
)

// String returns the RFC name of t, for traces and errors.
func (t ContentType) String() string {
	switch t {
	case ChangeCipherSpec:
		return "change_cipher_spec"
	case Alert:
		return "alert"
	case Handshake:
		return "handshake"
	case ApplicationData:
		return "application_data"
	}
	return fmt.Sprintf("unknown(%d)", uint8(t))
}

func (t ContentType) known() bool {
	return t >= ChangeCipherSpec && t <= ApplicationData
}

// Record sizes.
const (
	// HeaderLen is the length of the record header: type, legacy version,
	// length.
	HeaderLen = 5
	// MaxPlaintext is the largest fragment a record may carry
	// (RFC 8446 §5.1, RFC 5246 §6.2.1).
	MaxPlaintext = 1 << 14
	// MaxCiphertextTLS12 is the largest protected TLS 1.2 record body
	// (RFC 5246 §6.2.3).
	MaxCiphertextTLS12 = MaxPlaintext + 2048
	// MaxCiphertextTLS13 is the largest protected TLS 1.3 record body
	// (RFC 8446 §5.2).
	MaxCiphertextTLS13 = MaxPlaintext + 256
	// MaxClientHello is the largest ClientHello body: the most its fields
	// hold (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2): legacy_version 2, random
	// 32, legacy_session_id 1+32, cipher_suites 2+(2^16-2),
	// legacy_compression_methods 1+255, extensions 2+(2^16-1). The
	// extensions alone may take 2^16-1 bytes (tlsfuzzer's
	// test-tls13-signature-algorithms.py fills them with schemes), so a
	// valid ClientHello can be longer than 2^16; none is longer than this.
	// OpenSSL's CLIENT_HELLO_MAX_LENGTH is the same. The engine and the
	// edge both bound the ClientHello by it.
	MaxClientHello = 2 + 32 + 1 + 32 + 2 + (1<<16 - 2) + 1 + 255 + 2 + (1<<16 - 1)
)

// Parse reads the first record in buf.
//
// If buf holds less than a whole record it returns n == 0 and a nil error:
// the caller needs more input. Otherwise n is the number of bytes the record
// occupies in buf and body aliases buf (capped, so appending to body never
// overwrites the next record). The header is checked as soon as it is
// complete, so an oversized or malformed record is rejected without waiting
// for its body.
//
// Parse rejects unknown content types (unexpected_message, RFC 8446 §5), a
// legacy version whose major byte is not 3 (decode_error), a length above
// maxLen (ErrRecordOverflow), and an empty record of any type but
// application_data (unexpected_message; RFC 8446 §5.1, RFC 5246 §6.2.1 forbid
// empty handshake, alert and change_cipher_spec fragments, and a protected
// record is never empty). maxLen is MaxPlaintext for unprotected records and
// MaxCiphertextTLS12 or MaxCiphertextTLS13 once records are protected.
func Parse(buf []byte, maxLen int) (typ ContentType, version uint16, body []byte, n int, err error) {
	if len(buf) < HeaderLen {
		return 0, 0, nil, 0, nil
	}
	typ = ContentType(buf[0])
	version = binary.BigEndian.Uint16(buf[1:3])
	length := int(binary.BigEndian.Uint16(buf[3:5]))
	if !typ.known() {
		return 0, 0, nil, 0, fmt.Errorf("%w: unknown content type %d", ErrUnexpectedMessage, buf[0])
	}
	if version>>8 != 3 {
		return 0, 0, nil, 0, fmt.Errorf("%w: legacy record version %#04x", ErrDecode, version)
	}
	if length > maxLen {
		return 0, 0, nil, 0, fmt.Errorf("%w: %d-byte %v record, limit %d", ErrRecordOverflow, length, typ, maxLen)
	}
	if err := checkFragment(typ, length); err != nil {
		return 0, 0, nil, 0, err
	}
	n = HeaderLen + length
	if len(buf) < n {
		return 0, 0, nil, 0, nil
	}
	return typ, version, buf[HeaderLen:n:n], n, nil
}

// checkFragment enforces that only application_data may travel in an empty
// fragment (RFC 8446 §5.1, RFC 5246 §6.2.1).
func checkFragment(typ ContentType, length int) error {
	if length == 0 && typ != ApplicationData {
		return fmt.Errorf("%w: empty %v fragment", ErrUnexpectedMessage, typ)
	}
	return nil
}

// Append appends body to dst as unprotected records and returns the extended
// slice. A body longer than MaxPlaintext is split over as many records as it
// needs, since the record layer does not preserve message boundaries
// (RFC 8446 §5.1); an empty body yields one empty record.
func Append(dst []byte, typ ContentType, version uint16, body []byte) []byte {
	for {
		frag := body[:min(len(body), MaxPlaintext)]
		body = body[len(frag):]
		dst = append(dst, byte(typ), byte(version>>8), byte(version), byte(len(frag)>>8), byte(len(frag)))
		dst = append(dst, frag...)
		if len(body) == 0 {
			return dst
		}
	}
}
