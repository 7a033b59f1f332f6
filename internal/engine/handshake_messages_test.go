package engine

import (
	"bytes"
	"crypto/tls"
	"net"
	"reflect"
	"slices"
	"testing"
	"time"

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
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("identity")) })
							b.AddUint32(0)
						})
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
							b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
						})
					case extensionRenegotiationInfo:
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.secureRenegotiation) })
					}
				})
			}
		})
	})
}

// parseHello parses a ClientHello record or message into its struct.
func parseHello(t testing.TB, rec []byte) *clientHelloMsg {
	t.Helper()
	msg := rec
	if rec[0] == byte(record.Handshake) {
		_, _, body, _, err := record.Parse(rec, 1<<16-1)
		if err != nil {
			t.Fatal(err)
		}
		msg = body
	}
	var ch clientHelloMsg
	if !ch.unmarshal(msg[4:]) {
		t.Fatal("cannot parse ClientHello")
	}
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
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return buf[:n]
		}
		m, err := server.Read(tmp)
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, tmp[:m]...)
	}
}

func TestClientHelloRoundTrip(t *testing.T) {
	base := clientHelloMsg{
		vers:               tls.VersionTLS12,
		random:             bytes.Repeat([]byte{7}, 32),
		sessionID:          bytes.Repeat([]byte{9}, 32),
		cipherSuites:       []uint16{tls.TLS_AES_128_GCM_SHA256, scsvRenegotiation},
		compressionMethods: []uint8{0},
	}
	full := base
	full.extensions = []uint16{extensionServerName, extensionSupportedGroups, extensionSupportedPoints,
		extensionSignatureAlgorithms, extensionSignatureAlgorithmsCert, extensionALPN, extensionSessionTicket,
		extensionSupportedVersions, extensionCookie, extensionKeyShare, extensionPSKModes, extensionEarlyData,
		extensionExtendedMasterSecret, extensionRenegotiationInfo, extensionPreSharedKey}
	full.serverName = "example.com"
	full.supportedGroups = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
	full.supportedPoints = []uint8{0}
	full.signatureAlgorithms = []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256}
	full.signatureAlgorithmsCert = []tls.SignatureScheme{tls.PKCS1WithSHA256}
	full.alpnProtocols = []string{"h2", "http/1.1"}
	full.ticketSupported, full.sessionTicket = true, []byte("ticket")
	full.supportedVersions = []uint16{tls.VersionTLS13, tls.VersionTLS12}
	full.cookie = []byte("cookie")
	full.keyShares = []keyShare{{tls.X25519, bytes.Repeat([]byte{1}, 32)}}
	full.pskModes = []uint8{1}
	full.earlyData, full.extendedMasterSecret, full.pskOffered = true, true, true
	full.secureRenegotiationSupported, full.secureRenegotiation = true, []byte{}
	noExt := base
	noExt.secureRenegotiationSupported = true
	emptyShares := base
	emptyShares.extensions = []uint16{extensionKeyShare}

	for name, m := range map[string]clientHelloMsg{"full": full, "no extensions": noExt, "empty key_share": emptyShares} {
		t.Run(name, func(t *testing.T) {
			if name != "no extensions" {
				m.secureRenegotiationSupported = true // from the SCSV
			}
			msg := m.marshal()
			var got clientHelloMsg
			if !got.unmarshal(msg[4:]) {
				t.Fatal("unmarshal failed")
			}
			if !reflect.DeepEqual(normalizeHello(got), normalizeHello(m)) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
			}
		})
	}
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
		"psk not last":     withExts(func(m *clientHelloMsg) { m.extensions = append([]uint16{extensionPreSharedKey}, m.extensions...) }),
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
			if m.unmarshal(b) {
				t.Error("accepted")
			}
		})
	}
	var m clientHelloMsg
	if !m.unmarshal(realBody) {
		t.Fatal("re-marshalled real ClientHello rejected")
	}
}

func TestCertificateRoundTrip(t *testing.T) {
	for _, tls13 := range []bool{false, true} {
		for _, chain := range [][][]byte{nil, {[]byte("leaf")}, {[]byte("leaf"), bytes.Repeat([]byte("i"), 70000)}} {
			m := certificateMsg{tls13: tls13, certificates: chain}
			msg := m.marshal()
			if msg[0] != typeCertificate {
				t.Fatal("wrong type")
			}
			got := certificateMsg{tls13: tls13}
			if !got.unmarshal(msg[4:]) || len(got.certificates) != len(chain) {
				t.Fatalf("tls13=%v chain=%d: round trip failed", tls13, len(chain))
			}
			for i := range chain {
				if !bytes.Equal(got.certificates[i], chain[i]) {
					t.Errorf("certificate %d differs", i)
				}
			}
			if got.unmarshal(msg[4 : len(msg)-1]) {
				t.Error("truncated Certificate accepted")
			}
		}
	}
	// TLS 1.3: a non-empty certificate_request_context does not echo ours.
	if (&certificateMsg{tls13: true}).unmarshal([]byte{1, 0, 0, 0, 0}) {
		t.Error("foreign certificate_request_context accepted")
	}
}

func TestCertificateVerifyRoundTrip(t *testing.T) {
	m := certificateVerifyMsg{signatureAlgorithm: tls.ECDSAWithP256AndSHA256, signature: []byte("signature")}
	msg := m.marshal()
	var got certificateVerifyMsg
	if !got.unmarshal(msg[4:]) || !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip: %+v", got)
	}
	for _, bad := range [][]byte{msg[4 : len(msg)-1], append(slices.Clone(msg[4:]), 0), {4, 3, 0, 0}} {
		if got.unmarshal(bad) {
			t.Errorf("accepted %x", bad)
		}
	}
}

// TestServerMessages checks the encodings of what the server sends against
// hand-assembled bytes.
func TestServerMessages(t *testing.T) {
	hrr := (&serverHelloMsg{random: helloRetryRequestRandom, sessionID: []byte{1, 2}, cipherSuite: 0x1301,
		supportedVersion: tls.VersionTLS13, selectedGroup: tls.CurveP256}).marshal()
	want := []byte{typeServerHello, 0, 0, 54, 3, 3}
	want = append(want, helloRetryRequestRandom...)
	want = append(want, 2, 1, 2, 0x13, 0x01, 0, 0, 12, 0, 43, 0, 2, 3, 4, 0, 51, 0, 2, 0, 23)
	if !bytes.Equal(hrr, want) {
		t.Errorf("HelloRetryRequest\n got %x\nwant %x", hrr, want)
	}
	sh12 := (&serverHelloMsg{random: make([]byte, 32), cipherSuite: 0xc02b, secureRenegotiation: true,
		extendedMasterSecret: true, supportedPoints: true, alpnProtocol: "h2"}).marshal()
	wantExt := []byte{0xff, 0x01, 0, 1, 0, 0, 23, 0, 0, 0, 11, 0, 2, 1, 0, 0, 16, 0, 5, 0, 3, 2, 'h', '2'}
	if !bytes.HasSuffix(sh12, wantExt) || int(sh12[3]) != len(sh12)-4 {
		t.Errorf("TLS 1.2 ServerHello %x", sh12)
	}
	if ee := (&encryptedExtensionsMsg{}).marshal(); !bytes.Equal(ee, []byte{8, 0, 0, 2, 0, 0}) {
		t.Errorf("EncryptedExtensions %x", ee)
	}
	cr := (&certificateRequestMsg{tls13: true, signatureAlgorithms: []tls.SignatureScheme{tls.Ed25519}}).marshal()
	if !bytes.Equal(cr, []byte{13, 0, 0, 11, 0, 0, 8, 0, 13, 0, 4, 0, 2, 8, 7}) {
		t.Errorf("CertificateRequest %x", cr)
	}
	cr12 := (&certificateRequestMsg{signatureAlgorithms: []tls.SignatureScheme{tls.Ed25519}, certificateAuthorities: [][]byte{{0x30}}}).marshal()
	if !bytes.Equal(cr12, []byte{13, 0, 0, 12, 2, 1, 64, 0, 2, 8, 7, 0, 3, 0, 1, 0x30}) {
		t.Errorf("TLS 1.2 CertificateRequest %x", cr12)
	}
	skx := (&serverKeyExchangeMsg{group: tls.X25519, publicKey: []byte{1, 2}, signatureAlgorithm: tls.Ed25519, signature: []byte{3}}).marshal()
	if !bytes.Equal(skx, []byte{12, 0, 0, 11, 3, 0, 29, 2, 1, 2, 8, 7, 0, 1, 3}) {
		t.Errorf("ServerKeyExchange %x", skx)
	}
}

func TestValidHostname(t *testing.T) {
	for name, want := range map[string]bool{
		"example.com": true, "a-b.example.com": true, "x": true, "_srv.example.com": true,
		"example.com.": false, "-a.com": false, "a..b": false, "10.0.0.1": false, "a b.com": false,
		"": false, string(bytes.Repeat([]byte("a"), 64)) + ".com": false,
	} {
		if got := validHostname(name); got != want {
			t.Errorf("validHostname(%q) = %v", name, got)
		}
	}
}
