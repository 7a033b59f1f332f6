package engine

import (
	"crypto/tls"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Handshake message types, RFC 8446, Section 4 and RFC 5246, Section 7.4.
const (
	typeHelloRequest        uint8 = 0
	typeClientHello         uint8 = 1
	typeServerHello         uint8 = 2
	typeNewSessionTicket    uint8 = 4
	typeEndOfEarlyData      uint8 = 5
	typeEncryptedExtensions uint8 = 8
	typeCertificate         uint8 = 11
	typeServerKeyExchange   uint8 = 12
	typeCertificateRequest  uint8 = 13
	typeServerHelloDone     uint8 = 14
	typeCertificateVerify   uint8 = 15
	typeClientKeyExchange   uint8 = 16
	typeFinished            uint8 = 20
	typeKeyUpdate           uint8 = 24
	typeMessageHash         uint8 = 254 // synthetic, RFC 8446, Section 4.4.1
)

// Extension code points (IANA "TLS ExtensionType Values").
const (
	extensionServerName              uint16 = 0
	extensionStatusRequest           uint16 = 5
	extensionSupportedGroups         uint16 = 10
	extensionSupportedPoints         uint16 = 11
	extensionSignatureAlgorithms     uint16 = 13
	extensionALPN                    uint16 = 16
	extensionSCT                     uint16 = 18
	extensionExtendedMasterSecret    uint16 = 23
	extensionRecordSizeLimit         uint16 = 28
	extensionSessionTicket           uint16 = 35
	extensionPreSharedKey            uint16 = 41
	extensionEarlyData               uint16 = 42
	extensionSupportedVersions       uint16 = 43
	extensionCookie                  uint16 = 44
	extensionPSKModes                uint16 = 45
	extensionCertificateAuthorities  uint16 = 47
	extensionSignatureAlgorithmsCert uint16 = 50
	extensionKeyShare                uint16 = 51
	extensionRenegotiationInfo       uint16 = 0xff01
)

const (
	compressionNone         uint8  = 0
	statusTypeOCSP          uint8  = 1 // RFC 6066, Section 8
	pointFormatUncompressed uint8  = 0
	scsvRenegotiation       uint16 = 0x00ff // RFC 5746, Section 3.3
	scsvFallback            uint16 = 0x5600 // RFC 7507, Section 6
	certTypeRSASign         uint8  = 1
	certTypeECDSASign       uint8  = 64 // also EdDSA, RFC 8422, Section 3
)

// curveX448 is x448's NamedCurve value, RFC 8422, Section 5.1.1 (crypto/tls
// has no constant for it).
const curveX448 tls.CurveID = 30

// rfc8422Curve reports the curves RFC 8422, Section 5.1.1 defines:
// secp256r1, secp384r1, secp521r1, x25519 and x448.
func rfc8422Curve(g tls.CurveID) bool {
	switch g {
	case tls.CurveP256, tls.CurveP384, tls.CurveP521, tls.X25519, curveX448:
		return true
	}
	return false
}

// maxHandshakeMessage caps the body of one handshake message (the protocol
// allows 16 MiB; nothing a server receives needs more than 64 KiB), but for
// the ClientHello (record.MaxClientHello) and a client's Certificate
// (maxCertificateMessage).
const maxHandshakeMessage = 1 << 16

// maxCertificateMessage caps a client's Certificate message (mutual TLS):
// a chain may outgrow 64 KiB, and crypto/tls takes Certificate messages of
// up to 256 KiB. The service's bound on a session's input (twice its
// per-step bound of 256 KiB) holds one with the rest of the handshake.
const maxCertificateMessage = 256 << 10

// helloRetryRequestRandom is the ServerHello.random that marks a
// HelloRetryRequest, RFC 8446, Section 4.1.3.
var helloRetryRequestRandom = []byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11,
	0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E,
	0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// downgradeCanaryTLS12 ends ServerHello.random when a server able to do TLS
// 1.3 negotiates TLS 1.2, RFC 8446, Section 4.1.3.
const downgradeCanaryTLS12 = "DOWNGRD\x01"

type keyShare struct {
	group tls.CurveID
	data  []byte
}

// pskIdentity is a PskIdentity of the pre_shared_key extension, RFC 8446,
// Section 4.2.11: for resumption, a ticket and its obfuscated age.
type pskIdentity struct {
	identity            []byte
	obfuscatedTicketAge uint32
}

// PSK key exchange modes, RFC 8446, Section 4.2.9.
const (
	pskModeKE    uint8 = 0 // psk_ke: PSK only, no forward secrecy
	pskModeDHEKE uint8 = 1 // psk_dhe_ke: PSK with (EC)DHE
)

// clientHelloMsg is a parsed ClientHello, RFC 8446, Section 4.1.2 and RFC
// 5246, Section 7.4.1.2. Slices alias the message buffer.
type clientHelloMsg struct {
	vers                    uint16
	random                  []byte
	sessionID               []byte
	cipherSuites            []uint16
	compressionMethods      []uint8
	extensions              []uint16 // types in the order sent
	serverName              string
	hostNames               int // host_name entries in server_name
	ocspStapling            bool
	supportedGroups         []tls.CurveID
	supportedPoints         []uint8
	signatureAlgorithms     []tls.SignatureScheme
	signatureAlgorithmsCert []tls.SignatureScheme
	alpnProtocols           []string
	scts                    bool
	extendedMasterSecret    bool
	ticketSupported         bool
	sessionTicket           []byte
	supportedVersions       []uint16
	cookie                  []byte
	keyShares               []keyShare
	earlyData               bool
	pskModes                []uint8
	pskOffered              bool
	pskIdentities           []pskIdentity
	pskBinders              [][]byte
	// pskBindersLen is the length of the binders list with its length
	// prefix: the ClientHello without its last pskBindersLen bytes is the
	// truncated ClientHello the binders cover (RFC 8446, Section 4.2.11.2).
	pskBindersLen                int
	secureRenegotiationSupported bool
	secureRenegotiation          []byte
	// recordSizeLimit is the client's record_size_limit (RFC 8449,
	// Section 4), when has(extensionRecordSizeLimit).
	recordSizeLimit uint16
}

// codePoints is a set of 16-bit code points (extension types, groups). A
// ClientHello's lists can hold thousands of them (its extensions block
// alone up to 2^16-1 bytes), and comparing such lists pairwise would let
// one ClientHello cost the server some hundred milliseconds.
type codePoints [1 << 16 / 64]uint64

// add puts v in the set and reports whether it was not there.
func (s *codePoints) add(v uint16) bool {
	if s.has(v) {
		return false
	}
	s[v/64] |= 1 << (v % 64)
	return true
}

func (s *codePoints) has(v uint16) bool { return s[v/64]&(1<<(v%64)) != 0 }

// has reports whether the client sent extension ext.
func (m *clientHelloMsg) has(ext uint16) bool { return slices.Contains(m.extensions, ext) }

// keyShare returns the client's share for group g, nil if it sent none.
func (m *clientHelloMsg) keyShare(g tls.CurveID) []byte {
	for _, ks := range m.keyShares {
		if ks.group == g {
			return ks.data
		}
	}
	return nil
}

// readUint16List reads a uint16-prefixed list of uint16 values with at least
// one element.
func readUint16List(s *cryptobyte.String, out *[]uint16) bool {
	var list cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 {
		return false
	}
	*out = make([]uint16, 0, len(list)/2)
	for !list.Empty() {
		var v uint16
		if !list.ReadUint16(&v) {
			return false
		}
		*out = append(*out, v)
	}
	return true
}

func readSchemes(s *cryptobyte.String, out *[]tls.SignatureScheme) bool {
	var list []uint16
	if !readUint16List(s, &list) {
		return false
	}
	*out = make([]tls.SignatureScheme, len(list))
	for i, v := range list {
		(*out)[i] = tls.SignatureScheme(v)
	}
	return true
}

// unmarshal parses the body of a ClientHello (without the 4-byte header).
// It rejects truncated or trailing data and duplicate extensions; the caller
// sends decode_error when it returns false.
func (m *clientHelloMsg) unmarshal(body []byte) bool {
	*m = clientHelloMsg{}
	s := cryptobyte.String(body)
	var suites, compression cryptobyte.String
	if !s.ReadUint16(&m.vers) || !s.ReadBytes(&m.random, 32) ||
		!s.ReadUint8LengthPrefixed((*cryptobyte.String)(&m.sessionID)) || len(m.sessionID) > 32 ||
		!s.ReadUint16LengthPrefixed(&suites) || suites.Empty() || len(suites)%2 != 0 ||
		!s.ReadUint8LengthPrefixed(&compression) || compression.Empty() {
		return false
	}
	m.cipherSuites = make([]uint16, 0, len(suites)/2)
	for !suites.Empty() {
		var id uint16
		suites.ReadUint16(&id)
		if id == scsvRenegotiation {
			m.secureRenegotiationSupported = true
		}
		m.cipherSuites = append(m.cipherSuites, id)
	}
	m.compressionMethods = compression
	if s.Empty() {
		return true // no extensions: RFC 5246, Section 7.4.1.2
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return false
	}
	var seen codePoints
	for !exts.Empty() {
		var ext uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&ext) || !exts.ReadUint16LengthPrefixed(&data) {
			return false
		}
		// RFC 8446, Section 4.2: at most one extension of each type.
		if !seen.add(ext) {
			return false
		}
		m.extensions = append(m.extensions, ext)
		if !m.unmarshalExtension(ext, data) {
			return false
		}
	}
	return true
}

// pskNotLast reports a pre_shared_key extension followed by others: RFC
// 8446, Section 4.2.11 has the server refuse it with illegal_parameter, not
// as a decoding error, so the parser lets it through.
func (m *clientHelloMsg) pskNotLast() bool {
	return m.pskOffered && m.extensions[len(m.extensions)-1] != extensionPreSharedKey
}

func (m *clientHelloMsg) unmarshalExtension(ext uint16, data cryptobyte.String) bool {
	switch ext {
	case extensionServerName:
		// RFC 6066, Section 3.
		var names cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&names) || names.Empty() {
			return false
		}
		for !names.Empty() {
			var nameType uint8
			var name cryptobyte.String
			if !names.ReadUint8(&nameType) || !names.ReadUint16LengthPrefixed(&name) || name.Empty() {
				return false
			}
			if nameType != 0 {
				continue
			}
			// The list "MUST NOT contain more than one name of the same
			// name_type": a second host_name decodes, and is refused
			// (checkHostNames) as a field inconsistent with another.
			if m.hostNames++; m.hostNames == 1 {
				m.serverName = string(name)
			}
		}
	case extensionStatusRequest:
		// RFC 6066, Section 8. No stapling is offered, but the request is
		// decoded: for ocsp, ResponderID responder_id_list<0..2^16-1> with
		// each ResponderID<1..2^16-1>, and request_extensions<0..2^16-1>;
		// other status types have no defined body.
		var statusType uint8
		if !data.ReadUint8(&statusType) {
			return false
		}
		m.ocspStapling = true
		if statusType != statusTypeOCSP {
			data = nil
			break
		}
		var responders, requestExts cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&responders) || !data.ReadUint16LengthPrefixed(&requestExts) {
			return false
		}
		for !responders.Empty() {
			var id cryptobyte.String
			if !responders.ReadUint16LengthPrefixed(&id) || id.Empty() {
				return false
			}
		}
	case extensionSupportedGroups:
		// RFC 8446, Section 4.2.7.
		var list []uint16
		if !readUint16List(&data, &list) {
			return false
		}
		m.supportedGroups = make([]tls.CurveID, len(list))
		for i, g := range list {
			m.supportedGroups[i] = tls.CurveID(g)
		}
	case extensionSupportedPoints:
		// RFC 8422, Section 5.1.2.
		if !data.ReadUint8LengthPrefixed((*cryptobyte.String)(&m.supportedPoints)) || len(m.supportedPoints) == 0 {
			return false
		}
	case extensionSignatureAlgorithms:
		// RFC 8446, Section 4.2.3.
		if !readSchemes(&data, &m.signatureAlgorithms) {
			return false
		}
	case extensionSignatureAlgorithmsCert:
		if !readSchemes(&data, &m.signatureAlgorithmsCert) {
			return false
		}
	case extensionALPN:
		// RFC 7301, Section 3.1.
		var list cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&list) || list.Empty() {
			return false
		}
		for !list.Empty() {
			var proto cryptobyte.String
			if !list.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
				return false
			}
			m.alpnProtocols = append(m.alpnProtocols, string(proto))
		}
	case extensionSCT:
		m.scts = true
	case extensionExtendedMasterSecret:
		// RFC 7627, Section 5.1.
		m.extendedMasterSecret = true
	case extensionRecordSizeLimit:
		// RFC 8449, Section 4: uint16 RecordSizeLimit, and nothing else.
		if !data.ReadUint16(&m.recordSizeLimit) {
			return false
		}
	case extensionSessionTicket:
		// RFC 5077, Section 3.2: empty to ask for a ticket, or the ticket
		// of the session to resume.
		m.ticketSupported = true
		m.sessionTicket = data
		data = nil
	case extensionSupportedVersions:
		// RFC 8446, Section 4.2.1.
		var list cryptobyte.String
		if !data.ReadUint8LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 {
			return false
		}
		for !list.Empty() {
			var v uint16
			list.ReadUint16(&v)
			m.supportedVersions = append(m.supportedVersions, v)
		}
	case extensionCookie:
		// RFC 8446, Section 4.2.2.
		if !data.ReadUint16LengthPrefixed((*cryptobyte.String)(&m.cookie)) || len(m.cookie) == 0 {
			return false
		}
	case extensionKeyShare:
		// RFC 8446, Section 4.2.8.
		var shares cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&shares) {
			return false
		}
		for !shares.Empty() {
			var ks keyShare
			if !shares.ReadUint16((*uint16)(&ks.group)) ||
				!shares.ReadUint16LengthPrefixed((*cryptobyte.String)(&ks.data)) || len(ks.data) == 0 {
				return false
			}
			m.keyShares = append(m.keyShares, ks)
		}
	case extensionEarlyData:
		// RFC 8446, Section 4.2.10.
		m.earlyData = true
	case extensionPSKModes:
		// RFC 8446, Section 4.2.9.
		if !data.ReadUint8LengthPrefixed((*cryptobyte.String)(&m.pskModes)) || len(m.pskModes) == 0 {
			return false
		}
	case extensionPreSharedKey:
		// RFC 8446, Section 4.2.11: PskIdentity identity<1..2^16-1> and
		// obfuscated_ticket_age, PskBinderEntry<32..255>.
		var identities, binders cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&identities) || identities.Empty() {
			return false
		}
		m.pskBindersLen = len(data)
		if !data.ReadUint16LengthPrefixed(&binders) || binders.Empty() {
			return false
		}
		for !identities.Empty() {
			var id pskIdentity
			if !identities.ReadUint16LengthPrefixed((*cryptobyte.String)(&id.identity)) || len(id.identity) == 0 ||
				!identities.ReadUint32(&id.obfuscatedTicketAge) {
				return false
			}
			m.pskIdentities = append(m.pskIdentities, id)
		}
		for !binders.Empty() {
			var binder cryptobyte.String
			if !binders.ReadUint8LengthPrefixed(&binder) || len(binder) < 32 {
				return false
			}
			m.pskBinders = append(m.pskBinders, binder)
		}
		m.pskOffered = true
	case extensionRenegotiationInfo:
		// RFC 5746, Section 3.2.
		if !data.ReadUint8LengthPrefixed((*cryptobyte.String)(&m.secureRenegotiation)) {
			return false
		}
		m.secureRenegotiationSupported = true
	default:
		data = nil // unknown extensions are ignored, RFC 8446, Section 4.2
	}
	return data.Empty()
}

// validHostname reports whether name is a DNS host name as RFC 6066, Section 3
// requires for server_name: LDH labels, no trailing dot, not an IP literal.
func validHostname(name string) bool {
	if len(name) > 253 || strings.HasSuffix(name, ".") {
		return false
	}
	allDigits := true
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				allDigits = false
			default:
				return false
			}
		}
	}
	return !allDigits // an IPv4 literal is not a host name
}

// isIPLiteral reports whether name is an IPv4 or IPv6 address, bracketed
// or not.
func isIPLiteral(name string) bool {
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		name = name[1 : len(name)-1]
	}
	_, err := netip.ParseAddr(name)
	return err == nil
}

// addHandshakeHeader wraps body in a handshake message header.
func marshalHandshake(typ uint8, f func(b *cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typ)
	b.AddUint24LengthPrefixed(f)
	return b.BytesOrPanic()
}

// serverHelloMsg covers ServerHello for both versions and HelloRetryRequest;
// extensions are written only when set. RFC 8446, Section 4.1.3 and RFC 5246,
// Section 7.4.1.3.
type serverHelloMsg struct {
	random      []byte
	sessionID   []byte
	cipherSuite uint16

	supportedVersion uint16   // TLS 1.3 and HelloRetryRequest
	serverShare      keyShare // TLS 1.3 ServerHello
	pskSelected      bool     // TLS 1.3 ServerHello: pre_shared_key, RFC 8446, Section 4.2.11
	pskIdentity      uint16
	selectedGroup    tls.CurveID // HelloRetryRequest

	secureRenegotiation  bool // TLS 1.2: empty renegotiation_info, RFC 5746
	extendedMasterSecret bool // TLS 1.2: RFC 7627
	supportedPoints      bool // TLS 1.2 ECDHE: RFC 8422, Section 5.2
	serverNameAck        bool // TLS 1.2: RFC 6066, Section 3
	sessionTicket        bool // TLS 1.2: empty SessionTicket, RFC 5077, Section 3.2
	alpnProtocol         string
	recordSizeLimit      uint16 // TLS 1.2: the server's record_size_limit, RFC 8449, Section 4
}

func addExtension(b *cryptobyte.Builder, ext uint16, f func(b *cryptobyte.Builder)) {
	b.AddUint16(ext)
	b.AddUint16LengthPrefixed(f)
}

// addRecordSizeLimit adds the server's record_size_limit (RFC 8449,
// Section 4), if limit is not 0.
func addRecordSizeLimit(b *cryptobyte.Builder, limit uint16) {
	if limit != 0 {
		addExtension(b, extensionRecordSizeLimit, func(b *cryptobyte.Builder) { b.AddUint16(limit) })
	}
}

func addALPN(b *cryptobyte.Builder, proto string) {
	addExtension(b, extensionALPN, func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(proto)) })
		})
	})
}

func (m *serverHelloMsg) marshal() []byte {
	var exts cryptobyte.Builder
	if m.supportedVersion != 0 {
		addExtension(&exts, extensionSupportedVersions, func(b *cryptobyte.Builder) { b.AddUint16(m.supportedVersion) })
	}
	if m.selectedGroup != 0 {
		addExtension(&exts, extensionKeyShare, func(b *cryptobyte.Builder) { b.AddUint16(uint16(m.selectedGroup)) })
	}
	if m.serverShare.group != 0 {
		addExtension(&exts, extensionKeyShare, func(b *cryptobyte.Builder) {
			b.AddUint16(uint16(m.serverShare.group))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.serverShare.data) })
		})
	}
	if m.pskSelected {
		addExtension(&exts, extensionPreSharedKey, func(b *cryptobyte.Builder) { b.AddUint16(m.pskIdentity) })
	}
	if m.secureRenegotiation {
		addExtension(&exts, extensionRenegotiationInfo, func(b *cryptobyte.Builder) { b.AddUint8(0) })
	}
	if m.extendedMasterSecret {
		addExtension(&exts, extensionExtendedMasterSecret, func(*cryptobyte.Builder) {})
	}
	if m.supportedPoints {
		addExtension(&exts, extensionSupportedPoints, func(b *cryptobyte.Builder) {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(pointFormatUncompressed) })
		})
	}
	if m.serverNameAck {
		addExtension(&exts, extensionServerName, func(*cryptobyte.Builder) {})
	}
	if m.alpnProtocol != "" {
		addALPN(&exts, m.alpnProtocol)
	}
	if m.sessionTicket {
		addExtension(&exts, extensionSessionTicket, func(*cryptobyte.Builder) {})
	}
	addRecordSizeLimit(&exts, m.recordSizeLimit)
	extBytes := exts.BytesOrPanic()
	return marshalHandshake(typeServerHello, func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303) // legacy_version, RFC 8446, Section 4.1.3
		b.AddBytes(m.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.sessionID) })
		b.AddUint16(m.cipherSuite)
		b.AddUint8(compressionNone)
		if len(extBytes) > 0 {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(extBytes) })
		}
	})
}

// encryptedExtensionsMsg, RFC 8446, Section 4.3.1.
type encryptedExtensionsMsg struct {
	serverNameAck   bool
	alpnProtocol    string
	recordSizeLimit uint16 // RFC 8449, Section 4: in TLS 1.3 here, never in the ServerHello
}

func (m *encryptedExtensionsMsg) marshal() []byte {
	return marshalHandshake(typeEncryptedExtensions, func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			if m.serverNameAck {
				addExtension(b, extensionServerName, func(*cryptobyte.Builder) {})
			}
			if m.alpnProtocol != "" {
				addALPN(b, m.alpnProtocol)
			}
			addRecordSizeLimit(b, m.recordSizeLimit)
		})
	})
}

// certificateRequestMsg covers TLS 1.3 (RFC 8446, Section 4.3.2) and TLS 1.2
// (RFC 5246, Section 7.4.4). The 1.3 certificate_request_context is always
// empty: the server sends only one request.
type certificateRequestMsg struct {
	tls13                  bool
	signatureAlgorithms    []tls.SignatureScheme
	certificateAuthorities [][]byte // DER distinguished names
}

func (m *certificateRequestMsg) marshal() []byte {
	addSchemes := func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, s := range m.signatureAlgorithms {
				b.AddUint16(uint16(s))
			}
		})
	}
	addCAs := func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, ca := range m.certificateAuthorities {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ca) })
			}
		})
	}
	return marshalHandshake(typeCertificateRequest, func(b *cryptobyte.Builder) {
		if !m.tls13 {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint8(certTypeRSASign)
				b.AddUint8(certTypeECDSASign)
			})
			addSchemes(b)
			addCAs(b)
			return
		}
		b.AddUint8(0) // empty certificate_request_context
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			addExtension(b, extensionSignatureAlgorithms, addSchemes)
			if len(m.certificateAuthorities) > 0 {
				addExtension(b, extensionCertificateAuthorities, addCAs)
			}
		})
	})
}

// certificateMsg is the Certificate message: RFC 5246, Section 7.4.2 for TLS
// 1.2 and RFC 8446, Section 4.4.2 for TLS 1.3 (entries carry extensions,
// which this server neither sends nor uses).
type certificateMsg struct {
	tls13        bool
	certificates [][]byte
	// entryExtensions reports a TLS 1.3 CertificateEntry that carried
	// extensions.
	entryExtensions bool
}

func (m *certificateMsg) marshal() []byte {
	return marshalHandshake(typeCertificate, func(b *cryptobyte.Builder) {
		if m.tls13 {
			b.AddUint8(0) // certificate_request_context
		}
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, c := range m.certificates {
				b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c) })
				if m.tls13 {
					b.AddUint16(0) // no per-certificate extensions
				}
			}
		})
	})
}

func (m *certificateMsg) unmarshal(body []byte) bool {
	s := cryptobyte.String(body)
	if m.tls13 {
		// The context echoes our CertificateRequest's, which is empty.
		var context cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&context) || !context.Empty() {
			return false
		}
	}
	var list cryptobyte.String
	if !s.ReadUint24LengthPrefixed(&list) || !s.Empty() {
		return false
	}
	m.certificates = nil
	for !list.Empty() {
		var cert cryptobyte.String
		if !list.ReadUint24LengthPrefixed(&cert) || cert.Empty() {
			return false
		}
		m.certificates = append(m.certificates, cert)
		if m.tls13 {
			var exts cryptobyte.String
			if !list.ReadUint16LengthPrefixed(&exts) {
				return false
			}
			for !exts.Empty() {
				var typ uint16
				var data cryptobyte.String
				if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
					return false
				}
				m.entryExtensions = true
			}
		}
	}
	return true
}

// certificateVerifyMsg, RFC 8446, Section 4.4.3 and RFC 5246, Section 7.4.8
// (with the TLS 1.2 digitally-signed struct of Section 4.7).
type certificateVerifyMsg struct {
	signatureAlgorithm tls.SignatureScheme
	signature          []byte
}

func (m *certificateVerifyMsg) marshal() []byte {
	return marshalHandshake(typeCertificateVerify, func(b *cryptobyte.Builder) {
		b.AddUint16(uint16(m.signatureAlgorithm))
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.signature) })
	})
}

// unmarshal reads a CertificateVerify. The signature is opaque
// signature<0..2^16-1> (RFC 8446, Section 4.4.3; RFC 5246, Section 4.7):
// an empty one decodes, and fails to verify (decrypt_error), as
// tlsfuzzer's test-certificate-verify-malformed.py expects.
func (m *certificateVerifyMsg) unmarshal(body []byte) bool {
	s := cryptobyte.String(body)
	return s.ReadUint16((*uint16)(&m.signatureAlgorithm)) &&
		s.ReadUint16LengthPrefixed((*cryptobyte.String)(&m.signature)) && s.Empty()
}

// serverKeyExchangeMsg carries ServerECDHParams and their signature, RFC 8422,
// Section 5.4.
type serverKeyExchangeMsg struct {
	group              tls.CurveID
	publicKey          []byte
	signatureAlgorithm tls.SignatureScheme
	signature          []byte
}

// params returns the ServerECDHParams, the part covered by the signature.
func (m *serverKeyExchangeMsg) params() []byte {
	var b cryptobyte.Builder
	b.AddUint8(3) // curve_type named_curve
	b.AddUint16(uint16(m.group))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.publicKey) })
	return b.BytesOrPanic()
}

func (m *serverKeyExchangeMsg) marshal() []byte {
	return marshalHandshake(typeServerKeyExchange, func(b *cryptobyte.Builder) {
		b.AddBytes(m.params())
		b.AddUint16(uint16(m.signatureAlgorithm))
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.signature) })
	})
}

func marshalServerHelloDone() []byte {
	return marshalHandshake(typeServerHelloDone, func(*cryptobyte.Builder) {})
}

// finishedMsg, RFC 8446, Section 4.4.4 and RFC 5246, Section 7.4.9: the
// verify_data fills the message. Appended, not built with cryptobyte
// (whose buffer grew three times), as every handshake makes one or two.
func marshalFinished(verifyData []byte) []byte {
	b := appendHandshakeHeader(make([]byte, 0, 4+len(verifyData)), typeFinished, len(verifyData))
	return append(b, verifyData...)
}

// appendHandshakeHeader appends a handshake message's header: its type and
// the uint24 length of its body (RFC 8446, Section 4; RFC 5246, Section
// 7.4), for the messages appended into a buffer of their size rather than
// built with marshalHandshake.
func appendHandshakeHeader(b []byte, typ uint8, n int) []byte { return appendUint24(append(b, typ), n) }

func appendUint24(b []byte, n int) []byte { return append(b, byte(n>>16), byte(n>>8), byte(n)) }

// parseClientKeyExchange extracts the key exchange payload: the RSA
// EncryptedPreMasterSecret (RFC 5246, Section 7.4.7.1) or the ECDH point
// (RFC 8422, Section 5.7); each is length-prefixed and must fill the message.
func parseClientKeyExchange(body []byte, rsaKex bool) ([]byte, bool) {
	s := cryptobyte.String(body)
	var v cryptobyte.String
	ok := false
	if rsaKex {
		ok = s.ReadUint16LengthPrefixed(&v)
	} else {
		ok = s.ReadUint8LengthPrefixed(&v)
	}
	// An ECPoint is <1..2^8-1> (RFC 8422, Section 5.7); an RSA-encrypted
	// premaster may be of any length, and one of the wrong length is the
	// server's to pass over (processClientKeyExchange).
	return v, ok && (rsaKex || !v.Empty()) && s.Empty()
}
