package engine

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/sha256"
	"crypto/tls"
	"encoding"
	"hash"
	mrand "math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The probes here play an outside conformance suite: each writes
// hand-assembled bytes (rawHello, written-out code points) to the engine
// over a loopback TCP connection through the relay, reads what comes back
// as a client would, and checks the alert the RFC names. Each probe is
// named after the requirement it checks.

// probeResult is what the probing client saw and what the engine reported.
type probeResult struct {
	received []byte // every byte the server sent
	alert    []byte // body of the first plaintext alert record, nil if none
	hellos   int    // ServerHellos (and HelloRetryRequests) received
	engine   StepResult
}

// probe writes the client's bytes to the engine over TCP (the relay steps
// the engine once per record) and reads until the
// server sends an alert and closes, or a ServerHello arrives.
func probe(t *testing.T, cfg Config, client []byte) probeResult {
	t.Helper()
	return probeWith(t, cfg, client, 0)
}

// probeWith stops reading after the alert or, when hellos > 0, after that
// many ServerHellos.
func probeWith(t *testing.T, cfg Config, client []byte, hellos int) probeResult {
	t.Helper()
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	serverConn, clientConn := tcpPair(t)
	deadline := time.Now().Add(20 * time.Second)
	serverConn.SetDeadline(deadline)
	clientConn.SetDeadline(deadline)
	defer serverConn.Close()
	defer clientConn.Close()
	r := &relay{h: h, keys: getPKI(t).keys, mode: splitRecords, rng: mrand.New(mrand.NewPCG(1, 2))}
	done := make(chan relayOutcome, 1)
	go func() {
		out := r.run(serverConn)
		serverConn.Close()
		done <- out
	}()
	_, err = clientConn.Write(client)
	require.NoError(t, err)

	var res probeResult
	tmp := make([]byte, 1<<16)
	for res.alert == nil && (hellos == 0 || res.hellos < hellos) {
		n, err := clientConn.Read(tmp)
		res.received = append(res.received, tmp[:n]...)
		res.alert, res.hellos = scanServerRecords(res.received)
		if err != nil {
			break
		}
	}
	clientConn.Close()
	res.engine = (<-done).last
	return res
}

// scanServerRecords reads the complete records in data: the body of the
// first plaintext alert, and how many handshake records started with a
// ServerHello.
func scanServerRecords(data []byte) (alert []byte, hellos int) {
	for {
		typ, _, body, n, err := record.Parse(data, 1<<16-1)
		if err != nil || n == 0 {
			return nil, hellos
		}
		switch {
		case typ == record.Alert:
			return slices.Clone(body), hellos
		case typ == record.Handshake && body[0] == 2:
			hellos++
		}
		data = data[n:]
	}
}

// expectProbeAlert checks that the client read a fatal alert want in a
// plaintext record, and that the engine reports the same.
func expectProbeAlert(t *testing.T, res probeResult, want Alert) {
	t.Helper()
	require.Equalf(t, []byte{alertLevelFatal, byte(want)}, res.alert,
		"client read alert %x (%v), want fatal %v; engine: %v %v (%s)", res.alert, alertName(res.alert), want,
		res.engine.State, res.engine.AlertDescription, res.engine.Reason)
	assert.Equal(t, Failed, res.engine.State)
	assert.Equal(t, want, res.engine.AlertDescription)
}

func alertName(body []byte) string {
	if len(body) != 2 {
		return "none"
	}
	return Alert(body[1]).String()
}

// probeHello is probe for a ClientHello the server must answer: it returns
// once the ServerHello (or an alert) arrives.
func probeHello(t *testing.T, cfg Config, client []byte) probeResult {
	t.Helper()
	return probeWith(t, cfg, client, 1)
}

// rawRecord is one plaintext record of type typ.
func rawRecord(typ uint8, body ...byte) []byte {
	return append([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}, body...)
}

// helloWire builds a ClientHello record from wire pieces: legacy_version
// 0x0303, the test random, and the given session ID, cipher_suites bytes
// (with their length prefix), compression methods and extensions.
func helloWire(sessionID, suites, compression []byte, exts []rawExt) []byte {
	return helloWireBlock(sessionID, suites, compression, rawHello{exts: exts}.withBlock())
}

// helloWireBlock is helloWire with the extensions block given as bytes.
func helloWireBlock(sessionID, suites, compression, extBlock []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(rawRandom)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sessionID) })
		b.AddBytes(suites)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(compression) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(extBlock) })
	})
	return record.Append(nil, record.Handshake, 0x0301, b.BytesOrPanic())
}

// Extension code points this file adds to conformance_test.go's, IANA
// "TLS ExtensionType Values".
const (
	xStatusRequest = 5
	xSCT           = 18
	xPreSharedKey  = 41
	xCookie        = 44
	xPSKModes      = 45
)

// pskOffer is a well-formed pre_shared_key extension: one identity and one
// 32-byte binder (RFC 8446, Section 4.2.11).
func pskOffer(identity []byte, binder []byte) rawExt {
	return rawExt{xPreSharedKey, pskExtension([]pskIdentity{{identity: identity}}, [][]byte{binder})}
}

var (
	pskModesDHE = rawExt{xPSKModes, []byte{1, 1}} // psk_dhe_ke
	psk         = pskOffer([]byte("ticket"), bytes.Repeat([]byte{7}, 32))
)

// sniNames encodes a server_name extension of (type, name) entries.
func sniNames(names ...rawExt) rawExt {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddUint8(uint8(n.typ))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(n.data) })
		}
	})
	return rawExt{xServerName, b.BytesOrPanic()}
}

func probeConfig(t testing.TB) Config {
	cfg := serverConfig(getPKI(t).p256)
	cfg.NextProtos = []string{"h2"}
	return cfg
}

// TestProbeClientHelloTLS13 sends TLS 1.3 ClientHellos that break one rule
// each and checks the alert the RFC names for it.
func TestProbeClientHelloTLS13(t *testing.T) {
	base := hello13()
	withSuites := func(raw []byte) []byte { return helloWire(nil, raw, nullCompression, base.exts) }
	tests := []struct {
		name  string
		hello []byte
		want  Alert
	}{
		// RFC 8446, Section 4.1.2: legacy_session_id<0..32>.
		{"4.1.2 legacy_session_id over 32 bytes is decode_error", helloWire(make([]byte, 33), u16s(suitesTLS13...), nullCompression, base.exts), alertDecodeError},
		// cipher_suites<2..2^16-2>: pairs of bytes, at least one.
		{"4.1.2 cipher_suites of odd length is decode_error", withSuites([]byte{0, 3, 0x13, 0x01, 0x13}), alertDecodeError},
		{"4.1.2 empty cipher_suites is decode_error", withSuites([]byte{0, 0}), alertDecodeError},
		{"4.1.2 empty legacy_compression_methods is decode_error", helloWire(nil, u16s(suitesTLS13...), nil, base.exts), alertDecodeError},
		// "If a TLS 1.3 ClientHello is received with any other value in
		// this field, the server MUST abort the handshake with an
		// illegal_parameter alert."
		{"4.1.2 compression methods [1] is illegal_parameter", helloWire(nil, u16s(suitesTLS13...), []byte{1}, base.exts), alertIllegalParameter},
		{"4.1.2 compression methods [0 1] is illegal_parameter", helloWire(nil, u16s(suitesTLS13...), []byte{0, 1}, base.exts), alertIllegalParameter},
		// Section 4.2: "There MUST NOT be more than one extension of the
		// same type in a given extension block."
		{"4.2 duplicate extension is rejected", base.with(extALPN("h2")).record(), alertDecodeError},
		{"4.2 truncated extension is decode_error", helloWireBlock(nil, u16s(suitesTLS13...), nullCompression,
			append(base.without(xSupportedVersions).withBlock(), 0, xSupportedVersions, 0, 5, 2, 3, 4)), alertDecodeError},
		// Section 4.2.1: supported_versions<2..254>, and no acceptable
		// version is protocol_version.
		{"4.2.1 empty supported_versions is decode_error", base.replace(rawExt{xSupportedVersions, []byte{0}}).record(), alertDecodeError},
		{"4.2.1 supported_versions of odd length is decode_error", base.replace(rawExt{xSupportedVersions, []byte{3, 3, 4, 3}}).record(), alertDecodeError},
		{"4.2.1 supported_versions with only unknown versions is protocol_version", base.replace(extVersions(0x0305, 0x7f1c, 0x0a0a)).record(), alertProtocolVersion},
		// Section 4.2.3: supported_signature_algorithms<2..2^16-2>.
		{"4.2.3 empty signature_algorithms is decode_error", base.replace(rawExt{xSignatureAlgs, []byte{0, 0}}).record(), alertDecodeError},
		{"4.2.3 signature_algorithms of odd length is decode_error", base.replace(rawExt{xSignatureAlgs, []byte{0, 3, 4, 3, 8}}).record(), alertDecodeError},
		// Section 4.2.7: named_group_list<2..2^16-1>.
		{"4.2.7 empty supported_groups is decode_error", base.replace(rawExt{xSupportedGroups, []byte{0, 0}}).record(), alertDecodeError},
		// Section 4.2.8: key_exchange<1..2^16-1>; a share for a group not in
		// supported_groups is illegal_parameter.
		{"4.2.8 zero-length key_exchange is decode_error", base.replace(extKeyShare(rawExt{0x001d, nil})).record(), alertDecodeError},
		{"4.2.8 key_share for a group not in supported_groups is illegal_parameter", base.replace(extGroups(0x0017)).record(), alertIllegalParameter},
		{"4.2.8 key_share list longer than the extension is decode_error", base.replace(rawExt{xKeyShare, []byte{0, 40, 0, 0x1d, 0, 32}}).record(), alertDecodeError},
		// Section 4.2.8.2 and 7.4.2: invalid shares are illegal_parameter.
		{"4.2.8.2 P-256 share not on the curve is illegal_parameter", base.replace(extKeyShare(rawExt{0x0017, append([]byte{4}, make([]byte, 64)...)})).record(), alertIllegalParameter},
		{"4.2.8.2 compressed P-256 share is illegal_parameter", base.replace(extKeyShare(rawExt{0x0017, shareP256.data[:33]})).record(), alertIllegalParameter},
		{"7.4.2 all-zero X25519 shared secret is illegal_parameter", base.replace(extKeyShare(rawExt{0x001d, make([]byte, 32)})).record(), alertIllegalParameter},
		// Section 4.2.9: ke_modes<1..255>.
		{"4.2.9 empty psk_key_exchange_modes is decode_error", base.with(rawExt{xPSKModes, []byte{0}}).record(), alertDecodeError},
		// Section 4.2.9: "If clients offer "pre_shared_key" without a
		// "psk_key_exchange_modes" extension, servers MUST abort the
		// handshake."
		{"4.2.9 pre_shared_key without psk_key_exchange_modes is missing_extension", base.with(psk).record(), alertMissingExtension},
		// Section 4.2.11: "Servers MUST check that it is the last extension
		// and otherwise fail the handshake with an illegal_parameter alert."
		{"4.2.11 pre_shared_key not last is illegal_parameter", base.with(pskModesDHE).with(psk).with(rawExt{0x1a1a, nil}).record(), alertIllegalParameter},
		// PskIdentity.identity<1..2^16-1>, PskBinderEntry<32..255>.
		{"4.2.11 empty PSK identity is decode_error", base.with(pskModesDHE).with(pskOffer(nil, bytes.Repeat([]byte{7}, 32))).record(), alertDecodeError},
		{"4.2.11 PSK identity without obfuscated_ticket_age is decode_error", base.with(pskModesDHE).with(rawExt{xPreSharedKey,
			[]byte{0, 3, 0, 1, 'x', 0, 33, 32, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}).record(), alertDecodeError},
		{"4.2.11 PSK binder shorter than 32 bytes is decode_error", base.with(pskModesDHE).with(pskOffer([]byte("ticket"), []byte{7})).record(), alertDecodeError},
		// Section 9.2: mandatory extensions.
		{"9.2 no supported_groups is missing_extension", base.without(xSupportedGroups).record(), alertMissingExtension},
		{"9.2 no signature_algorithms is missing_extension", base.without(xSignatureAlgs).record(), alertMissingExtension},
		// "If containing a "supported_groups" extension, it MUST also
		// contain a "key_share" extension, and vice versa", PSK or not.
		{"9.2 supported_groups without key_share is missing_extension", base.without(xKeyShare).record(), alertMissingExtension},
		{"9.2 key_share without supported_groups with a PSK is missing_extension", base.without(xSupportedGroups).with(pskModesDHE).with(psk).record(), alertMissingExtension},
		// With pre_shared_key, signature_algorithms and supported_groups
		// are optional (Section 9.2): such a ClientHello is well formed,
		// and, with no resumption, there is nothing in common.
		{"9.2 PSK-only ClientHello is handshake_failure", base.without(xSignatureAlgs).without(xSupportedGroups).without(xKeyShare).
			with(rawExt{xPSKModes, []byte{1, 0}}).with(psk).record(), alertHandshakeFailure},
		// Section 4.2.3: "If a server is authenticating via a certificate
		// and the client has not sent a "signature_algorithms" extension,
		// then the server MUST abort the handshake with a
		// "missing_extension" alert", a PSK offered or not.
		{"4.2.3 PSK with (EC)DHE but no signature_algorithms, no tickets, is missing_extension", base.without(xSignatureAlgs).with(pskModesDHE).with(psk).record(), alertMissingExtension},
		// RFC 6066, Section 3: "The ServerNameList MUST NOT contain more
		// than one name of the same name_type"; HostName<1..2^16-1>.
		// RFC 6066 names no alert; see checkHostNames.
		{"RFC 6066 3 two host_names is illegal_parameter", base.replace(sniNames(rawExt{0, []byte("p256.example.com")}, rawExt{0, []byte("rsa.example.com")})).record(), alertIllegalParameter},
		{"RFC 6066 3 data after the server_name list is decode_error", base.replace(rawExt{xServerName, append(extSNI("p256.example.com").data, 0)}).record(), alertDecodeError},
		{"RFC 6066 3 empty host_name is decode_error", base.replace(sniNames(rawExt{0, nil})).record(), alertDecodeError},
		{"RFC 6066 3 empty server_name list is decode_error", base.replace(rawExt{xServerName, []byte{0, 0}}).record(), alertDecodeError},
		{"RFC 6066 3 NUL in host_name is illegal_parameter", base.replace(extSNI("p256.example.com\x00.evil")).record(), alertIllegalParameter},
		// RFC 7301, Section 3.1: ProtocolName<1..2^8-1>,
		// protocol_name_list<2..2^16-1>; Section 3.2: no overlap is
		// no_application_protocol.
		{"RFC 7301 3.1 empty protocol name is decode_error", base.replace(extALPN("h2", "")).record(), alertDecodeError},
		{"RFC 7301 3.1 empty protocol list is decode_error", base.replace(rawExt{xALPN, []byte{0, 0}}).record(), alertDecodeError},
		{"RFC 7301 3.1 protocol list longer than the extension is decode_error", base.replace(rawExt{xALPN, []byte{0, 4, 2, 'h', '2'}}).record(), alertDecodeError},
		{"RFC 7301 3.2 no common protocol is no_application_protocol", base.replace(extALPN("spdy/1", "http/1.1")).record(), alertNoApplicationProtocol},
		// Extensions whose ClientHello form is empty: RFC 7627, Section
		// 5.1; RFC 8446, Section 4.2.10; RFC 6962, Section 3.3.1.
		{"RFC 7627 5.1 extended_master_secret with data is decode_error", base.with(rawExt{xExtendedMaster, []byte{0}}).record(), alertDecodeError},
		{"4.2.10 early_data with data in a ClientHello is decode_error", base.with(rawExt{xEarlyData, []byte{0, 0, 0, 0}}).record(), alertDecodeError},
		{"RFC 6962 3.3.1 signed_certificate_timestamp with data is decode_error", base.with(rawExt{xSCT, []byte{0}}).record(), alertDecodeError},
		// RFC 6066, Section 8: CertificateStatusRequest is status_type
		// then, for ocsp, responder_id_list<0..2^16-1> and
		// request_extensions<0..2^16-1>.
		{"RFC 6066 8 empty status_request is decode_error", base.with(rawExt{xStatusRequest, nil}).record(), alertDecodeError},
		{"RFC 6066 8 OCSP status_request without request_extensions is decode_error", base.with(rawExt{xStatusRequest, []byte{1, 0, 0}}).record(), alertDecodeError},
		{"RFC 6066 8 OCSP status_request with data after it is decode_error", base.with(rawExt{xStatusRequest, []byte{1, 0, 0, 0, 0, 0}}).record(), alertDecodeError},
		{"RFC 6066 8 empty ResponderID is decode_error", base.with(rawExt{xStatusRequest, []byte{1, 0, 2, 0, 0, 0, 0}}).record(), alertDecodeError},
		// Every list extension: data after the list is decode_error.
		{"4.2.7 supported_groups of odd length is decode_error", base.replace(rawExt{xSupportedGroups, []byte{0, 3, 0, 0x1d, 0}}).record(), alertDecodeError},
		{"4.2.7 data after supported_groups is decode_error", base.replace(rawExt{xSupportedGroups, append(u16s(0x001d), 0)}).record(), alertDecodeError},
		{"4.2.8 data after key_share is decode_error", base.replace(rawExt{xKeyShare, append(extKeyShare(shareX25519).data, 0)}).record(), alertDecodeError},
		{"4.2.1 data after supported_versions is decode_error", base.replace(rawExt{xSupportedVersions, append(extVersions(0x0304).data, 0)}).record(), alertDecodeError},
		{"4.2.3 empty signature_algorithms_cert is decode_error", base.with(rawExt{50, []byte{0, 0}}).record(), alertDecodeError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectProbeAlert(t, probeHello(t, probeConfig(t), tc.hello), tc.want)
		})
	}
	// RFC 6066, Section 3: no IP literals in HostName; one that comes
	// anyway counts as no name (TestIPLiteralServerName), as crypto/tls
	// and rustls servers take it.
	for _, ip := range []string{"192.0.2.1", "2001:db8::1"} {
		res := probeHello(t, probeConfig(t), base.replace(extSNI(ip)).record())
		assert.Nil(t, res.alert, "server_name %s: alert %v (%s)", ip, alertName(res.alert), res.engine.Reason)
		assert.Equal(t, 1, res.hellos, "server_name %s: the ServerHello", ip)
	}
}

// withBlock returns the extensions of h as an extensions block.
func (h rawHello) withBlock() []byte {
	var b cryptobyte.Builder
	for _, e := range h.exts {
		b.AddUint16(e.typ)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
	}
	return b.BytesOrPanic()
}

// handshakeRecord wraps one handshake message of type typ in a record.
func handshakeRecord(typ uint8, body []byte) []byte {
	msg := append([]byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return record.Append(nil, record.Handshake, 0x0303, msg)
}

// ecPoint is a ClientKeyExchange body carrying point (RFC 8422, Section 5.7).
func ecPoint(point []byte) []byte { return append([]byte{byte(len(point))}, point...) }

// TestProbeClientHelloTLS12 covers the TLS 1.2 ClientHello rules.
func TestProbeClientHelloTLS12(t *testing.T) {
	base := hello12()
	tests := []struct {
		name  string
		hello []byte
		want  Alert
	}{
		// RFC 5246, Section 7.4.1.2: the list MUST contain null; a server
		// finding nothing acceptable sends handshake_failure (Section
		// 7.4.1.3), as crypto/tls does.
		{"RFC 5246 7.4.1.2 compression methods without null is handshake_failure", helloWire(nil, u16s(suitesTLS12...), []byte{1}, base.exts), alertHandshakeFailure},
		// RFC 8422, Section 5.1.2: "If the client sends the extension and
		// the extension does not contain the uncompressed point format,
		// and the client has used the Supported Groups extension to
		// indicate support for any of the curves defined in this
		// specification, then the server MUST abort the handshake and
		// return an illegal_parameter alert."
		{"RFC 8422 5.1.2 ec_point_formats without uncompressed is illegal_parameter", base.replace(rawExt{xECPointFormats, []byte{1, 1}}).record(), alertIllegalParameter},
		{"RFC 8422 5.1.2 empty ec_point_formats is decode_error", base.replace(rawExt{xECPointFormats, []byte{0}}).record(), alertDecodeError},
		// RFC 5746, Section 3.6: non-empty renegotiated_connection is
		// handshake_failure.
		{"RFC 5746 3.6 non-empty renegotiation_info is handshake_failure", base.replace(rawExt{xRenegotiationInfo, []byte{12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}).record(), alertHandshakeFailure},
		{"RFC 5746 3.2 renegotiation_info longer than its extension is decode_error", base.replace(rawExt{xRenegotiationInfo, []byte{1}}).record(), alertDecodeError},
		// RFC 9155, Section 4: without signature_algorithms "the server
		// MUST abort the handshake with a handshake_failure alert, except
		// when digital signatures are not used".
		{"RFC 9155 4 no signature_algorithms with ECDHE_ECDSA is handshake_failure", base.without(xSignatureAlgs).record(), alertHandshakeFailure},
		// RFC 7507, Section 3.
		{"RFC 7507 3 TLS_FALLBACK_SCSV below the best version is inappropriate_fallback", helloWire(nil, u16s(0xc02b, 0x5600), nullCompression, base.exts), alertInappropriateFallback},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectProbeAlert(t, probeHello(t, probeConfig(t), tc.hello), tc.want)
		})
	}
}

// TestProbeClientKeyExchangeTLS12 sends a ClientHello and a second flight
// that breaks one rule, in one write; the server's first flight is not
// needed to break it.
func TestProbeClientKeyExchangeTLS12(t *testing.T) {
	helloP256 := hello12().replace(extGroups(0x0017)).record()
	// X25519 for the key exchange (the server prefers it); P-256 too, for
	// the P-256 certificate (RFC 8422, Section 5.1).
	helloX25519 := hello12().replace(extGroups(0x001d, 0x0017)).record()
	goodP256 := handshakeRecord(typeClientKeyExchange, ecPoint(p256Client.PublicKey().Bytes()))
	notOnCurve := append([]byte{4}, bytes.Repeat([]byte{1}, 64)...)
	ccs := rawRecord(20, 1)
	tests := []struct {
		name   string
		flight [][]byte
		want   Alert
	}{
		// RFC 8422, Section 5.7 and RFC 8446, Section 4.2.8.2 (which RFC
		// 8422 refers to): a point off the curve, the point at infinity
		// and a compressed point are refused with illegal_parameter, as
		// crypto/tls does.
		{"RFC 8422 5.7 point not on the curve is illegal_parameter", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, ecPoint(notOnCurve))}, alertIllegalParameter},
		{"RFC 8422 5.7 point at infinity is illegal_parameter", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, ecPoint([]byte{0}))}, alertIllegalParameter},
		{"RFC 8422 5.7 compressed point is illegal_parameter", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, ecPoint(p256Client.PublicKey().Bytes()[:33]))}, alertIllegalParameter},
		{"RFC 8422 5.7 point of the wrong length is illegal_parameter", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, ecPoint(p256Client.PublicKey().Bytes()[:64]))}, alertIllegalParameter},
		// RFC 7748, Section 6.1: the all-zero shared secret is refused.
		{"RFC 7748 6.1 X25519 all-zero shared secret is illegal_parameter", [][]byte{helloX25519, handshakeRecord(typeClientKeyExchange, ecPoint(make([]byte, 32)))}, alertIllegalParameter},
		// Framing: the point's length prefix must match (RFC 8446,
		// Section 6: decode_error for an incorrect length).
		{"RFC 8422 5.7 point length prefix past the message is decode_error", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, append([]byte{66}, p256Client.PublicKey().Bytes()...))}, alertDecodeError},
		{"RFC 8422 5.7 data after the point is decode_error", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, append(ecPoint(p256Client.PublicKey().Bytes()), 0))}, alertDecodeError},
		{"RFC 8422 5.7 empty ClientKeyExchange is decode_error", [][]byte{helloP256, handshakeRecord(typeClientKeyExchange, nil)}, alertDecodeError},
		// RFC 5246, Section 7.3: the message order is fixed.
		{"RFC 5246 7.3 ChangeCipherSpec before ClientKeyExchange is unexpected_message", [][]byte{helloP256, ccs}, alertUnexpectedMessage},
		{"RFC 5246 7.3 Finished before ChangeCipherSpec is unexpected_message", [][]byte{helloP256, goodP256, handshakeRecord(typeFinished, make([]byte, 12))}, alertUnexpectedMessage},
		{"RFC 5246 7.3 Certificate unrequested is unexpected_message", [][]byte{helloP256, handshakeRecord(typeCertificate, []byte{0, 0, 0})}, alertUnexpectedMessage},
		{"RFC 5246 7.3 CertificateVerify without a certificate is unexpected_message", [][]byte{helloP256, goodP256, handshakeRecord(typeCertificateVerify, []byte{4, 3, 0, 1, 0})}, alertUnexpectedMessage},
		{"RFC 5246 7.3 second ClientKeyExchange is unexpected_message", [][]byte{helloP256, goodP256, goodP256}, alertUnexpectedMessage},
		// RFC 5246, Section 7.1: the ChangeCipherSpec message is a single
		// byte of value 1; the engine refuses others with
		// unexpected_message, as RFC 8446, Section 5 requires in TLS 1.3.
		{"RFC 5246 7.1 ChangeCipherSpec of value 2 is refused", [][]byte{helloP256, goodP256, rawRecord(20, 2)}, alertUnexpectedMessage},
		{"RFC 5246 7.1 ChangeCipherSpec of two bytes is refused", [][]byte{helloP256, goodP256, rawRecord(20, 1, 1)}, alertUnexpectedMessage},
		// RFC 5246, Section 7.4.1.1: HelloRequest is the server's.
		{"RFC 5246 7.4.1.1 HelloRequest from the client is unexpected_message", [][]byte{helloP256, handshakeRecord(typeHelloRequest, nil)}, alertUnexpectedMessage},
		// RFC 5246, Section 6.2.1 and RFC 8446, Section 5.1: handshake
		// messages MUST NOT be interleaved with other record types.
		{"RFC 8446 5.1 ChangeCipherSpec inside a fragmented ClientKeyExchange is unexpected_message", [][]byte{helloP256, record.Append(nil, record.Handshake, 0x0303, goodP256[5:15]), ccs}, alertUnexpectedMessage},
		{"RFC 8446 5.1 alert inside a fragmented ClientKeyExchange is unexpected_message", [][]byte{helloP256, record.Append(nil, record.Handshake, 0x0303, goodP256[5:15]), rawRecord(21, 1, 0)}, alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectProbeAlert(t, probe(t, probeConfig(t), slices.Concat(tc.flight...)), tc.want)
		})
	}
}

// TestProbeRecordLayer covers RFC 8446, Section 5 and RFC 5246, Section 6
// on the first flight.
func TestProbeRecordLayer(t *testing.T) {
	hello := hello13().record()
	msg := hello[record.HeaderLen:]
	frag := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, record.Append(nil, record.Handshake, 0x0301, p)...)
		}
		return out
	}
	tests := []struct {
		name string
		in   []byte
		want Alert
	}{
		// Section 5: "If a TLS implementation receives an unexpected
		// record type, it MUST terminate the connection with an
		// unexpected_message alert."
		{"5 unknown record type is unexpected_message", rawRecord(99, 1, 2, 3), alertUnexpectedMessage},
		{"5 heartbeat record is unexpected_message", rawRecord(24, 1, 0, 16), alertUnexpectedMessage},
		{"5 application_data before the handshake is unexpected_message", rawRecord(23, 1, 2, 3), alertUnexpectedMessage},
		{"5 change_cipher_spec before the ClientHello is unexpected_message", rawRecord(20, 1), alertUnexpectedMessage},
		{"5 empty application_data before the handshake is unexpected_message", rawRecord(23), alertUnexpectedMessage},
		// Section 5.1: "Implementations MUST NOT send zero-length
		// fragments of Handshake types".
		{"5.1 zero-length handshake record is unexpected_message", rawRecord(22), alertUnexpectedMessage},
		// "Handshake messages MUST NOT be interleaved with other record
		// types."
		{"5.1 alert inside a fragmented ClientHello is unexpected_message", slices.Concat(frag(msg[:50]), rawRecord(21, 1, 0), frag(msg[50:])), alertUnexpectedMessage},
		{"5.1 change_cipher_spec inside a fragmented ClientHello is unexpected_message", slices.Concat(frag(msg[:50]), rawRecord(20, 1), frag(msg[50:])), alertUnexpectedMessage},
		{"5.1 application_data inside a fragmented ClientHello is unexpected_message", slices.Concat(frag(msg[:50]), rawRecord(23, 1), frag(msg[50:])), alertUnexpectedMessage},
		// Section 5.1: length MUST NOT exceed 2^14; record_overflow.
		{"5.1 plaintext record over 2^14 bytes is record_overflow", append([]byte{22, 3, 1, 0x40, 0x01}, make([]byte, 1<<14+1)...), alertRecordOverflow},
		// RFC 8446, Section 5.1 lets the version be ignored, but a major
		// version other than 3 is not TLS (crypto/tls refuses it too).
		{"5.1 record major version 2 is refused", []byte{22, 2, 0, 0, 4, 1, 0, 0, 0}, alertDecodeError},
		// Section 6: an alert record of other than two bytes.
		{"6 alert of three bytes is decode_error", rawRecord(21, 2, 40, 0), alertDecodeError},
		{"6 alert of one byte is decode_error", rawRecord(21, 2), alertDecodeError},
		// Section 4: an unknown handshake message type.
		{"4 unknown handshake message type is unexpected_message", handshakeRecord(99, []byte{1, 2}), alertUnexpectedMessage},
		{"4 handshake message other than ClientHello first is unexpected_message", handshakeRecord(typeKeyUpdate, []byte{0}), alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expectProbeAlert(t, probe(t, probeConfig(t), tc.in), tc.want)
		})
	}
	// A ClientHello in one-byte fragments is a ClientHello (Section 5.1:
	// messages may be fragmented across records).
	t.Run("5.1 ClientHello in one-byte records is answered", func(t *testing.T) {
		var parts [][]byte
		for i := range msg {
			parts = append(parts, msg[i:i+1])
		}
		res := probeHello(t, probeConfig(t), frag(parts...))
		assert.Nil(t, res.alert, "alert %v", alertName(res.alert))
		assert.True(t, res.hellos > 0, "ServerHello")
	})
	// Section 5.1: legacy_record_version "MUST be ignored for all
	// purposes" (within TLS's major version 3), and a ClientHello larger
	// than a record spans several.
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"5.1 record version 0x0300 is ignored", append([]byte{22, 3, 0}, hello[3:]...)},
		{"5.1 record version 0x0304 is ignored", append([]byte{22, 3, 4}, hello[3:]...)},
		{"5.1 ClientHello over 2^14 bytes across two records is answered", func() []byte {
			big := hello13().with(rawExt{21, make([]byte, 1<<14)}).message() // padding, RFC 7685
			return frag(big[:1<<14], big[1<<14:])
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := probeHello(t, probeConfig(t), tc.in)
			assert.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
			assert.Equal(t, 1, res.hellos, "ServerHello")
		})
	}
	// Section 6: the client's alerts end the handshake; nothing answers
	// them, whatever their level.
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"warning close_notify", []byte{1, 0}},
		{"warning user_canceled", []byte{1, 90}},
		{"fatal handshake_failure", []byte{2, 40}},
		{"warning unknown description", []byte{1, 255}},
	} {
		t.Run("6 client "+tc.name+" during the handshake ends it silently", func(t *testing.T) {
			h12 := hello12().record()
			res := probe(t, probeConfig(t), slices.Concat(h12, rawRecord(21, tc.body...)))
			assert.Nil(t, res.alert, "the server answered the client's alert with %v", alertName(res.alert))
			assert.Equal(t, Failed, res.engine.State)
			assert.Equal(t, Alert(tc.body[1]), res.engine.AlertDescription)
		})
	}
}

// TestProbeGREASE: RFC 8701, Section 3: "servers MUST NOT negotiate any
// GREASE value when offered in a ClientHello" and, as for any unknown
// value, ignore it. Every list of the ClientHello carries one here, and the
// server answers with real values only.
func TestProbeGREASE(t *testing.T) {
	const g1, g2 = 0x0a0a, 0xdada
	greaseExt := func(h rawHello) rawHello {
		return h.with(rawExt{g1, nil}).with(rawExt{g2, []byte{0}})
	}
	tls13 := hello13()
	tls13.suites = []uint16{g1, 0x1301}
	tls13 = greaseExt(tls13.replace(extGroups(g2, 0x001d, 0x0017)).
		replace(extKeyShare(rawExt{g2, []byte{0}}, shareX25519)).
		replace(rawExt{xSignatureAlgs, u16s(g1, 0x0403, 0x0804)}).
		replace(extVersions(g1, 0x0304, 0x0303)).
		replace(extALPN("\x1a\x1a", "h2")).
		with(rawExt{xPSKModes, []byte{2, 0x2a, 1}})) // GREASE psk mode, RFC 8701, Section 2
	tls12 := hello12()
	tls12.suites = []uint16{g1, 0xc02b}
	tls12 = greaseExt(tls12.replace(extGroups(g2, 0x0017)).
		replace(rawExt{xSignatureAlgs, u16s(g1, 0x0403)}).
		replace(extALPN("\x3a\x3a", "h2")))
	for _, tc := range []struct {
		name  string
		hello rawHello
		vers  uint16
		suite uint16
	}{
		{"TLS 1.3", tls13, 0x0304, 0x1301},
		{"TLS 1.2", tls12, 0x0303, 0xc02b},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := probeHello(t, probeConfig(t), tc.hello.record())
			require.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
			require.True(t, res.hellos > 0)
			msgs, _ := plaintextMessages(t, res.received)
			sh := parseServerHello(t, msgs[0])
			assert.Equal(t, tc.suite, sh.suite)
			if v, ok := sh.ext(xSupportedVersions); ok {
				assert.Equal(t, []byte{byte(tc.vers >> 8), byte(tc.vers)}, v)
			} else {
				assert.Equal(t, tc.vers, sh.version)
			}
			if ks, ok := sh.ext(xKeyShare); ok {
				assert.Equal(t, []byte{0x00, 0x1d}, ks[:2], "key share group")
			}
			for _, e := range sh.exts {
				assert.NotEqual(t, uint16(0x0a0a), e.typ&0x0f0f, "GREASE extension %#04x in the ServerHello", e.typ)
			}
			if tc.vers == 0x0303 {
				alpn, ok := sh.ext(xALPN)
				require.True(t, ok)
				assert.Equal(t, extALPN("h2").data, alpn)
			}
		})
	}
}

// client13 is a raw TLS 1.3 client over TCP: it sends a ClientHello with
// x25519Client's share, reads the server's flight under keys it derives
// itself, and then sends whatever second flight the probe wants, protected
// under the client handshake traffic keys. It reads the server's alert
// under the server application traffic keys, as RFC 8446, Section 7.1 and
// Appendix A.2 have the server send it.
type client13 struct {
	t          *testing.T
	conn       net.Conn
	buf        []byte
	transcript hash.Hash
	in, out    *record.Cipher
	clientHS   []byte
	master     []byte // master secret, for the resumption secrets
	serverMsgs []serverMsg
	done       chan relayOutcome
	hello      helloFields  // the server's ServerHello
	outcome    relayOutcome // the relay's, once send has returned
	// protected are the lengths of the protected records read (RFC 8446,
	// Section 5.2: outer type application_data).
	protected []int
}

// startProbeRelay runs a handshake with cfg behind a loopback TCP
// connection, the engine stepped once per record, and returns the client's
// end and where the relay's outcome arrives.
func startProbeRelay(t *testing.T, cfg Config) (net.Conn, chan relayOutcome) {
	t.Helper()
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	serverConn, clientConn := tcpPair(t)
	deadline := time.Now().Add(20 * time.Second)
	serverConn.SetDeadline(deadline)
	clientConn.SetDeadline(deadline)
	t.Cleanup(func() { serverConn.Close(); clientConn.Close() })
	done := make(chan relayOutcome, 1)
	r := &relay{h: h, keys: getPKI(t).keys, mode: splitRecords, rng: mrand.New(mrand.NewPCG(1, 2))}
	go func() {
		out := r.run(serverConn)
		serverConn.Close()
		done <- out
	}()
	return clientConn, done
}

func dial13(t *testing.T, cfg Config, hello rawHello) *client13 {
	t.Helper()
	clientConn, done := startProbeRelay(t, cfg)
	c := &client13{t: t, conn: clientConn, transcript: sha256.New(), done: done}
	msg := hello.message()
	c.transcript.Write(msg)
	_, err := clientConn.Write(hello.record())
	require.NoError(t, err)

	// ServerHello, in plaintext.
	typ, body := c.readRecord()
	for typ == record.ChangeCipherSpec {
		typ, body = c.readRecord()
	}
	require.Equal(t, record.Handshake, typ, "ServerHello record")
	sh := splitMessages(t, body)[0]
	c.transcript.Write(sh.raw)
	c.hello = parseServerHello(t, sh)
	share, ok := c.hello.ext(xKeyShare)
	require.True(t, ok)
	peer, err := ecdh.X25519().NewPublicKey(share[4:])
	require.NoError(t, err)
	shared, err := x25519Client.ECDH(peer)
	require.NoError(t, err)
	hsSecret := newEarlySecret13(crypto.SHA256, nil).handshakeSecret(shared)
	clientHS, serverHS := hsSecret.trafficSecrets(c.transcript.Sum(nil))
	c.clientHS = clientHS
	c.in, err = record.NewTLS13Cipher(0x1301, serverHS, 0)
	require.NoError(t, err)
	c.out, err = record.NewTLS13Cipher(0x1301, c.clientHS, 0)
	require.NoError(t, err)

	// EncryptedExtensions through Finished, under the server handshake keys.
	var hs []byte
	for !slices.ContainsFunc(c.serverMsgs, func(m serverMsg) bool { return m.typ == typeFinished }) {
		typ, body := c.readRecord()
		if typ == record.ChangeCipherSpec {
			continue
		}
		inner, pt, err := c.in.Open(typ, 0x0303, body)
		require.NoError(t, err, "server handshake record")
		require.Equal(t, record.Handshake, inner)
		hs = append(hs, pt...)
		if !wholeMessages(hs) {
			continue // a message spans records (a small record_size_limit)
		}
		c.serverMsgs = nil
		for _, m := range splitMessages(t, hs) {
			c.serverMsgs = append(c.serverMsgs, serverMsg{typ: m.typ, body: slices.Clone(m.body), raw: slices.Clone(m.raw)})
		}
	}
	for _, m := range c.serverMsgs {
		c.transcript.Write(m.raw)
	}
	master := hsSecret.masterSecret()
	c.master = master.secret
	_, serverAP := master.trafficSecrets(c.transcript.Sum(nil))
	c.in, err = record.NewTLS13Cipher(0x1301, serverAP, 0)
	require.NoError(t, err)
	return c
}

// wholeMessages reports whether data ends where a handshake message ends.
func wholeMessages(data []byte) bool {
	for len(data) >= 4 {
		n := 4 + (int(data[1])<<16 | int(data[2])<<8 | int(data[3]))
		if len(data) < n {
			return false
		}
		data = data[n:]
	}
	return len(data) == 0
}

// readRecord returns the next record from the server.
func (c *client13) readRecord() (record.ContentType, []byte) {
	c.t.Helper()
	tmp := make([]byte, 1<<16)
	for {
		typ, _, body, n, err := record.Parse(c.buf, 1<<16-1)
		require.NoError(c.t, err)
		if n > 0 {
			c.buf = c.buf[n:]
			c.noteProtected(typ, body)
			return typ, slices.Clone(body)
		}
		m, err := c.conn.Read(tmp)
		require.NoError(c.t, err, "reading the server's flight")
		c.buf = append(c.buf, tmp[:m]...)
	}
}

// noteProtected counts a protected record the client read.
func (c *client13) noteProtected(typ record.ContentType, body []byte) {
	if typ == record.ApplicationData {
		c.protected = append(c.protected, len(body))
	}
}

// seal protects content of type typ under the client handshake keys.
func (c *client13) seal(typ record.ContentType, content []byte) []byte {
	rec, err := c.out.Seal(nil, typ, content, 0)
	require.NoError(c.t, err)
	return rec
}

// sealInner protects inner as the whole TLSInnerPlaintext of the client's
// first protected record (RFC 8446, Section 5.2), by hand: record.Cipher
// refuses to build the malformed ones.
func (c *client13) sealInner(inner []byte) []byte {
	suite, ok := record.SuiteByID(0x1301)
	require.True(c.t, ok)
	key, iv := record.TrafficKeys(suite, c.clientHS)
	block, err := aes.NewCipher(key)
	require.NoError(c.t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(c.t, err)
	n := len(inner) + aead.Overhead()
	header := []byte{23, 3, 3, byte(n >> 8), byte(n)}
	return aead.Seal(header, iv, inner, header) // sequence number 0: the nonce is the IV
}

// finished is the client's correct Finished message after msgs.
func (c *client13) finished(msgs ...[]byte) []byte {
	// The transcript so far, then msgs.
	th := sha256.New()
	state := c.transcript.(encoding.BinaryMarshaler)
	saved, err := state.MarshalBinary()
	require.NoError(c.t, err)
	require.NoError(c.t, th.(encoding.BinaryUnmarshaler).UnmarshalBinary(saved))
	for _, m := range msgs {
		th.Write(m)
	}
	return marshalFinished(finishedVerifyData13(crypto.SHA256, c.clientHS, th.Sum(nil)))
}

// send writes raw bytes, then reads to the end: it returns the body of the
// alert the server sent (opened under the server application traffic keys
// if protected) and what the engine reported.
func (c *client13) send(raw []byte) ([]byte, StepResult) {
	c.t.Helper()
	_, err := c.conn.Write(raw)
	require.NoError(c.t, err)
	var alert []byte
	tmp := make([]byte, 1<<16)
	for alert == nil {
		typ, _, body, n, err := record.Parse(c.buf, 1<<16-1)
		require.NoError(c.t, err)
		if n == 0 {
			m, err := c.conn.Read(tmp)
			if err != nil {
				break
			}
			c.buf = append(c.buf, tmp[:m]...)
			continue
		}
		c.buf = c.buf[n:]
		c.noteProtected(typ, body)
		switch typ {
		case record.Alert:
			alert = slices.Clone(body)
		case record.ApplicationData:
			inner, pt, err := c.in.Open(typ, 0x0303, slices.Clone(body))
			require.NoError(c.t, err, "opening the server's record under its application traffic keys")
			if inner == record.Alert {
				alert = slices.Clone(pt)
			}
		}
	}
	c.conn.Close()
	c.outcome = <-c.done
	return alert, c.outcome.last
}

// expectAlert13 checks the alert the client read and the engine's report.
func expectAlert13(t *testing.T, alert []byte, res StepResult, want Alert) {
	t.Helper()
	require.Equalf(t, []byte{alertLevelFatal, byte(want)}, alert, "client read alert %x (%v), want fatal %v; engine: %v %v (%s)",
		alert, alertName(alert), want, res.State, res.AlertDescription, res.Reason)
	assert.Equal(t, want, res.AlertDescription)
}

// TestProbeSecondFlightTLS13 breaks the client's second TLS 1.3 flight.
func TestProbeSecondFlightTLS13(t *testing.T) {
	tests := []struct {
		name   string
		flight func(c *client13) []byte
		want   Alert
	}{
		// RFC 8446, Section 4.6.3: "Implementations that receive a
		// KeyUpdate message prior to receiving a Finished message MUST
		// terminate the connection with an "unexpected_message" alert."
		{"4.6.3 KeyUpdate before Finished is unexpected_message", func(c *client13) []byte {
			return c.seal(record.Handshake, []byte{typeKeyUpdate, 0, 0, 1, 0})
		}, alertUnexpectedMessage},
		// Section 4.4.4: a wrong Finished is decrypt_error.
		{"4.4.4 wrong verify_data is decrypt_error", func(c *client13) []byte {
			f := c.finished()
			f[len(f)-1] ^= 1
			return c.seal(record.Handshake, f)
		}, alertDecryptError},
		// verify_data is opaque[Hash.length]: a Finished of another length
		// cannot be decoded (Section 6.2), as OpenSSL answers.
		{"4.4.4 Finished of Hash.length-1 bytes is decode_error", func(c *client13) []byte {
			f := c.finished()
			return c.seal(record.Handshake, append([]byte{typeFinished, 0, 0, 31}, f[4:35]...))
		}, alertDecodeError},
		{"4.4.4 Finished of Hash.length+1 bytes is decode_error", func(c *client13) []byte {
			f := c.finished()
			return c.seal(record.Handshake, append([]byte{typeFinished, 0, 0, 33}, append(f[4:], 0)...))
		}, alertDecodeError},
		// The header alone decides: no waiting for the rest of a Finished
		// longer than Hash.length, or of a message the state does not
		// expect (as clientfinished answers for the edge).
		{"4.4.4 Finished header of Hash.length+1 bytes, Hash.length sent, is decode_error", func(c *client13) []byte {
			f := c.finished()
			return c.seal(record.Handshake, append([]byte{typeFinished, 0, 0, 33}, f[4:]...))
		}, alertDecodeError},
		{"4.4.4 Finished header of 2^24-1 bytes is decode_error", func(c *client13) []byte {
			f := c.finished()
			return c.seal(record.Handshake, append([]byte{typeFinished, 0xff, 0xff, 0xff}, f[4:]...))
		}, alertDecodeError},
		{"4 KeyUpdate header of 100 bytes before Finished is unexpected_message", func(c *client13) []byte {
			return c.seal(record.Handshake, []byte{typeKeyUpdate, 0, 0, 100, 0})
		}, alertUnexpectedMessage},
		// Section 4.5: EndOfEarlyData only after accepted early data.
		{"4.5 EndOfEarlyData without early data is unexpected_message", func(c *client13) []byte {
			return c.seal(record.Handshake, []byte{typeEndOfEarlyData, 0, 0, 0})
		}, alertUnexpectedMessage},
		{"4.4.2 Certificate without CertificateRequest is unexpected_message", func(c *client13) []byte {
			return c.seal(record.Handshake, []byte{typeCertificate, 0, 0, 4, 0, 0, 0, 0})
		}, alertUnexpectedMessage},
		{"4 second ClientHello without HelloRetryRequest is unexpected_message", func(c *client13) []byte {
			return c.seal(record.Handshake, hello13().message())
		}, alertUnexpectedMessage},
		// Section 5: protected handshake data after the keys changed,
		// never plaintext.
		{"5 plaintext handshake record after ServerHello is unexpected_message", func(c *client13) []byte {
			return handshakeRecord(typeFinished, c.finished()[4:])
		}, alertUnexpectedMessage},
		// Section 5: "An implementation which receives any other
		// change_cipher_spec value [...] MUST abort the handshake with an
		// "unexpected_message" alert."
		{"5 change_cipher_spec of value 2 is unexpected_message", func(c *client13) []byte {
			return rawRecord(20, 2)
		}, alertUnexpectedMessage},
		{"5 application data before Finished is unexpected_message", func(c *client13) []byte {
			return c.seal(record.ApplicationData, []byte("early"))
		}, alertUnexpectedMessage},
		// Section 5.2: "If the decryption fails, the receiver MUST
		// terminate the connection with a "bad_record_mac" alert."
		{"5.2 record that fails to decrypt is bad_record_mac", func(c *client13) []byte {
			rec := c.seal(record.Handshake, c.finished())
			rec[len(rec)-1] ^= 1
			return rec
		}, alertBadRecordMAC},
		// Section 5.2: length MUST NOT exceed 2^14 + 256.
		{"5.2 protected record over 2^14+256 bytes is record_overflow", func(c *client13) []byte {
			return append([]byte{23, 3, 3, 0x41, 0x01}, make([]byte, 1<<14+257)...)
		}, alertRecordOverflow},
		// Section 5.4: a protected Handshake record with zero-length
		// content MUST be refused with unexpected_message.
		{"5.4 empty protected handshake fragment is unexpected_message", func(c *client13) []byte {
			return c.sealInner([]byte{byte(record.Handshake)})
		}, alertUnexpectedMessage},
		{"5.4 empty protected alert is unexpected_message", func(c *client13) []byte {
			return c.sealInner([]byte{byte(record.Alert)})
		}, alertUnexpectedMessage},
		{"5.4 inner plaintext without a content type is unexpected_message", func(c *client13) []byte {
			return c.sealInner(make([]byte, 8))
		}, alertUnexpectedMessage},
		{"5.4 inner plaintext over 2^14+1 bytes is record_overflow", func(c *client13) []byte {
			return c.sealInner(append(make([]byte, 1<<14+1), byte(record.Handshake)))
		}, alertRecordOverflow},
		// Section 4.2.10: a server that does not accept early data and
		// gets none skips nothing: data under the wrong keys is
		// bad_record_mac.
		{"4.2.10 application data under unknown keys without early_data is bad_record_mac", func(c *client13) []byte {
			return rawRecord(23, bytes.Repeat([]byte{0xee}, 40)...)
		}, alertBadRecordMAC},
		// RFC 8446, Section 5.1: no interleaving of other record types
		// inside a fragmented handshake message.
		{"5.1 alert inside a fragmented Finished is unexpected_message", func(c *client13) []byte {
			f := c.finished()
			return slices.Concat(c.seal(record.Handshake, f[:10]), c.seal(record.Alert, []byte{1, 0}), c.seal(record.Handshake, f[10:]))
		}, alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial13(t, probeConfig(t), hello13())
			alert, res := c.send(tc.flight(c))
			expectAlert13(t, alert, res, tc.want)
		})
	}
	// Section 6: a client alert, protected or (from a client that could
	// not derive the keys) not, ends the handshake with nothing sent back.
	for _, tc := range []struct {
		name  string
		alert func(c *client13) []byte
	}{
		{"protected bad_certificate", func(c *client13) []byte { return c.seal(record.Alert, []byte{2, 42}) }},
		{"protected close_notify", func(c *client13) []byte { return c.seal(record.Alert, []byte{1, 0}) }},
		{"plaintext illegal_parameter", func(c *client13) []byte { return rawRecord(21, 2, 47) }},
	} {
		t.Run("6 client "+tc.name+" after ServerHello ends the handshake silently", func(t *testing.T) {
			c := dial13(t, probeConfig(t), hello13())
			raw := tc.alert(c)
			alert, res := c.send(raw)
			assert.Nil(t, alert, "the server answered with %v", alertName(alert))
			assert.Equal(t, Failed, res.State)
			assert.Nil(t, res.Alert)
		})
	}
	// The correct Finished completes the handshake: the client above is
	// right, so the refusals are the probes' doing.
	for _, tc := range []struct {
		name   string
		flight func(c *client13) []byte
	}{
		{"4.4.4 correct Finished completes", func(c *client13) []byte { return c.seal(record.Handshake, c.finished()) }},
		// Section 5.4: padding is the sender's choice, up to the limit.
		{"5.4 padded Finished completes", func(c *client13) []byte {
			rec, err := c.out.Seal(nil, record.Handshake, c.finished(), 1<<14-36)
			require.NoError(t, err)
			return rec
		}},
		// Section 5.1: a message may span records.
		{"5.1 Finished across two protected records completes", func(c *client13) []byte {
			f := c.finished()
			return slices.Concat(c.seal(record.Handshake, f[:3]), c.seal(record.Handshake, f[3:]))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial13(t, probeConfig(t), hello13())
			_, err := c.conn.Write(tc.flight(c))
			require.NoError(t, err)
			c.conn.Close()
			out := <-c.done
			require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		})
	}
}

// certificate13 is a TLS 1.3 Certificate message with context and one entry
// for der with the given extensions block (RFC 8446, Section 4.4.2).
func certificate13(context, der, exts []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeCertificate)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(context) })
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(der) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(exts) })
		})
	})
	return b.BytesOrPanic()
}

// TestProbeClientCertificateTLS13 breaks the client's Certificate when the
// server asked for one.
func TestProbeClientCertificateTLS13(t *testing.T) {
	p := getPKI(t)
	cfg := probeConfig(t)
	cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
	der := p.clientCerts["p256"].Certificate[0]
	tests := []struct {
		name   string
		flight func(c *client13) []byte
		want   Alert
	}{
		// RFC 8446, Section 4.4.2: "Extensions in the Certificate message
		// from the client MUST correspond to extensions in the
		// CertificateRequest message from the server", and Section 4.2: an
		// extension response that was not requested MUST be refused with
		// unsupported_extension. The CertificateRequest asked for none.
		{"4.4.2 unrequested status_request in a CertificateEntry is unsupported_extension", func(c *client13) []byte {
			return c.seal(record.Handshake, certificate13(nil, der, []byte{0, xStatusRequest, 0, 4, 1, 0, 0, 0}))
		}, alertUnsupportedExtension},
		{"4.4.2 unrequested signed_certificate_timestamp in a CertificateEntry is unsupported_extension", func(c *client13) []byte {
			return c.seal(record.Handshake, certificate13(nil, der, []byte{0, xSCT, 0, 0}))
		}, alertUnsupportedExtension},
		{"4.4.2 CertificateEntry extensions longer than the entry is decode_error", func(c *client13) []byte {
			return c.seal(record.Handshake, certificate13(nil, der, []byte{0, xSCT, 0, 9}))
		}, alertDecodeError},
		// Section 4.4.2.4: "If the client does not send any certificates
		// [...] the server MAY at its discretion either continue the
		// handshake without client authentication, or abort the handshake
		// with a "certificate_required" alert."
		{"4.4.2.4 no certificate when required is certificate_required", func(c *client13) []byte {
			return c.seal(record.Handshake, []byte{typeCertificate, 0, 0, 4, 0, 0, 0, 0})
		}, alertCertificateRequired},
		// Section 4.4.3: a non-empty Certificate is followed by
		// CertificateVerify.
		{"4.4.3 Finished without CertificateVerify is unexpected_message", func(c *client13) []byte {
			cert := certificate13(nil, der, nil)
			return slices.Concat(c.seal(record.Handshake, cert), c.seal(record.Handshake, c.finished(cert)))
		}, alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial13(t, cfg, hello13())
			require.Equal(t, typeCertificateRequest, c.serverMsgs[1].typ, "the server asked for a certificate")
			alert, res := c.send(tc.flight(c))
			expectAlert13(t, alert, res, tc.want)
		})
	}
}

// TestProbeHelloRetryRequest sends a ClientHello the server answers with a
// HelloRetryRequest (it wants P-256, the client sent an X25519 share) and a
// second ClientHello that breaks RFC 8446, Section 4.1.2's "the client MUST
// send the same ClientHello without modification, except as follows".
func TestProbeHelloRetryRequest(t *testing.T) {
	cfg := probeConfig(t)
	cfg.Groups = []tls.CurveID{tls.CurveP256}
	first := hello13()
	second := first.replace(extKeyShare(shareP256))
	otherSession := second
	otherSession.sessionID = bytes.Repeat([]byte{9}, 32)
	tests := []struct {
		name   string
		second []byte
		want   Alert
	}{
		{"4.1.2 legacy_session_id changed is illegal_parameter", otherSession.record(), alertIllegalParameter},
		{"4.1.2 compression methods changed is illegal_parameter", helloWire(nil, u16s(suitesTLS13...), []byte{0, 0}, second.exts), alertIllegalParameter},
		{"4.1.2 supported_versions changed is illegal_parameter", second.replace(extVersions(0x0304, 0x0303)).record(), alertIllegalParameter},
		// "Including a "cookie" extension if one was provided in the
		// HelloRetryRequest": this one had none.
		{"4.1.2 cookie the HelloRetryRequest did not provide is illegal_parameter", second.with(rawExt{xCookie, []byte{0, 4, 1, 2, 3, 4}}).record(), alertIllegalParameter},
		{"4.2.8 empty key_share in the second ClientHello is illegal_parameter", second.replace(extKeyShare()).record(), alertIllegalParameter},
		{"4.2.11 pre_shared_key not last in the second ClientHello is illegal_parameter", second.with(pskModesDHE).with(psk).with(rawExt{0x2a2a, nil}).record(), alertIllegalParameter},
		{"4.1.4 ClientHello offering only TLS 1.2 after a HelloRetryRequest is refused", hello12().record(), alertIllegalParameter},
		// The first host_name unchanged, a second added: refused as in a
		// first ClientHello (checkHostNames), not taken for the same name.
		{"RFC 6066 3 a second host_name in the second ClientHello is illegal_parameter",
			second.replace(sniNames(rawExt{0, []byte("p256.example.com")}, rawExt{0, []byte("rsa.example.com")})).record(), alertIllegalParameter},
		// RFC 8446, Section 5: a change_cipher_spec may come between them.
		{"5 change_cipher_spec of value 2 between the ClientHellos is unexpected_message", rawRecord(20, 2), alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := probe(t, cfg, slices.Concat(first.record(), tc.second))
			_, _, hrr, _, err := record.Parse(res.received, 1<<16-1)
			require.NoError(t, err)
			require.Equal(t, helloRetryRandomRFC, parseServerHello(t, splitMessages(t, hrr)[0]).random, "a HelloRetryRequest first")
			expectProbeAlert(t, res, tc.want)
		})
	}
	t.Run("4.1.2 the second ClientHello as required is answered", func(t *testing.T) {
		res := probeWith(t, cfg, slices.Concat(first.record(), rawRecord(20, 1), second.record()), 2)
		msgs, rest := plaintextMessages(t, res.received)
		require.Len(t, msgs, 2, "HelloRetryRequest and ServerHello")
		assert.NotEqual(t, helloRetryRandomRFC, parseServerHello(t, msgs[1]).random)
		assert.NotEmpty(t, rest, "the server's protected flight")
	})
	// Section 4.2.2 forbids clients nothing a server must check in a first
	// ClientHello: a cookie there is ignored, as crypto/tls does.
	t.Run("4.2.2 cookie in a first ClientHello is ignored", func(t *testing.T) {
		res := probeHello(t, probeConfig(t), hello13().with(rawExt{xCookie, []byte{0, 4, 1, 2, 3, 4}}).record())
		assert.Nil(t, res.alert, "alert %v", alertName(res.alert))
		assert.True(t, res.hellos > 0)
	})
}

// client12 is a raw TLS 1.2 client over TCP for ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
// on P-256 with extended_master_secret: it reads the server's first
// flight, derives the keys itself, and lets the probe write the second.
type client12 struct {
	t          *testing.T
	conn       net.Conn
	transcript hash.Hash
	master     []byte
	key, iv    []byte // client write key and salt
	random     []byte // the server's
	out        *record.Cipher
	cke        []byte      // the correct ClientKeyExchange message
	hello      helloFields // the server's
	done       chan relayOutcome
}

func dial12(t *testing.T, cfg Config) *client12 {
	t.Helper()
	return dial12Hello(t, cfg, hello12())
}

// dial12Hello is dial12 with the extensions of hello (the suite and group
// are dial12's).
func dial12Hello(t *testing.T, cfg Config, hello rawHello) *client12 {
	t.Helper()
	clientConn, done := startProbeRelay(t, cfg)
	c := &client12{t: t, conn: clientConn, transcript: sha256.New(), done: done}
	hello = hello.replace(extGroups(0x0017))
	hello.suites = []uint16{0xc02b}
	c.transcript.Write(hello.message())
	_, err := clientConn.Write(hello.record())
	require.NoError(t, err)

	var buf, hs []byte
	tmp := make([]byte, 1<<16)
	var msgs []serverMsg
	for len(msgs) == 0 || msgs[len(msgs)-1].typ != typeServerHelloDone {
		typ, _, body, n, err := record.Parse(buf, 1<<16-1)
		require.NoError(t, err)
		if n == 0 {
			m, err := clientConn.Read(tmp)
			require.NoError(t, err, "reading the server's flight")
			buf = append(buf, tmp[:m]...)
			continue
		}
		require.Equal(t, record.Handshake, typ)
		hs = append(hs, body...)
		buf = buf[n:]
		if len(hs) >= 4 && len(hs) >= 4+(int(hs[1])<<16|int(hs[2])<<8|int(hs[3])) {
			msgs = nil
			for _, m := range splitMessages(t, hs) {
				msgs = append(msgs, serverMsg{typ: m.typ, body: slices.Clone(m.body), raw: slices.Clone(m.raw)})
			}
		}
	}
	require.Equal(t, []uint8{typeServerHello, typeCertificate, typeServerKeyExchange, typeServerHelloDone},
		[]uint8{msgs[0].typ, msgs[1].typ, msgs[2].typ, msgs[3].typ})
	for _, m := range msgs {
		c.transcript.Write(m.raw)
	}
	c.hello = parseServerHello(t, msgs[0])
	serverRandom := c.hello.random
	c.random = serverRandom
	skx := msgs[2].body
	require.Equal(t, []byte{3, 0x00, 0x17, 65}, skx[:4], "ServerECDHParams for secp256r1")
	peer, err := ecdh.P256().NewPublicKey(skx[4 : 4+65])
	require.NoError(t, err)
	shared, err := p256Client.ECDH(peer)
	require.NoError(t, err)
	c.cke = handshakeRecord(typeClientKeyExchange, ecPoint(p256Client.PublicKey().Bytes()))[record.HeaderLen:]
	c.transcript.Write(c.cke)
	// RFC 7627, Section 4: the session hash runs through ClientKeyExchange.
	c.master = masterSecret(crypto.SHA256, shared, true, c.transcript.Sum(nil), rawRandom, serverRandom)
	c.key, _, c.iv, _ = record.NewSecret12(crypto.SHA256, c.master).KeyBlock(rawRandom, serverRandom, 16, 4)
	c.out, err = record.NewTLS12Cipher(0xc02b, c.key, c.iv, 0)
	require.NoError(t, err)
	return c
}

// finished is the client's correct Finished message.
func (c *client12) finished() []byte {
	return marshalFinished(finishedVerifyData12(record.NewSecret12(crypto.SHA256, c.master), "client finished", c.transcript.Sum(nil)))
}

func (c *client12) seal(typ record.ContentType, content []byte) []byte {
	rec, err := c.out.Seal(nil, typ, content, 0)
	require.NoError(c.t, err)
	return rec
}

// sealRaw protects content under typ as the first protected record by hand
// (RFC 5288, Section 3): record.Cipher refuses to build malformed ones.
func (c *client12) sealRaw(typ record.ContentType, content []byte) []byte {
	block, err := aes.NewCipher(c.key)
	require.NoError(c.t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(c.t, err)
	explicit := make([]byte, 8) // sequence number 0
	nonce := append(slices.Clone(c.iv), explicit...)
	aad := append(make([]byte, 8), byte(typ), 3, 3, byte(len(content)>>8), byte(len(content)))
	n := 8 + len(content) + aead.Overhead()
	rec := append([]byte{byte(typ), 3, 3, byte(n >> 8), byte(n)}, explicit...)
	return aead.Seal(rec, nonce, content, aad)
}

// send writes the second flight after ClientKeyExchange and returns the
// plaintext alert the server answered with and the engine's last result.
func (c *client12) send(raw []byte) ([]byte, relayOutcome) {
	c.t.Helper()
	_, err := c.conn.Write(slices.Concat(record.Append(nil, record.Handshake, 0x0303, c.cke), raw))
	require.NoError(c.t, err)
	var received, alert []byte
	tmp := make([]byte, 1<<16)
	for alert == nil {
		n, err := c.conn.Read(tmp)
		received = append(received, tmp[:n]...)
		alert, _ = scanServerRecords(received)
		if err != nil {
			break
		}
	}
	c.conn.Close()
	return alert, <-c.done
}

// TestProbeSecondFlightTLS12 breaks the client's protected TLS 1.2 flight.
func TestProbeSecondFlightTLS12(t *testing.T) {
	ccs := rawRecord(20, 1)
	tests := []struct {
		name   string
		flight func(c *client12) []byte
		want   Alert
	}{
		// RFC 5246, Section 7.4.9: "Recipients of Finished messages MUST
		// verify that the contents are correct."
		{"RFC 5246 7.4.9 wrong verify_data is decrypt_error", func(c *client12) []byte {
			f := c.finished()
			f[len(f)-1] ^= 1
			return slices.Concat(ccs, c.seal(record.Handshake, f))
		}, alertDecryptError},
		// Section 7.4.9: verify_data[verify_data_length], 12 bytes here; a
		// Finished of another length cannot be decoded.
		{"RFC 5246 7.4.9 Finished of 13 bytes is decode_error", func(c *client12) []byte {
			f := c.finished()
			return slices.Concat(ccs, c.seal(record.Handshake, append([]byte{typeFinished, 0, 0, 13}, append(f[4:], 0)...)))
		}, alertDecodeError},
		{"RFC 5246 7.4.9 empty Finished is decode_error", func(c *client12) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, []byte{typeFinished, 0, 0, 0}))
		}, alertDecodeError},
		{"RFC 5246 7.4.9 Finished header of 13 bytes, 12 sent, is decode_error", func(c *client12) []byte {
			f := c.finished()
			return slices.Concat(ccs, c.seal(record.Handshake, append([]byte{typeFinished, 0, 0, 13}, f[4:]...)))
		}, alertDecodeError},
		// Section 6.2.3.3: a record that does not authenticate is
		// bad_record_mac.
		{"RFC 5246 6.2.3.3 record that fails to authenticate is bad_record_mac", func(c *client12) []byte {
			rec := c.seal(record.Handshake, c.finished())
			rec[len(rec)-1] ^= 1
			return slices.Concat(ccs, rec)
		}, alertBadRecordMAC},
		// Section 6.2.3: "The length MUST NOT exceed 2^14 + 2048."
		{"RFC 5246 6.2.3 protected record over 2^14+2048 bytes is record_overflow", func(c *client12) []byte {
			return slices.Concat(ccs, []byte{22, 3, 3, 0x48, 0x01}, make([]byte, 1<<14+2049))
		}, alertRecordOverflow},
		// Section 6.2.1 and 7.2.2: plaintext over 2^14 after decryption.
		{"RFC 5246 7.2.2 decrypted fragment over 2^14 bytes is record_overflow", func(c *client12) []byte {
			return slices.Concat(ccs, c.sealRaw(record.Handshake, make([]byte, 1<<14+1)))
		}, alertRecordOverflow},
		// Section 6.2.1: "Implementations MUST NOT send zero-length
		// fragments of Handshake, Alert, or ChangeCipherSpec content
		// types."
		{"RFC 5246 6.2.1 empty protected handshake fragment is unexpected_message", func(c *client12) []byte {
			return slices.Concat(ccs, c.sealRaw(record.Handshake, nil))
		}, alertUnexpectedMessage},
		// After ChangeCipherSpec every record is protected (Section 7.1):
		// an unprotected one fails to authenticate like any forgery.
		{"RFC 5246 6.2.3 unprotected Finished after ChangeCipherSpec is bad_record_mac", func(c *client12) []byte {
			return slices.Concat(ccs, handshakeRecord(typeFinished, c.finished()[4:]))
		}, alertBadRecordMAC},
		{"RFC 5246 7.1 second ChangeCipherSpec is unexpected_message", func(c *client12) []byte {
			return slices.Concat(ccs, ccs)
		}, alertUnexpectedMessage},
		{"RFC 5246 7.3 application data before Finished is unexpected_message", func(c *client12) []byte {
			return slices.Concat(ccs, c.seal(record.ApplicationData, []byte("early")))
		}, alertUnexpectedMessage},
		{"RFC 5246 7.3 application data before ChangeCipherSpec is unexpected_message", func(c *client12) []byte {
			return rawRecord(23, 1, 2, 3)
		}, alertUnexpectedMessage},
		// RFC 5746, Section 3.7 / RFC 5246, Section 7.4.1.2: a ClientHello
		// in the middle of the handshake is not a renegotiation the
		// server takes.
		{"RFC 5246 7.3 ClientHello in place of Finished is unexpected_message", func(c *client12) []byte {
			return slices.Concat(ccs, c.seal(record.Handshake, hello12().message()))
		}, alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial12(t, probeConfig(t))
			alert, out := c.send(tc.flight(c))
			res := out.last
			require.Equalf(t, []byte{alertLevelFatal, byte(tc.want)}, alert, "client read alert %x (%v), want fatal %v; engine: %v %v (%s)",
				alert, alertName(alert), tc.want, res.State, res.AlertDescription, res.Reason)
			assert.Equal(t, tc.want, res.AlertDescription)
		})
	}
	t.Run("RFC 5246 7.4.9 correct Finished completes", func(t *testing.T) {
		c := dial12(t, probeConfig(t))
		_, out := c.send(slices.Concat(ccs, c.seal(record.Handshake, c.finished())))
		require.NotNil(t, out.session, "engine: %v %s", out.last.State, out.last.Reason)
		assert.True(t, out.session.ExtendedMasterSecret)
	})
}

// TestProbeVersionNegotiation checks the version the server picks, and the
// ServerHello fields that go with it.
func TestProbeVersionNegotiation(t *testing.T) {
	legacy := func(h rawHello, v uint16) rawHello { h.legacyVersion = v; return h }
	both := hello13().with(extPoints)
	both.suites = append(slices.Clone(suitesTLS13), suitesTLS12...)
	compat := hello13()
	compat.sessionID = bytes.Repeat([]byte{0x5e}, 32)
	for _, tc := range []struct {
		name  string
		hello rawHello
		vers  uint16
	}{
		// RFC 8446, Section 4.2.1: "If the extension is not present,
		// servers which are compliant with this specification and which
		// also support TLS 1.2 MUST negotiate TLS 1.2 or prior as
		// specified in [RFC5246], even if ClientHello.legacy_version is
		// 0x0304 or later."
		{"4.2.1 legacy_version 0x0304 without supported_versions is TLS 1.2", legacy(hello12(), 0x0304), 0x0303},
		{"4.2.1 legacy_version 0x03ff without supported_versions is TLS 1.2", legacy(hello12(), 0x03ff), 0x0303},
		// "servers MUST NOT use the ClientHello.legacy_version value for
		// version negotiation and MUST use only the supported_versions
		// extension".
		{"4.2.1 supported_versions [1.2] with TLS 1.3 suites and shares is TLS 1.2", both.replace(extVersions(0x0303)), 0x0303},
		{"4.2.1 supported_versions [GREASE 1.3 1.2] is TLS 1.3", both.replace(extVersions(0x3a3a, 0x0304, 0x0303)), 0x0304},
		{"4.2.1 supported_versions with a future version first is TLS 1.3", both.replace(extVersions(0x0305, 0x0304)), 0x0304},
		// RFC 8422, Section 5.1.2 is TLS 1.2's: a TLS 1.3 ClientHello's
		// ec_point_formats has no say (RFC 8446, Section 4.2.8.2 fixes the
		// point format).
		{"RFC 8422 5.1.2 ec_point_formats without uncompressed is ignored in TLS 1.3", hello13().with(rawExt{xECPointFormats, []byte{1, 1}}), 0x0304},
		// RFC 8446, Section 4.2.8 lets the server check shares it does not
		// use ("MAY"); it does not, as crypto/tls.
		{"4.2.8 a malformed share for a group the server does not pick is ignored", hello13().replace(extKeyShare(shareX25519, rawExt{0x0017, []byte{4, 1, 2}})), 0x0304},
		// Section 4.1.3: legacy_session_id_echo echoes the client's.
		{"4.1.3 legacy_session_id is echoed", compat, 0x0304},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := probeHello(t, probeConfig(t), tc.hello.record())
			require.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
			msgs, _ := plaintextMessages(t, res.received)
			sh := parseServerHello(t, msgs[0])
			assert.Equal(t, uint16(0x0303), sh.version, "ServerHello.legacy_version")
			sv, ok := sh.ext(xSupportedVersions)
			if tc.vers == 0x0304 {
				assert.Equal(t, []byte{3, 4}, sv)
				assert.Contains(t, suitesTLS13, sh.suite)
			} else {
				assert.False(t, ok, "supported_versions in a TLS 1.2 ServerHello")
				assert.Contains(t, suitesTLS12, sh.suite)
			}
			sid := msgs[0].body[2+32+1 : 2+32+1+int(msgs[0].body[2+32])]
			assert.Truef(t, bytes.Equal(tc.hello.sessionID, sid), "legacy_session_id_echo %x, sent %x", sid, tc.hello.sessionID)
		})
	}
}

// TestProbeNoResumptionTLS12: without TicketKeys the engine never resumes,
// so a TLS 1.2 ClientHello offering a session (ID or ticket) gets a full
// handshake: RFC 5246, Section 7.4.1.3 has a server that does not resume
// answer with a session_id other than the client's, and RFC 5077, Section
// 3.2 has it send no SessionTicket extension unless it will issue a ticket.
func TestProbeNoResumptionTLS12(t *testing.T) {
	hello := hello12().with(rawExt{35, bytes.Repeat([]byte{0x7a}, 100)}) // session_ticket
	hello.sessionID = bytes.Repeat([]byte{0x5e}, 32)
	res := probeHello(t, probeConfig(t), hello.record())
	require.Nil(t, res.alert, "alert %v; engine: %s", alertName(res.alert), res.engine.Reason)
	msgs, _ := plaintextMessages(t, res.received)
	require.GreaterOrEqual(t, len(msgs), 2)
	sh := parseServerHello(t, msgs[0])
	sid := msgs[0].body[2+32+1 : 2+32+1+int(msgs[0].body[2+32])]
	assert.NotEqual(t, hello.sessionID, []byte(sid), "session_id echoed: the client would take it for resumption")
	_, ok := sh.ext(35)
	assert.False(t, ok, "SessionTicket extension without a ticket to issue")
	assert.Equal(t, typeCertificate, msgs[1].typ, "a full handshake")
}
