package engine

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// ticketState is what a session ticket carries, for either version: the
// plaintext the engine hands TicketKeys.Seal. It holds a secret (the TLS 1.3
// resumption PSK, the TLS 1.2 master secret): only its sealed form leaves
// the engine.
type ticketState struct {
	vers  uint16 // tls.VersionTLS12 or tls.VersionTLS13
	suite uint16
	// group is the TLS 1.2 session's ECDHE group (0 for RSA key exchange),
	// which its resumptions report as crypto/tls does; 0 in TLS 1.3, whose
	// resumption exchanges keys anew.
	group   tls.CurveID
	created time.Time // millisecond precision on the wire
	// ageAdd is the TLS 1.3 ticket_age_add (RFC 8446, Section 4.6.1); 0 in
	// TLS 1.2.
	ageAdd uint32
	// secret is the TLS 1.3 PSK derived from the resumption master secret
	// (RFC 8446, Section 4.6.1), or the TLS 1.2 master secret.
	secret []byte
	// ems reports RFC 7627 in the original TLS 1.2 session (always true in
	// TLS 1.3).
	ems        bool
	serverName string
	alpn       string
	// peerCerts is the client's certificate chain of the original session,
	// DER, leaf first: a resumed session is as authenticated as it was.
	peerCerts [][]byte
}

// ticketCodecVersion versions the plaintext encoding: a ticket with another
// version does not decode and the client gets a full handshake. Bump it
// whenever the layout changes.
const ticketCodecVersion = 1

const ticketFlagEMS = 1

var errBadTicket = errors.New("engine: malformed ticket plaintext")

// marshal encodes t:
//
//	uint8  codec version
//	uint16 TLS version, uint16 cipher suite, uint16 group
//	uint64 creation time, Unix milliseconds
//	uint32 ticket_age_add
//	uint8  flags (EMS)
//	opaque secret<1..2^8-1>
//	opaque server_name<0..2^16-1>, opaque alpn<0..2^8-1>
//	opaque peer_certs<0..2^24-1>, each opaque cert<1..2^24-1>
func (t *ticketState) marshal() []byte {
	var flags uint8
	if t.ems {
		flags |= ticketFlagEMS
	}
	certsLen := 0
	for _, c := range t.peerCerts {
		certsLen += 3 + len(c)
	}
	if len(t.secret) > 0xff || len(t.serverName) > 0xffff || len(t.alpn) > 0xff || certsLen > 0xffffff {
		panic("engine: ticket state field too long for its length prefix")
	}
	// Appended into one buffer of the exact size, not built with
	// cryptobyte: its buffer grew four or five times and each length
	// prefix allocated a builder, for every ticket sealed, and the grown
	// copies kept the secret beyond sealTicket's clear of the result.
	b := make([]byte, 0, 1+3*2+8+4+1+1+len(t.secret)+2+len(t.serverName)+1+len(t.alpn)+3+certsLen)
	b = append(b, ticketCodecVersion)
	b = binary.BigEndian.AppendUint16(b, t.vers)
	b = binary.BigEndian.AppendUint16(b, t.suite)
	b = binary.BigEndian.AppendUint16(b, uint16(t.group))
	b = binary.BigEndian.AppendUint64(b, uint64(t.created.UnixMilli()))
	b = binary.BigEndian.AppendUint32(b, t.ageAdd)
	b = append(b, flags, byte(len(t.secret)))
	b = append(b, t.secret...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.serverName)))
	b = append(b, t.serverName...)
	b = append(b, byte(len(t.alpn)))
	b = append(b, t.alpn...)
	b = appendUint24(b, certsLen)
	for _, c := range t.peerCerts {
		b = appendUint24(b, len(c))
		b = append(b, c...)
	}
	return b
}

// parseTicketState decodes what marshal wrote. The result owns its memory.
func parseTicketState(data []byte) (*ticketState, error) {
	s := cryptobyte.String(data)
	var t ticketState
	var codecVersion, flags uint8
	var created uint64
	var secret, serverName, alpn, certs cryptobyte.String
	if !s.ReadUint8(&codecVersion) || codecVersion != ticketCodecVersion ||
		!s.ReadUint16(&t.vers) || !s.ReadUint16(&t.suite) || !s.ReadUint16((*uint16)(&t.group)) || !s.ReadUint64(&created) ||
		!s.ReadUint32(&t.ageAdd) || !s.ReadUint8(&flags) || flags&^ticketFlagEMS != 0 ||
		!s.ReadUint8LengthPrefixed(&secret) || secret.Empty() ||
		!s.ReadUint16LengthPrefixed(&serverName) || !s.ReadUint8LengthPrefixed(&alpn) ||
		!s.ReadUint24LengthPrefixed(&certs) || !s.Empty() || created > 1<<62 {
		return nil, errBadTicket
	}
	for !certs.Empty() {
		var c cryptobyte.String
		if !certs.ReadUint24LengthPrefixed(&c) || c.Empty() {
			return nil, errBadTicket
		}
		t.peerCerts = append(t.peerCerts, append([]byte(nil), c...))
	}
	t.created = time.UnixMilli(int64(created))
	t.ems = flags&ticketFlagEMS != 0
	t.secret = append([]byte(nil), secret...)
	t.serverName, t.alpn = string(serverName), string(alpn)
	return &t, nil
}

// wipe clears the secret of a ticket state no longer needed.
func (t *ticketState) wipe() { clear(t.secret) }
