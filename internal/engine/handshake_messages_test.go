package engine

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// marshal encodes a ClientHello (with header) as a client would, writing the
// extensions in m.extensions order. The engine never sends one; tests use it
// to build and alter ClientHellos.
func (m *clientHelloMsg) marshal() []byte {
	addU16s := func(b *cryptobyte.Builder, vs []uint16) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, v := range vs {
				b.AddUint16(v)
			}
		})
	}
	schemes := func(s []tls.SignatureScheme) []uint16 {
		out := make([]uint16, len(s))
		for i, v := range s {
			out[i] = uint16(v)
		}
		return out
	}
	return marshalHandshake(typeClientHello, func(b *cryptobyte.Builder) {
		b.AddUint16(m.vers)
		b.AddBytes(m.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.sessionID) })
		addU16s(b, m.cipherSuites)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.compressionMethods) })
		if m.extensions == nil {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, ext := range m.extensions {
				addExtension(b, ext, func(b *cryptobyte.Builder) {
					switch ext {
					case extensionServerName:
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
							if m.serverName == "" {
								b.AddUint8(1) // a name type other than host_name
								b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8('x') })
								return
							}
							b.AddUint8(0)
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(m.serverName)) })
						})
					case extensionStatusRequest:
						b.AddUint8(1) // ocsp, no responder IDs, no extensions
						b.AddUint16(0)
						b.AddUint16(0)
					case extensionSupportedGroups:
						groups := make([]uint16, len(m.supportedGroups))
						for i, g := range m.supportedGroups {
							groups[i] = uint16(g)
						}
						addU16s(b, groups)
					case extensionSupportedPoints:
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.supportedPoints) })
					case extensionSignatureAlgorithms:
						addU16s(b, schemes(m.signatureAlgorithms))
					case extensionSignatureAlgorithmsCert:
						addU16s(b, schemes(m.signatureAlgorithmsCert))
					case extensionALPN:
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
							for _, p := range m.alpnProtocols {
								b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
							}
						})
					case extensionSessionTicket:
						b.AddBytes(m.sessionTicket)
					case extensionSupportedVersions:
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
							for _, v := range m.supportedVersions {
								b.AddUint16(v)
							}
						})
					case extensionCookie:
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.cookie) })
					case extensionKeyShare:
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
							for _, ks := range m.keyShares {
								b.AddUint16(uint16(ks.group))
								b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ks.data) })
							}
						})
					case extensionPSKModes:
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.pskModes) })
					case extensionPreSharedKey:
						ids, binders := m.pskIdentities, m.pskBinders
						if ids == nil {
							ids, binders = []pskIdentity{{identity: []byte("identity")}}, [][]byte{make([]byte, 32)}
						}
						b.AddBytes(pskExtension(ids, binders))
					case extensionRenegotiationInfo:
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.secureRenegotiation) })
					case extensionRecordSizeLimit:
						b.AddUint16(m.recordSizeLimit)
					}
				})
			}
		})
	})
}

// pskExtension encodes the body of a pre_shared_key extension, RFC 8446,
// Section 4.2.11: the identities with their obfuscated ages, then the
// binders.
func pskExtension(ids []pskIdentity, binders [][]byte) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, id := range ids {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(id.identity) })
			b.AddUint32(id.obfuscatedTicketAge)
		}
	})
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, binder := range binders {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(binder) })
		}
	})
	return b.BytesOrPanic()
}

// parseHello parses a ClientHello record or message into its struct.
func parseHello(t testing.TB, rec []byte) *clientHelloMsg {
	t.Helper()
	msg := rec
	if rec[0] == byte(record.Handshake) {
		_, _, body, _, err := record.Parse(rec, 1<<16-1)
		require.NoError(t, err)
		msg = body
	}
	var ch clientHelloMsg
	require.True(t, ch.unmarshal(msg[4:]), "cannot parse ClientHello")
	return &ch
}

// helloRecord wraps a ClientHello message in a plaintext record.
func helloRecord(m *clientHelloMsg) []byte {
	return record.Append(nil, record.Handshake, tls.VersionTLS10, m.marshal())
}

// captureClientHello returns the first flight (the ClientHello records) of
// crypto/tls's client with cfg.
func captureClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, cfg).Handshake()
		client.Close()
	}()
	server.SetDeadline(time.Now().Add(10 * time.Second))
	var buf []byte
	tmp := make([]byte, 1<<16)
	for {
		_, _, _, n, err := record.Parse(buf, 1<<16-1)
		require.NoError(t, err)
		if n > 0 {
			return buf[:n]
		}
		m, err := server.Read(tmp)
		require.NoError(t, err)
		buf = append(buf, tmp[:m]...)
	}
}

// rfc8448ClientHello is the ClientHello of RFC 8448, Section 3 (Simple
// 1-RTT Handshake), with its handshake header.
const rfc8448ClientHello = "010000c00303cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef" +
	"6283024dece7000006130113031302010000910000000b000900000673657276" +
	"6572ff01000100000a00140012001d0017001800190100010101020103010400" +
	"230000003300260024001d002099381de560e4bd43d23d8e435a7dbafeb3c06e" +
	"51c13cae4d5413691e529aaf2c002b0003020304000d0020001e040305030603" +
	"020308040805080604010501060102010402050206020202002d00020101001c" +
	"00024001"

// TestClientHelloParse parses ClientHellos the engine's code did not build:
// RFC 8448's, checked field by field against the RFC's annotation, and
// crypto/tls's, checked against the configuration it came from.
func TestClientHelloParse(t *testing.T) {
	t.Run("RFC 8448", func(t *testing.T) {
		msg, err := hex.DecodeString(rfc8448ClientHello)
		require.NoError(t, err)
		var m clientHelloMsg
		require.True(t, m.unmarshal(msg[4:]))
		random, _ := hex.DecodeString("cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7")
		share, _ := hex.DecodeString("99381de560e4bd43d23d8e435a7dbafeb3c06e51c13cae4d5413691e529aaf2c")
		assert.Equal(t, uint16(0x0303), m.vers)
		assert.Equal(t, random, m.random)
		assert.Empty(t, m.sessionID)
		assert.Equal(t, []uint16{0x1301, 0x1303, 0x1302}, m.cipherSuites)
		assert.Equal(t, []uint8{0}, []uint8(m.compressionMethods))
		// server_name, renegotiation_info, supported_groups, session_ticket,
		// key_share, supported_versions, signature_algorithms,
		// psk_key_exchange_modes, record_size_limit.
		assert.Equal(t, []uint16{0, 0xff01, 10, 35, 51, 43, 13, 45, 28}, m.extensions)
		assert.Equal(t, "server", m.serverName)
		assert.True(t, m.secureRenegotiationSupported)
		assert.Empty(t, m.secureRenegotiation)
		assert.Equal(t, []tls.CurveID{0x001d, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104}, m.supportedGroups)
		assert.True(t, m.ticketSupported)
		assert.Empty(t, m.sessionTicket)
		require.Len(t, m.keyShares, 1)
		assert.Equal(t, tls.CurveID(0x001d), m.keyShares[0].group)
		assert.Equal(t, share, m.keyShares[0].data)
		assert.Equal(t, []uint16{0x0304}, m.supportedVersions)
		assert.Equal(t, []tls.SignatureScheme{0x0403, 0x0503, 0x0603, 0x0203, 0x0804, 0x0805, 0x0806,
			0x0401, 0x0501, 0x0601, 0x0201, 0x0402, 0x0502, 0x0602, 0x0202}, m.signatureAlgorithms)
		assert.Equal(t, []uint8{1}, m.pskModes) // psk_dhe_ke
		assert.False(t, m.extendedMasterSecret || m.earlyData || m.pskOffered || m.ocspStapling || m.scts)
		assert.Empty(t, m.alpnProtocols)
	})
	t.Run("crypto/tls", func(t *testing.T) {
		cfg := &tls.Config{ServerName: "client.example.com", NextProtos: []string{"h2", "http/1.1"},
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13}
		m := parseHello(t, captureClientHello(t, cfg))
		assert.Equal(t, uint16(tls.VersionTLS12), m.vers)
		assert.Len(t, m.random, 32)
		assert.Len(t, m.sessionID, 32, "middlebox compatibility mode")
		assert.Contains(t, m.cipherSuites, uint16(tls.TLS_AES_128_GCM_SHA256))
		assert.Contains(t, m.cipherSuites, uint16(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256))
		assert.Equal(t, "client.example.com", m.serverName)
		assert.Equal(t, []string{"h2", "http/1.1"}, m.alpnProtocols)
		assert.Equal(t, []uint16{tls.VersionTLS13, tls.VersionTLS12}, m.supportedVersions)
		assert.Equal(t, []tls.CurveID{tls.X25519, tls.CurveP256}, m.supportedGroups)
		require.NotEmpty(t, m.keyShares)
		assert.Equal(t, tls.X25519, m.keyShares[0].group)
		assert.Len(t, m.keyShares[0].data, 32)
		assert.Equal(t, []uint8{0}, []uint8(m.supportedPoints))
		assert.True(t, m.extendedMasterSecret)
		assert.True(t, m.secureRenegotiationSupported)
		assert.Contains(t, m.signatureAlgorithms, tls.ECDSAWithP256AndSHA256)
		assert.Contains(t, m.signatureAlgorithms, tls.PSSWithSHA256)
	})
}

// normalizeHello clears the differences between nil and empty slices that
// the wire format cannot carry.
func normalizeHello(m clientHelloMsg) clientHelloMsg {
	nilIfEmpty := func(b *[]byte) {
		if len(*b) == 0 {
			*b = nil
		}
	}
	for _, b := range []*[]byte{&m.sessionID, &m.compressionMethods, &m.supportedPoints, &m.sessionTicket,
		&m.cookie, &m.pskModes, &m.secureRenegotiation} {
		nilIfEmpty(b)
	}
	if len(m.keyShares) == 0 {
		m.keyShares = nil
	}
	return m
}

func TestClientHelloRejects(t *testing.T) {
	p := getPKI(t)
	real := captureClientHello(t, clientConfig(p, "example.com"))
	good := parseHello(t, real)
	body := func(m *clientHelloMsg) []byte { return m.marshal()[4:] }
	withExts := func(f func(m *clientHelloMsg)) []byte {
		m := *good
		m.extensions = slices.Clone(good.extensions)
		f(&m)
		return body(&m)
	}
	realBody := body(good)
	tests := map[string][]byte{
		"empty":            nil,
		"truncated random": realBody[:20],
		"truncated":        realBody[:len(realBody)-1],
		"trailing data":    append(slices.Clone(realBody), 0),
		"duplicate ext":    withExts(func(m *clientHelloMsg) { m.extensions = append(m.extensions, extensionALPN) }),
		"no cipher suites": withExts(func(m *clientHelloMsg) { m.cipherSuites = nil }),
		"no compression":   withExts(func(m *clientHelloMsg) { m.compressionMethods = nil }),
		"long session id":  withExts(func(m *clientHelloMsg) { m.sessionID = make([]byte, 33) }),
		"empty alpn name": withExts(func(m *clientHelloMsg) {
			m.extensions = append(m.extensions, extensionALPN)
			m.alpnProtocols = []string{"h2", ""}
		}),
		"empty groups":    withExts(func(m *clientHelloMsg) { m.supportedGroups = nil }),
		"empty versions":  withExts(func(m *clientHelloMsg) { m.supportedVersions = nil }),
		"empty key share": withExts(func(m *clientHelloMsg) { m.keyShares = []keyShare{{tls.X25519, nil}} }),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var m clientHelloMsg
			assert.False(t, m.unmarshal(b), "accepted")
		})
	}
	var m clientHelloMsg
	assert.True(t, m.unmarshal(realBody), "re-marshalled real ClientHello rejected")
}

func TestCertificateRoundTrip(t *testing.T) {
	for _, tls13 := range []bool{false, true} {
		for _, chain := range [][][]byte{nil, {[]byte("leaf")}, {[]byte("leaf"), bytes.Repeat([]byte("i"), 70000)}} {
			m := certificateMsg{tls13: tls13, certificates: chain}
			msg := m.marshal()
			require.Equal(t, typeCertificate, msg[0])
			got := certificateMsg{tls13: tls13}
			require.True(t, got.unmarshal(msg[4:]), "tls13=%v chain=%d: round trip failed", tls13, len(chain))
			require.Len(t, got.certificates, len(chain))
			for i := range chain {
				assert.Equal(t, chain[i], []byte(got.certificates[i]), "certificate %d", i)
			}
			assert.False(t, got.unmarshal(msg[4:len(msg)-1]), "truncated Certificate accepted")
		}
	}
	// TLS 1.3: a non-empty certificate_request_context does not echo ours.
	assert.False(t, (&certificateMsg{tls13: true}).unmarshal([]byte{1, 0, 0, 0, 0}), "foreign certificate_request_context accepted")
}

func TestCertificateVerifyRoundTrip(t *testing.T) {
	m := certificateVerifyMsg{signatureAlgorithm: tls.ECDSAWithP256AndSHA256, signature: []byte("signature")}
	msg := m.marshal()
	var got certificateVerifyMsg
	require.True(t, got.unmarshal(msg[4:]))
	assert.Equal(t, m.signatureAlgorithm, got.signatureAlgorithm)
	assert.Equal(t, m.signature, got.signature)
	for _, bad := range [][]byte{msg[4 : len(msg)-1], append(slices.Clone(msg[4:]), 0), {4, 3, 0}, {4, 3}} {
		assert.False(t, got.unmarshal(bad), "accepted %x", bad)
	}
	// signature<0..2^16-1>: an empty one decodes (and does not verify).
	require.True(t, got.unmarshal([]byte{4, 3, 0, 0}))
	assert.Empty(t, got.signature)
}

// TestServerMessages checks the encodings of what the server sends against
// hand-assembled bytes.
func TestServerMessages(t *testing.T) {
	hrr := (&serverHelloMsg{random: helloRetryRequestRandom, sessionID: []byte{1, 2}, cipherSuite: 0x1301,
		supportedVersion: tls.VersionTLS13, selectedGroup: tls.CurveP256}).marshal()
	want := []byte{typeServerHello, 0, 0, 54, 3, 3}
	want = append(want, helloRetryRequestRandom...)
	want = append(want, 2, 1, 2, 0x13, 0x01, 0, 0, 12, 0, 43, 0, 2, 3, 4, 0, 51, 0, 2, 0, 23)
	assert.Equal(t, want, hrr, "HelloRetryRequest")
	sh12 := (&serverHelloMsg{random: make([]byte, 32), cipherSuite: 0xc02b, secureRenegotiation: true,
		extendedMasterSecret: true, supportedPoints: true, alpnProtocol: "h2"}).marshal()
	wantExt := []byte{0xff, 0x01, 0, 1, 0, 0, 23, 0, 0, 0, 11, 0, 2, 1, 0, 0, 16, 0, 5, 0, 3, 2, 'h', '2'}
	assert.Equal(t, wantExt, sh12[len(sh12)-len(wantExt):], "TLS 1.2 ServerHello extensions")
	assert.Equal(t, len(sh12)-4, int(sh12[3]), "TLS 1.2 ServerHello length")
	assert.Equal(t, []byte{8, 0, 0, 2, 0, 0}, (&encryptedExtensionsMsg{}).marshal(), "EncryptedExtensions")
	cr := (&certificateRequestMsg{tls13: true, signatureAlgorithms: []tls.SignatureScheme{tls.Ed25519}}).marshal()
	assert.Equal(t, []byte{13, 0, 0, 11, 0, 0, 8, 0, 13, 0, 4, 0, 2, 8, 7}, cr, "CertificateRequest")
	cr12 := (&certificateRequestMsg{signatureAlgorithms: []tls.SignatureScheme{tls.Ed25519}, certificateAuthorities: [][]byte{{0x30}}}).marshal()
	assert.Equal(t, []byte{13, 0, 0, 12, 2, 1, 64, 0, 2, 8, 7, 0, 3, 0, 1, 0x30}, cr12, "TLS 1.2 CertificateRequest")
	skx := (&serverKeyExchangeMsg{group: tls.X25519, publicKey: []byte{1, 2}, signatureAlgorithm: tls.Ed25519, signature: []byte{3}}).marshal()
	assert.Equal(t, []byte{12, 0, 0, 11, 3, 0, 29, 2, 1, 2, 8, 7, 0, 1, 3}, skx, "ServerKeyExchange")
}

func TestValidHostname(t *testing.T) {
	for name, want := range map[string]bool{
		"example.com": true, "a-b.example.com": true, "x": true, "_srv.example.com": true,
		"example.com.": false, "-a.com": false, "a..b": false, "10.0.0.1": false, "a b.com": false,
		"": false, string(bytes.Repeat([]byte("a"), 64)) + ".com": false,
	} {
		assert.Equal(t, want, validHostname(name), "validHostname(%q)", name)
	}
}
