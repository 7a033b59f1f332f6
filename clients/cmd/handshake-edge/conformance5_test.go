package main

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// A fifth round of probes in the manner of tlsfuzzer's scripts, for what
// the first four leave out: every value of each length field of a bare
// TLS 1.2 ClientHello, the client's ECDHE point in each malformed shape,
// and the curve a TLS 1.2 client gets when its supported_groups says
// nothing the edge takes, or nothing at all.

// extPointFormats is RFC 8422, Section 5.1.2's ec_point_formats.
const extPointFormats uint16 = 11

// bareHello12 is a TLS 1.2 ClientHello as tlsfuzzer's scripts write one:
// a zero random, no session ID, suites, null compression, and exts (an
// encoded extensions block's content; nil: no block at all, RFC 5246,
// Section 7.4.1.2).
func bareHello12(exts []byte, suites ...uint16) []byte {
	body := slices.Concat([]byte{3, 3}, make([]byte, 32), []byte{0}, u16list(suites...), []byte{1, 0})
	if exts != nil {
		body = append(body, byte(len(exts)>>8), byte(len(exts)))
		body = append(body, exts...)
	}
	return hsMsg(1, body...)
}

// TestProbeEdgeClientHelloFields12 is tlsfuzzer's
// test-invalid-client-hello.py: a TLS 1.2 ClientHello with each of its
// length fields set to every other value, its message length unchanged.
// The fields no longer add up to the message (RFC 5246, Section 7.4.1.2;
// RFC 8446, Section 4.1.2: legacy_session_id<0..32>,
// cipher_suites<2..2^16-2>, legacy_compression_methods<1..2^8-1>,
// extensions<8..2^16-1>), a message that cannot be decoded: decode_error
// (RFC 8446, Section 6.2). A message type other than ClientHello first is
// unexpected_message (Section 4). One value, in the script as here, makes
// a ClientHello that decodes: a compression list that takes in the
// extensions' bytes, null first, leaves a ClientHello without extensions.
func TestProbeEdgeClientHelloFields12(t *testing.T) {
	f := newFixture(t)
	const (
		rsaGCM = tls.TLS_RSA_WITH_AES_128_GCM_SHA256
		scsv   = 0x00ff // TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746, Section 3.3)
	)
	// Two suites, no extensions: the session ID's length at [38], the
	// suites' at [39:41], the compression methods' at [45].
	plain := bareHello12(nil, rsaGCM, scsv)
	// One suite and an empty renegotiation_info (RFC 5746, Section 3.2):
	// the compression methods' length at [43], the extensions' at [45:47].
	withExt := bareHello12([]byte{0xff, 0x01, 0, 1, 0}, rsaGCM)
	type variant struct {
		name  string
		msg   []byte
		alert uint8
	}
	var refused []variant
	// sweep adds msg with byte i set to each value but its own (and but
	// skip), each refused with alert.
	sweep := func(name string, msg []byte, i int, alert uint8, skip ...int) {
		for v := range 256 {
			if byte(v) == msg[i] || slices.Contains(skip, v) {
				continue
			}
			m := slices.Clone(msg)
			m[i] = byte(v)
			refused = append(refused, variant{fmt.Sprintf("%s %d", name, v), m, alert})
		}
	}
	sweep("RFC 8446 4 message type", plain, 0, alertUnexpectedMessage)
	sweep("RFC 5246 7.4.1.2 session ID length", plain, 38, alertDecodeError)
	sweep("RFC 5246 7.4.1.2 session ID length with extensions", withExt, 38, alertDecodeError)
	sweep("RFC 5246 7.4.1.2 cipher suites length", plain, 40, alertDecodeError)
	sweep("RFC 5246 7.4.1.2 cipher suites length with extensions", withExt, 40, alertDecodeError)
	for _, hi := range []byte{1, 2, 128, 255} {
		m := slices.Clone(plain)
		m[39] = hi
		refused = append(refused, variant{fmt.Sprintf("RFC 5246 7.4.1.2 cipher suites length %d", int(hi)<<8|4), m, alertDecodeError})
	}
	sweep("RFC 5246 7.4.1.2 compression methods length", plain, 45, alertDecodeError)
	sweep("RFC 5246 7.4.1.2 compression methods length with extensions", withExt, 43, alertDecodeError, 8)
	sweep("RFC 5246 7.4.1.2 extensions length", withExt, 46, alertDecodeError)
	for _, hi := range []byte{1, 2, 255} {
		m := slices.Clone(withExt)
		m[45] = hi
		refused = append(refused, variant{fmt.Sprintf("RFC 5246 7.4.1.2 extensions length %d", int(hi)<<8|5), m, alertDecodeError})
	}
	swallowed := slices.Clone(withExt)
	swallowed[43] = 8
	probeEdges(t, f, func(t *testing.T, addr string) {
		// Their ServerHellos have no extensions block to answer nothing
		// (RFC 5246, Section 7.4.1.3), which parseServerHello wants.
		t.Run("RFC 5246 7.4.1.2 compression methods taking in the extensions leave a ClientHello", func(t *testing.T) {
			expectServerHello(t, sendHello(t, addr, swallowed))
		})
		// tlsfuzzer's test-empty-extensions.py.
		t.Run("RFC 5246 7.4.1.2 an empty extensions block is answered", func(t *testing.T) {
			expectServerHello(t, sendHello(t, addr, bareHello12([]byte{}, rsaGCM)))
		})
		for _, v := range refused {
			t.Run(v.name+" is "+record.AlertName(v.alert), func(t *testing.T) {
				expectPlainAlert(t, sendHello(t, addr, v.msg), v.alert)
			})
		}
	})
}

// answerFlight12 writes the TLS 1.2 ClientHello hello to addr, reads the
// edge's ECDHE flight, and answers it with answer.
func answerFlight12(t *testing.T, addr string, hello, answer []byte) net.Conn {
	t.Helper()
	c := sendHello(t, addr, hello)
	readFlight12(t, c)
	_, err := c.Write(answer)
	require.NoError(t, err)
	return c
}

// keyExchange12 is a client's second flight whose ClientKeyExchange
// carries body, an ECPoint (RFC 8422, Section 5.7: opaque point
// <1..2^8-1>) or not: then, in the same segment as a client that does not
// wait, ChangeCipherSpec and a Finished under keys the client has not got.
func keyExchange12(body []byte) []byte {
	finished := make([]byte, 8+16+16) // explicit nonce, a 16-byte Finished, tag
	rand.Read(finished)
	return slices.Concat(fragments(hsMsg(16, body...), 1<<14), compatCCS, record.Append(nil, record.Handshake, 0x0303, finished))
}

// ecPoint is an ECPoint's wire form: its length, then p.
func ecPoint(p []byte) []byte { return append([]byte{byte(len(p))}, p...) }

// TestProbeEdgeClientPoint12 is tlsfuzzer's
// test-ecdhe-rsa-key-exchange-with-bad-messages.py, test-point-extension.py
// and test-x25519.py for the client's ECDHE point of a TLS 1.2
// ClientKeyExchange. P-256: RFC 8422, Section 5.7 and 5.1.2, the point is
// uncompressed (form 4, x, y), on the curve; anything else, the point at
// infinity, (0, 0), a point with y changed, raw x and y without the form
// byte, the hybrid forms 6 and 7, the compressed forms, is
// illegal_parameter. X25519: RFC 8422, Section 5.11, 32 bytes; 31 or 33
// are illegal_parameter, and a u-coordinate with the top bit set is taken,
// masked (RFC 7748, Section 5), so the client's Finished, under keys it
// could not have, is bad_record_mac. An empty point, or one whose length
// disagrees with the message, is decode_error. tlsfuzzer expects
// internal_error for a compressed point from a client the server did not
// offer compression: that alert is for a failure "unrelated to the peer or
// the correctness of the protocol" (RFC 8446, Section 6.2), and the point
// is the peer's, so the edge keeps illegal_parameter.
func TestProbeEdgeClientPoint12(t *testing.T) {
	f := newFixture(t)
	hello := func(curve tls.CurveID) []byte {
		return clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, CurvePreferences: []tls.CurveID{curve}})
	}
	p256, x25519 := hello(tls.CurveP256), hello(tls.X25519)
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	good := key.PublicKey().Bytes() // 4, x, y
	x, y := good[1:33], good[33:]
	changed := func(p []byte, i int, v byte) []byte {
		p = slices.Clone(p)
		p[i] ^= v
		return p
	}
	hybrid := byte(6 | y[31]&1) // form 6 for an even y, 7 for an odd (X9.62)
	compressed := byte(2 | y[31]&1)
	withoutY := slices.Concat(good[:33], make([]byte, 32))
	tests := []struct {
		name  string
		hello []byte
		body  []byte // the ClientKeyExchange
		alert uint8
	}{
		{"RFC 8422 5.7 P-256 point (0, 1) is illegal_parameter", p256, ecPoint(slices.Concat([]byte{4}, make([]byte, 63), []byte{1})), alertIllegalParameter},
		{"RFC 8422 5.7 P-256 point (0, 0) is illegal_parameter", p256, ecPoint(append([]byte{4}, make([]byte, 64)...)), alertIllegalParameter},
		{"RFC 8422 5.7 P-256 point with y all zero is illegal_parameter", p256, ecPoint(withoutY), alertIllegalParameter},
		{"RFC 8422 5.7 P-256 point with y's last byte changed is illegal_parameter", p256, ecPoint(changed(good, 64, 0xff)), alertIllegalParameter},
		{"RFC 8422 5.7 P-256 point without the form byte is illegal_parameter", p256, ecPoint(good[1:]), alertIllegalParameter},
		{"RFC 8422 5.1.2 P-256 point in the hybrid form is illegal_parameter", p256, ecPoint(slices.Concat([]byte{hybrid}, x, y)), alertIllegalParameter},
		{"RFC 8422 5.1.2 P-256 point in the compressed form is illegal_parameter", p256, ecPoint(append([]byte{compressed}, x...)), alertIllegalParameter},
		{"RFC 8422 5.7 empty point is decode_error", p256, []byte{0}, alertDecodeError},
		{"RFC 8422 5.7 point one byte short of its length is decode_error", p256, ecPoint(good)[:len(good)], alertDecodeError},
		{"RFC 8422 5.7 a byte after the point is decode_error", p256, append(ecPoint(good), 0), alertDecodeError},
		{"RFC 8422 5.11 X25519 point of 31 bytes is illegal_parameter", x25519, ecPoint(slices.Repeat([]byte{55}, 31)), alertIllegalParameter},
		{"RFC 8422 5.11 X25519 point of 33 bytes is illegal_parameter", x25519, ecPoint(slices.Repeat([]byte{55}, 33)), alertIllegalParameter},
		{"RFC 8422 5.7 empty X25519 point is decode_error", x25519, []byte{0}, alertDecodeError},
		{"RFC 7748 5 X25519 point with the top bit set is taken, the Finished is bad_record_mac", x25519,
			ecPoint(append(slices.Repeat([]byte{55}, 31), 0x80)), alertBadRecordMAC},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				expectPlainAlert(t, answerFlight12(t, addr, tc.hello, keyExchange12(tc.body)), tc.alert)
			})
		}
	})
}

// TestProbeEdgeGroups12 is tlsfuzzer's test-x25519.py for the curve of a
// TLS 1.2 ECDHE handshake: RFC 8422, Section 4, a client that sends no
// supported_groups lets the server pick, and gets P-256, the curve every
// client of RFC 4492's (which knew no X25519) has; X25519 beside X448,
// which the edge does not do, gets X25519, whatever ec_point_formats
// lists with uncompressed; a client none of whose groups the edge knows
// gets RSA key exchange if it offers it, else handshake_failure (Section
// 5.1).
func TestProbeEdgeGroups12(t *testing.T) {
	f := newFixture(t)
	base := parseHello(t, clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12}))
	ecdheRSA := base.withSuites(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
	withRSA := base.withSuites(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_GCM_SHA256)
	const unknownGroup uint16 = 11200
	curves := []struct {
		name  string
		hello *helloMsg
		group uint16
		curve ecdh.Curve
	}{
		{"RFC 8422 4 no supported_groups gets P-256", ecdheRSA.without(extGroups), groupP256, ecdh.P256()},
		{"RFC 8422 5.1.1 X25519 and X448 get X25519", ecdheRSA.set(extGroups, u16list(groupX25519, groupX448)), groupX25519, ecdh.X25519()},
		{"RFC 8422 5.1.2 X25519 with every point format gets X25519", ecdheRSA.set(extGroups, u16list(groupX25519)).set(extPointFormats, []byte{3, 1, 2, 0}),
			groupX25519, ecdh.X25519()},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range curves {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, addr)
				p, flight := handshake12(t, c, tc.hello.marshal(), tc.curve, nil)
				group, _ := serverKeyExchange12(t, flight)
				assert.Equal(t, tc.group, group)
				p.expectServes(t)
			})
		}
		t.Run("RFC 8422 5.1 only an unknown group gets RSA key exchange", func(t *testing.T) {
			sh := readServerHello(t, sendHello(t, addr, withRSA.set(extGroups, u16list(unknownGroup)).marshal()))
			assert.Equal(t, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, sh.suite)
		})
		t.Run("RFC 8422 5.1 only an unknown group and no RSA key exchange is handshake_failure", func(t *testing.T) {
			expectPlainAlert(t, sendHello(t, addr, ecdheRSA.set(extGroups, u16list(unknownGroup)).marshal()), alertHandshakeFailure)
		})
	})
}

// TestProbeEdgeManyExtensions12 is tlsfuzzer's test-extensions.py: a TLS
// 1.2 ClientHello with up to 16382 empty extensions of code points from 90
// on (unassigned, and GREASE's, RFC 8701), then renegotiation_info, or
// with the first of them moved last. RFC 5246, Section 7.4.1.4: the server
// passes over what it does not know, and answers renegotiation_info (RFC
// 5746, Section 3.6) whatever comes around it. The engine pairs no
// extension with every other to find a repeat (BenchmarkLargeClientHello).
func TestProbeEdgeManyExtensions12(t *testing.T) {
	f := newFixture(t)
	renegotiationInfo := []byte{0xff, 0x01, 0, 1, 0}
	empty := func(from, to int) []byte {
		var b []byte
		for v := from; v < to; v++ {
			b = append(b, byte(v>>8), byte(v), 0, 0)
		}
		return b
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, n := range []int{31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 256, 1024, 4085, 4086, 4096, 8192, 16382} {
			for _, tc := range []struct {
				name string
				exts []byte
			}{
				{fmt.Sprintf("RFC 5246 7.4.1.4 %d empty extensions then renegotiation_info are answered", n),
					append(empty(90, 90+n), renegotiationInfo...)},
				{fmt.Sprintf("RFC 5246 7.4.1.4 %d empty extensions around renegotiation_info are answered", n),
					slices.Concat(empty(91, 90+n), renegotiationInfo, empty(90, 91))},
			} {
				t.Run(tc.name, func(t *testing.T) {
					sh := readServerHello(t, sendHello(t, addr, bareHello12(tc.exts, tls.TLS_RSA_WITH_AES_128_GCM_SHA256)))
					data, ok := sh.lookup(0xff01)
					require.True(t, ok, "no renegotiation_info in the ServerHello")
					assert.Equal(t, []byte{0}, data)
				})
			}
		}
	})
}

// TestProbeEdgeDuplicateMessages12 is tlsfuzzer's
// test-message-duplication.py for the ClientHello sent again in a full TLS
// 1.2 handshake (the other duplicates are the engine's probes' and round
// 1's): RFC 5246, Section 7.3, after the server's flight the client sends
// its ClientKeyExchange, then ChangeCipherSpec; a ClientHello in place of
// either is unexpected_message (the renegotiation a server may refuse
// with a warning, RFC 5746, Section 4.4, comes only after the handshake).
func TestProbeEdgeDuplicateMessages12(t *testing.T) {
	f := newFixture(t)
	hello := clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, CurvePreferences: []tls.CurveID{tls.X25519}})
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	cke := fragments(hsMsg(16, ecPoint(key.PublicKey().Bytes())...), 1<<14)
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range []struct {
			name   string
			answer []byte
		}{
			{"RFC 5246 7.3 a second ClientHello in place of the ClientKeyExchange is unexpected_message", fragments(hello, 1<<14)},
			{"RFC 5246 7.3 a ClientHello after the ClientKeyExchange is unexpected_message", slices.Concat(cke, fragments(hello, 1<<14))},
		} {
			t.Run(tc.name, func(t *testing.T) {
				expectPlainAlert(t, answerFlight12(t, addr, hello, tc.answer), alertUnexpectedMessage)
			})
		}
	})
}

// TestProbeEdgeSignatureAlgorithms12 is tlsfuzzer's test-sig-algs.py and
// test-clienthello-md5.py against the RSA key in an ECDHE_RSA handshake:
// RFC 5246, Section 7.4.1.4.1, the ServerKeyExchange is signed with a
// scheme the client listed, which is never MD5 (RFC 6151) or SHA-1 (RFC
// 9155, Section 2), wherever the client put them, nor a pair nobody
// defined; with nothing else on the list, handshake_failure. A list that
// is empty, of odd length, or whose length disagrees with the extension
// is decode_error (Section 7.4.1.4.1: supported_signature_algorithms<2..2^16-2>).
// tlsfuzzer's "sha1 only" and "sha224 only" expect a handshake; RFC 9155
// forbids the first, and the key signs with neither.
func TestProbeEdgeSignatureAlgorithms12(t *testing.T) {
	f := newFixture(t)
	base := parseHello(t, clientHello(t, &tls.Config{ServerName: f.rsa.Name, MaxVersion: tls.VersionTLS12})).
		withSuites(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
	const (
		md5RSA    uint16 = 0x0101
		sha1RSA   uint16 = 0x0201
		sha224RSA uint16 = 0x0301
		sha256RSA uint16 = 0x0401
		sha512RSA uint16 = 0x0601
	)
	undefined := []uint16{0x0418, 0x1801, 0x0a0a, 0x0918, 0xffff}
	chosen := []struct {
		name    string
		schemes []uint16
		allowed []uint16 // those of schemes the signature may use
	}{
		{"MD5 first is passed over", []uint16{md5RSA, sha512RSA, sha256RSA, sha1RSA}, []uint16{sha512RSA, sha256RSA}},
		{"MD5 and SHA-1 before SHA-256 are passed over", []uint16{md5RSA, sha1RSA, sha224RSA, sha256RSA}, []uint16{sha256RSA}},
		{"undefined pairs first are passed over", append(slices.Clone(undefined), sha256RSA), []uint16{sha256RSA}},
	}
	refused := []struct {
		name  string
		data  []byte
		alert uint8
	}{
		{"MD5 only is handshake_failure", u16list(md5RSA), alertHandshakeFailure},
		{"SHA-1 only is handshake_failure", u16list(sha1RSA), alertHandshakeFailure},
		{"undefined pairs only are handshake_failure", u16list(undefined...), alertHandshakeFailure},
		{"an empty list is decode_error", []byte{0, 0}, alertDecodeError},
		{"a list of odd length is decode_error", []byte{0, 3, 4, 1, 4}, alertDecodeError},
		{"a list shorter than the extension is decode_error", []byte{0, 4, 2, 1, 4, 1, 4, 3}, alertDecodeError},
		{"a list longer than the extension is decode_error", []byte{0, 4, 4, 1}, alertDecodeError},
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range chosen {
			t.Run("RFC 5246 7.4.1.4.1 "+tc.name, func(t *testing.T) {
				flight := readFlight12(t, sendHello(t, addr, base.set(extSigAlgs, u16list(tc.schemes...)).marshal()))
				assert.Contains(t, tc.allowed, serverKeyExchangeScheme(t, flight), "the ServerKeyExchange's signature scheme")
			})
		}
		for _, tc := range refused {
			t.Run("RFC 5246 7.4.1.4.1 "+tc.name, func(t *testing.T) {
				expectPlainAlert(t, sendHello(t, addr, base.set(extSigAlgs, tc.data).marshal()), tc.alert)
			})
		}
	})
}

// serverKeyExchangeScheme is the signature scheme of the ServerKeyExchange
// in flight (RFC 5246, Section 7.4.3, and RFC 8422, Section 5.4: the
// ServerECDHParams, then the SignatureAndHashAlgorithm).
func serverKeyExchangeScheme(t *testing.T, flight []byte) uint16 {
	t.Helper()
	for flight[0] != 12 {
		flight = flight[4+(int(flight[1])<<16|int(flight[2])<<8|int(flight[3])):]
	}
	params := flight[4:]
	n := 1 + 2 + 1 + int(params[3]) // curve_type, named curve, point
	require.Greater(t, len(params), n+2, "ServerKeyExchange")
	return uint16(params[n])<<8 | uint16(params[n+1])
}

// TestProbeEdgeVersionsAndGroups13 is what tlsfuzzer's
// test-tls13-version-negotiation.py and test-tls13-obsolete-curves.py
// send that the earlier rounds did not. RFC 8446, Section 4.2.1: a
// supported_versions of SSL 3.0 alone is protocol_version; one of a
// future version and TLS 1.2 gets TLS 1.2, whose ServerHello carries no
// supported_versions. Appendix B.3.1.4: the obsolete groups (secp160k1 to
// secp224r1, 0x0001-0x0016, and kin) "MUST NOT be offered" by a TLS 1.3
// client, but RFC 8446 names nothing for the server to do about it;
// tlsfuzzer expects illegal_parameter even beside P-256 and its share. The
// edge passes over groups it does not do, as crypto/tls and OpenSSL (3.0,
// checked) do: the handshake goes on with P-256, and with an obsolete
// group alone (Section 4.1.1) it is handshake_failure.
func TestProbeEdgeVersionsAndGroups13(t *testing.T) {
	f := newFixture(t)
	const secp224r1 uint16 = 0x0015
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	probeEdges(t, f, func(t *testing.T, addr string) {
		t.Run("4.2.1 supported_versions of SSL 3.0 alone is protocol_version", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extVersions, []byte{2, 3, 0}))
			expectPlainAlert(t, c.raw, alertProtocolVersion)
		})
		t.Run("4.2.1 supported_versions of a future version and TLS 1.2 gets TLS 1.2", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.withSuites(suite13, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).set(extVersions, []byte{4, 3, 9, 3, 3}))
			sh := readServerHello(t, c.raw)
			assert.Equal(t, uint16(tls.VersionTLS12), sh.version)
			_, ok := sh.lookup(extVersions)
			assert.False(t, ok, "supported_versions in a TLS 1.2 ServerHello")
		})
		t.Run("B.3.1.4 an obsolete group beside P-256 is passed over", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extGroups, u16list(secp224r1, groupP256)).set(extKeyShare, keyShare(groupP256, p256.PublicKey().Bytes())))
			sh := readServerHello(t, c.raw)
			assert.Equal(t, []byte{0, 0x17}, sh.ext(extKeyShare)[:2], "ServerHello key_share group")
		})
		t.Run("4.1.1 an obsolete group alone is handshake_failure", func(t *testing.T) {
			c := dialClient13(t, f, addr)
			c.send(c.hello.set(extGroups, u16list(secp224r1)).set(extKeyShare, keyShare(secp224r1, slices.Repeat([]byte{0xab}, 32))))
			expectPlainAlert(t, c.raw, alertHandshakeFailure)
		})
	})
}

// withMessage is the handshake messages msgs with the one of type typ
// replaced by what change makes of it.
func withMessage(msgs []byte, typ byte, change func(msg []byte) []byte) []byte {
	var out []byte
	for len(msgs) > 0 {
		n := 4 + (int(msgs[1])<<16 | int(msgs[2])<<8 | int(msgs[3]))
		msg := msgs[:n]
		if msg[0] == typ {
			msg = change(msg)
		}
		out, msgs = append(out, msg...), msgs[n:]
	}
	return out
}

// expectClientAuthAlert12 runs a TLS 1.2 handshake with the client
// certificate client, its message of type typ (Certificate or
// CertificateVerify) changed by change, all of the flight before the
// ChangeCipherSpec in one record, and checks that the edge answered with
// the alert crypto/tls names alert.
func expectClientAuthAlert12(t *testing.T, f *fixture, addr string, client tls.Certificate, typ byte, change func(msg []byte) []byte, alert string) {
	t.Helper()
	_, err := clientAuthHandshake(t, f, addr, tls.VersionTLS12, []tls.Certificate{client}, func(_ *peer, flight []byte) []byte {
		return coalesce12(t, flight, func(msgs []byte) []byte {
			return record.Append(nil, record.Handshake, 0x0303, withMessage(msgs, typ, change))
		})
	})
	assert.ErrorContains(t, err, "remote error: tls: "+alert)
}

// TestProbeEdgeCertificateVerify is tlsfuzzer's
// test-certificate-verify-malformed.py against an edge that requires a
// client certificate (-client-auth require): the client's
// CertificateVerify (RFC 5246, Sections 7.4.8 and 4.7: a
// SignatureAndHashAlgorithm, then signature<0..2^16-1>; RFC 8446, Section
// 4.4.3, alike) changed in crypto/tls's last flight, TLS 1.2 and 1.3. A
// message whose length disagrees with its signature's, or too short to
// hold the scheme and the length, cannot be decoded: decode_error. One
// that decodes, with a signature of 0 to 3 bytes, does not verify:
// decrypt_error (Section 7.2.2).
func TestProbeEdgeCertificateVerify(t *testing.T) {
	f := newFixture(t)
	_, caFile, client := clientCA(t, "client-5")
	// certificateVerify is the CertificateVerify message with body.
	certificateVerify := func(body []byte) []byte { return hsMsg(15, body...) }
	tests := []struct {
		name   string
		change func(cv []byte) []byte // cv: crypto/tls's CertificateVerify message
		alert  string                 // crypto/tls's text of the alert
	}{
		{"one byte past its signature is decode_error", func(cv []byte) []byte { return certificateVerify(append(slices.Clone(cv[4:]), 0)) }, "error decoding message"},
		{"one byte short of its signature is decode_error", func(cv []byte) []byte { return certificateVerify(cv[4 : len(cv)-1]) }, "error decoding message"},
	}
	for _, v := range []byte{1, 2, 0x80, 0xff} {
		tests = append(tests, struct {
			name   string
			change func(cv []byte) []byte
			alert  string
		}{fmt.Sprintf("signature length changed by %#x is decode_error", v), func(cv []byte) []byte {
			cv = slices.Clone(cv)
			cv[7] ^= v
			return cv
		}, "error decoding message"})
	}
	for n := range 4 {
		tests = append(tests, struct {
			name   string
			change func(cv []byte) []byte
			alert  string
		}{fmt.Sprintf("a signature of %d bytes is decrypt_error", n), func(cv []byte) []byte {
			return certificateVerify(slices.Concat(cv[4:6], []byte{0, byte(n)}, slices.Repeat([]byte{0xac}, n)))
		}, "error decrypting message"}, struct {
			name   string
			change func(cv []byte) []byte
			alert  string
		}{fmt.Sprintf("a CertificateVerify of %d bytes is decode_error", n), func(cv []byte) []byte {
			return certificateVerify(cv[4 : 4+n])
		}, "error decoding message"})
	}
	probeEdgesWith(t, f, []string{"-client-auth", "require", "-client-ca", caFile}, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run("RFC 5246 7.4.8 "+tc.name, func(t *testing.T) {
				expectClientAuthAlert12(t, f, addr, client, 15, tc.change, tc.alert)
			})
			// RFC 8446, Section 4.4.3: the same structure. The client has
			// finished by then; the alert comes under the server's
			// handshake key, which crypto/tls still has.
			t.Run("RFC 8446 4.4.3 "+tc.name, func(t *testing.T) {
				c, err := clientAuthHandshake(t, f, addr, tls.VersionTLS13, []tls.Certificate{client}, func(p *peer, flight []byte) []byte {
					return coalesce13(t, p, flight, func(msgs []byte, hs *record.Cipher) []byte {
						rec, err := hs.Seal(nil, record.Handshake, withMessage(msgs, 15, tc.change), 0)
						require.NoError(t, err)
						return rec
					})
				})
				if err == nil {
					_, err = c.Read(make([]byte, 1))
				}
				assert.ErrorContains(t, err, "remote error: tls: "+tc.alert)
			})
		}
	})
}

// TestProbeEdgeClientCertificate12 is tlsfuzzer's
// test-certificate-malformed.py against an edge that asks for a client
// certificate (-client-auth request): the TLS 1.2 client's Certificate
// (RFC 5246, Section 7.4.6: ASN.1Cert certificate_list<0..2^24-1>, each
// ASN.1Cert<1..2^24-1>) replaced in crypto/tls's last flight. Lengths that
// do not add up to the message are decode_error; a list that decodes, of
// one certificate of zero bytes, is not a certificate: bad_certificate
// (RFC 5246, Section 7.2.2). The script leaves a certificate of no bytes
// at all to the server, and so does this probe.
func TestProbeEdgeClientCertificate12(t *testing.T) {
	f := newFixture(t)
	_, caFile, client := clientCA(t, "client-6")
	type variant struct {
		name   string
		change func(msg []byte) []byte // msg: crypto/tls's Certificate message
		alert  string                  // crypto/tls's text of the alert
	}
	var variants []variant
	// The script's "fuzz empty certificate": the list's length i, k bytes
	// after it, the third of which (the low byte of the first
	// certificate's length) is j.
	for i := range 8 {
		for j := range 8 {
			for k := range 6 {
				if i == 3 && j == 0 || k == 0 && i == 0 || k < 3 && j > 0 {
					continue // well-formed, or left to the server; j unused
				}
				body := append([]byte{0, 0, byte(i)}, make([]byte, k)...)
				if k >= 3 {
					body[5] = byte(j)
				}
				alert := "error decoding message"
				if i == j+3 && k == i {
					alert = "bad certificate"
				}
				variants = append(variants, variant{fmt.Sprintf("list length %d, first certificate length %d, %d bytes", i, j, k+3),
					func([]byte) []byte { return hsMsg(11, body...) }, alert})
			}
		}
	}
	// The real certificate's lengths changed.
	for _, v := range []byte{1, 2, 0x10, 0x80, 0xff} {
		for _, at := range []struct {
			name string
			i    int
		}{{"list length's low byte", 6}, {"first certificate length's high byte", 7}, {"first certificate length's low byte", 9}} {
			variants = append(variants, variant{fmt.Sprintf("the %s changed by %#x", at.name, v), func(msg []byte) []byte {
				msg = slices.Clone(msg)
				msg[at.i] ^= v
				return msg
			}, "error decoding message"})
		}
	}
	probeEdgesWith(t, f, []string{"-client-auth", "request", "-client-ca", caFile}, func(t *testing.T, addr string) {
		for _, v := range variants {
			t.Run("RFC 5246 7.4.6 "+v.name, func(t *testing.T) {
				expectClientAuthAlert12(t, f, addr, client, 11, v.change, v.alert)
			})
		}
	})
}

// TestProbeEdgeRSAKeyExchange12 is tlsfuzzer's
// test-truncating-of-kRSA-client-key-exchange.py and
// test-invalid-rsa-key-exchange-messages.py: the TLS 1.2 client's RSA
// ClientKeyExchange (RFC 5246, Section 7.4.7.1: EncryptedPreMasterSecret,
// opaque<0..2^16-1>) replaced in crypto/tls's flight. One whose message
// length disagrees with the ciphertext's cannot be decoded: decode_error.
// A ciphertext that decodes but is all zeros, of the key's size or of
// another, empty, or the modulus itself, does not decrypt to a premaster:
// "a TLS server MUST NOT generate an alert if processing an RSA-encrypted
// premaster secret message fails" and goes on with a random one (Section
// 7.4.7.1), so the client's Finished does not authenticate,
// bad_record_mac, as for every bad padding (TestProbeEdgeRSAPremaster).
// Before this round a ciphertext not of the modulus size was decode_error.
func TestProbeEdgeRSAKeyExchange12(t *testing.T) {
	f := newFixture(t)
	cert, err := x509.ParseCertificate(f.rsa.Chain[0])
	require.NoError(t, err)
	modulus := cert.PublicKey.(*rsa.PublicKey).N.Bytes() // 256 bytes
	encrypted := func(c []byte) func([]byte) []byte {
		return func([]byte) []byte { return hsMsg(16, append([]byte{byte(len(c) >> 8), byte(len(c))}, c...)...) }
	}
	tests := []struct {
		name   string
		change func(cke []byte) []byte // cke: crypto/tls's ClientKeyExchange message
		alert  string                  // crypto/tls's text of the alert
	}{
		{"a byte past the ciphertext is decode_error", func(cke []byte) []byte { return hsMsg(16, append(slices.Clone(cke[4:]), 0)...) }, "error decoding message"},
		{"a byte short of the ciphertext is decode_error", func(cke []byte) []byte { return hsMsg(16, cke[4:len(cke)-1]...) }, "error decoding message"},
		{"the modulus as the ciphertext is bad_record_mac", encrypted(modulus), "bad record MAC"},
		{"an empty ciphertext is bad_record_mac", encrypted(nil), "bad record MAC"},
	}
	for _, size := range []int{128, 256, 384, 512} {
		tests = append(tests, struct {
			name   string
			change func(cke []byte) []byte
			alert  string
		}{fmt.Sprintf("a ciphertext of %d zero bytes is bad_record_mac", size), encrypted(make([]byte, size)), "bad record MAC"})
	}
	probeEdges(t, f, func(t *testing.T, addr string) {
		for _, tc := range tests {
			t.Run("RFC 5246 7.4.7.1 "+tc.name, func(t *testing.T) {
				raw := dialRaw(t, addr)
				changed := false
				c := &tapConn{Conn: raw, write: func(b []byte) []byte {
					recs := splitPlainRecords(t, b)
					if changed || len(recs) == 0 || recs[0].typ != record.Handshake || recs[0].body[0] != 16 {
						return b
					}
					changed = true
					rest := b[record.HeaderLen+len(recs[0].body):]
					return append(fragments(tc.change(recs[0].body), 1<<14), rest...)
				}}
				require.NoError(t, raw.SetDeadline(time.Now().Add(20*time.Second)))
				err := tls.Client(c, &tls.Config{ServerName: f.rsa.Name, RootCAs: f.rsa.Pool, MaxVersion: tls.VersionTLS12,
					CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}).Handshake()
				require.True(t, changed, "no ClientKeyExchange written")
				assert.ErrorContains(t, err, "remote error: tls: "+tc.alert)
			})
		}
	})
}
