package engine

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The tests here speak to the engine in hand-assembled bytes: ClientHellos
// built from the RFCs' code points written out as numbers, and server
// messages parsed by code of their own, so that a wrong constant or encoder
// in the engine cannot hide behind a test that shares it.

// Extension code points, IANA "TLS ExtensionType Values", written out.
const (
	xServerName        = 0
	xSupportedGroups   = 10
	xECPointFormats    = 11
	xSignatureAlgs     = 13
	xALPN              = 16
	xExtendedMaster    = 23
	xEarlyData         = 42
	xSupportedVersions = 43
	xKeyShare          = 51
	xRenegotiationInfo = 0xff01
)

type rawExt struct {
	typ  uint16
	data []byte
}

// rawHello is a ClientHello in wire terms.
type rawHello struct {
	legacyVersion uint16
	random        []byte
	sessionID     []byte
	suites        []uint16
	compression   []byte
	exts          []rawExt
}

func u16s(vs ...uint16) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return b.BytesOrPanic()
}

func extSNI(name string) rawExt {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(0) // host_name
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
	})
	return rawExt{xServerName, b.BytesOrPanic()}
}

func extALPN(protos ...string) rawExt {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return rawExt{xALPN, b.BytesOrPanic()}
}

func extKeyShare(shares ...rawExt) rawExt { // typ is the group here
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, s := range shares {
			b.AddUint16(s.typ)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.data) })
		}
	})
	return rawExt{xKeyShare, b.BytesOrPanic()}
}

func extVersions(vs ...uint16) rawExt {
	var b cryptobyte.Builder
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return rawExt{xSupportedVersions, b.BytesOrPanic()}
}

var (
	extPoints       = rawExt{xECPointFormats, []byte{1, 0}} // uncompressed
	extEMS          = rawExt{xExtendedMaster, nil}
	extRenegInfo    = rawExt{xRenegotiationInfo, []byte{0}}
	extEarlyData    = rawExt{xEarlyData, nil}
	extGroups       = func(gs ...uint16) rawExt { return rawExt{xSupportedGroups, u16s(gs...)} }
	extSigAlgs      = rawExt{xSignatureAlgs, u16s(0x0403, 0x0804, 0x0807)} // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, ed25519
	rawRandom       = bytes.Repeat([]byte{0x42}, 32)
	x25519Client    = mustECDH(ecdh.X25519())
	p256Client      = mustECDH(ecdh.P256())
	shareX25519     = rawExt{0x001d, x25519Client.PublicKey().Bytes()}
	shareP256       = rawExt{0x0017, p256Client.PublicKey().Bytes()}
	suitesTLS12     = []uint16{0xc02b, 0xc02f} // ECDHE_ECDSA/RSA_WITH_AES_128_GCM_SHA256
	suitesTLS13     = []uint16{0x1301}         // TLS_AES_128_GCM_SHA256
	scsvRenegRaw    = uint16(0x00ff)
	nullCompression = []byte{0}
)

func mustECDH(c ecdh.Curve) *ecdh.PrivateKey {
	k, err := c.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	return k
}

// message returns the ClientHello handshake message.
func (h rawHello) message() []byte {
	var b cryptobyte.Builder
	b.AddUint8(1) // client_hello
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(h.legacyVersion)
		b.AddBytes(h.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.sessionID) })
		b.AddBytes(u16s(h.suites...))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.compression) })
		if h.exts == nil {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range h.exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// record returns the ClientHello in a plaintext handshake record.
func (h rawHello) record() []byte {
	msg := h.message()
	var b cryptobyte.Builder
	b.AddUint8(22)
	b.AddUint16(0x0301)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(msg) })
	return b.BytesOrPanic()
}

func (h rawHello) without(typ uint16) rawHello {
	h.exts = slices.DeleteFunc(slices.Clone(h.exts), func(e rawExt) bool { return e.typ == typ })
	return h
}

func (h rawHello) with(e rawExt) rawHello {
	h.exts = append(slices.Clone(h.exts), e)
	return h
}

func (h rawHello) replace(e rawExt) rawHello {
	h = h.without(e.typ)
	return h.with(e)
}

func hello12() rawHello {
	return rawHello{legacyVersion: 0x0303, random: rawRandom, suites: suitesTLS12, compression: nullCompression,
		exts: []rawExt{extSNI("p256.example.com"), extGroups(0x001d, 0x0017), extPoints, extSigAlgs, extALPN("h2"), extEMS, extRenegInfo}}
}

func hello13() rawHello {
	return rawHello{legacyVersion: 0x0303, random: rawRandom, suites: suitesTLS13, compression: nullCompression,
		exts: []rawExt{extSNI("p256.example.com"), extGroups(0x001d, 0x0017), extSigAlgs, extALPN("h2"),
			extVersions(0x0304), extKeyShare(shareX25519)}}
}

// serverMsg is a handshake message the server sent, parsed by the test.
type serverMsg struct {
	typ  uint8
	body []byte
	raw  []byte
}

// helloFields are the parts of a ServerHello the tests look at.
type helloFields struct {
	version uint16
	random  []byte
	suite   uint16
	exts    []rawExt
}

func (f helloFields) extTypes() []uint16 {
	var out []uint16
	for _, e := range f.exts {
		out = append(out, e.typ)
	}
	return out
}

func (f helloFields) ext(typ uint16) ([]byte, bool) {
	for _, e := range f.exts {
		if e.typ == typ {
			return e.data, true
		}
	}
	return nil, false
}

func parseExtensions(t *testing.T, s *cryptobyte.String) []rawExt {
	t.Helper()
	if s.Empty() {
		return nil
	}
	var exts cryptobyte.String
	require.True(t, s.ReadUint16LengthPrefixed(&exts), "extensions block")
	var out []rawExt
	for !exts.Empty() {
		var e rawExt
		var data cryptobyte.String
		require.True(t, exts.ReadUint16(&e.typ) && exts.ReadUint16LengthPrefixed(&data), "extension")
		e.data = data
		out = append(out, e)
	}
	return out
}

func parseServerHello(t *testing.T, m serverMsg) helloFields {
	t.Helper()
	require.Equal(t, uint8(2), m.typ, "first server message is a ServerHello")
	var f helloFields
	var sid cryptobyte.String
	var compression uint8
	s := cryptobyte.String(m.body)
	require.True(t, s.ReadUint16(&f.version) && s.ReadBytes(&f.random, 32) && s.ReadUint8LengthPrefixed(&sid) &&
		s.ReadUint16(&f.suite) && s.ReadUint8(&compression), "ServerHello fields")
	assert.Zero(t, compression, "compression method")
	f.exts = parseExtensions(t, &s)
	assert.True(t, s.Empty(), "data after the ServerHello extensions")
	return f
}

// splitMessages cuts handshake messages out of a byte stream.
func splitMessages(t *testing.T, data []byte) []serverMsg {
	t.Helper()
	var out []serverMsg
	for len(data) > 0 {
		require.GreaterOrEqual(t, len(data), 4)
		n := int(data[1])<<16 | int(data[2])<<8 | int(data[3])
		require.GreaterOrEqual(t, len(data), 4+n)
		out = append(out, serverMsg{typ: data[0], body: data[4 : 4+n], raw: data[:4+n]})
		data = data[4+n:]
	}
	return out
}

// plaintextMessages returns the handshake messages of the unprotected
// handshake records at the start of out, and the records after them.
func plaintextMessages(t *testing.T, out []byte) ([]serverMsg, []byte) {
	t.Helper()
	var hs []byte
	for len(out) > 0 {
		typ, _, body, n, err := record.Parse(out, record.MaxCiphertextTLS13)
		require.NoError(t, err)
		require.NotZero(t, n, "truncated server record")
		if typ == record.ChangeCipherSpec {
			out = out[n:]
			continue
		}
		if typ != record.Handshake {
			break
		}
		hs = append(hs, body...)
		out = out[n:]
	}
	return splitMessages(t, hs), out
}

// stepHello runs one ClientHello through a fresh handshake.
func stepHello(t *testing.T, cfg *Config, hello []byte) (StepResult, *Handshake) {
	t.Helper()
	h, err := NewHandshake(cfg)
	require.NoError(t, err)
	return h.Step(context.Background(), getPKI(t).keys, hello), h
}

// encryptedExtensions opens the server's first protected record with keys
// derived from the test's own X25519 share and returns the server's
// EncryptedExtensions.
func encryptedExtensions(t *testing.T, hello rawHello, sh serverMsg, rest []byte) []rawExt {
	t.Helper()
	f := parseServerHello(t, sh)
	share, ok := f.ext(xKeyShare)
	require.True(t, ok, "ServerHello key_share")
	s := cryptobyte.String(share)
	var group uint16
	var pub cryptobyte.String
	require.True(t, s.ReadUint16(&group) && s.ReadUint16LengthPrefixed(&pub) && s.Empty())
	require.Equal(t, uint16(0x001d), group)
	peer, err := ecdh.X25519().NewPublicKey(pub)
	require.NoError(t, err)
	shared, err := x25519Client.ECDH(peer)
	require.NoError(t, err)
	th := sha256.New()
	th.Write(hello.message())
	th.Write(sh.raw)
	_, serverHS := newEarlySecret13(crypto.SHA256, nil).handshakeSecret(shared).trafficSecrets(th.Sum(nil))
	c, err := record.NewTLS13Cipher(0x1301, serverHS, 0)
	require.NoError(t, err)
	typ, vers, body, n, err := record.Parse(rest, record.MaxCiphertextTLS13)
	require.NoError(t, err)
	require.NotZero(t, n)
	inner, pt, err := c.Open(typ, vers, slices.Clone(body))
	require.NoError(t, err, "opening the server's first protected record")
	require.Equal(t, record.Handshake, inner)
	msgs := splitMessages(t, pt)
	require.Equal(t, uint8(8), msgs[0].typ, "EncryptedExtensions first")
	ee := cryptobyte.String(msgs[0].body)
	return parseExtensions(t, &ee)
}

// TestServerExtensionsOnlyInAnswer checks RFC 5246, Section 7.4.1.4 ("An
// extension type MUST NOT appear in the ServerHello unless the same
// extension type appeared in the corresponding ClientHello") and RFC 8446,
// Section 4.2 (the same for ServerHello, HelloRetryRequest and
// EncryptedExtensions): for every extension the server can send, a
// ClientHello without it gets none back, and one with it does (so the test
// sees the server able to send it at all).
func TestServerExtensionsOnlyInAnswer(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	cfg.NextProtos = []string{"h2"}
	types := func(h rawHello) []uint16 {
		var out []uint16
		for _, e := range h.exts {
			out = append(out, e.typ)
		}
		return out
	}
	t.Run("TLS 1.2 ServerHello", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			ext  uint16
		}{
			{"server_name", xServerName},
			{"ec_point_formats", xECPointFormats}, // RFC 8422, Section 5.2
			{"application_layer_protocol_negotiation", xALPN},
			{"extended_master_secret", xExtendedMaster}, // RFC 7627, Section 5.2
			{"renegotiation_info", xRenegotiationInfo},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, offered := range []bool{true, false} {
					ch := hello12()
					if !offered {
						ch = ch.without(tc.ext)
					}
					res, _ := stepHello(t, &cfg, ch.record())
					require.Equal(t, NeedInput, res.State, res.Reason)
					msgs, _ := plaintextMessages(t, res.Output)
					sh := parseServerHello(t, msgs[0])
					assert.Equal(t, uint16(0x0303), sh.version)
					assert.Subset(t, types(ch), sh.extTypes(), "ServerHello extensions not in the ClientHello")
					_, answered := sh.ext(tc.ext)
					assert.Equal(t, offered, answered, "offered=%v, ServerHello extensions %v", offered, sh.extTypes())
				}
			})
		}
		// RFC 5746, Section 3.6: the one exception, renegotiation_info in
		// answer to the signalling cipher suite value.
		ch := hello12().without(xRenegotiationInfo)
		ch.suites = append(slices.Clone(ch.suites), scsvRenegRaw)
		res, _ := stepHello(t, &cfg, ch.record())
		require.Equal(t, NeedInput, res.State, res.Reason)
		msgs, _ := plaintextMessages(t, res.Output)
		data, ok := parseServerHello(t, msgs[0]).ext(xRenegotiationInfo)
		assert.True(t, ok, "renegotiation_info in answer to TLS_EMPTY_RENEGOTIATION_INFO_SCSV")
		assert.Equal(t, []byte{0}, data)
	})
	// RSA key exchange: no elliptic curves, no ec_point_formats even when
	// the client sent it.
	t.Run("TLS 1.2 RSA key exchange", func(t *testing.T) {
		rsaCfg := serverConfig(p.rsa)
		ch := hello12()
		ch.suites = []uint16{0x009c} // TLS_RSA_WITH_AES_128_GCM_SHA256
		res, _ := stepHello(t, &rsaCfg, ch.record())
		require.Equal(t, NeedInput, res.State, res.Reason)
		msgs, _ := plaintextMessages(t, res.Output)
		_, ok := parseServerHello(t, msgs[0]).ext(xECPointFormats)
		assert.False(t, ok)
	})
	t.Run("TLS 1.3", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			ext  uint16
		}{
			{"server_name", xServerName},
			{"application_layer_protocol_negotiation", xALPN},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, offered := range []bool{true, false} {
					ch := hello13()
					if !offered {
						ch = ch.without(tc.ext)
					}
					res, _ := stepHello(t, &cfg, ch.record())
					require.Equal(t, NeedInput, res.State, res.Reason)
					msgs, rest := plaintextMessages(t, res.Output)
					require.Len(t, msgs, 1, "one plaintext message, the ServerHello")
					sh := parseServerHello(t, msgs[0])
					assert.ElementsMatch(t, []uint16{xSupportedVersions, xKeyShare}, sh.extTypes(), "TLS 1.3 ServerHello extensions")
					ee := encryptedExtensions(t, ch, msgs[0], rest)
					var eeTypes []uint16
					for _, e := range ee {
						eeTypes = append(eeTypes, e.typ)
					}
					assert.Subset(t, types(ch), eeTypes, "EncryptedExtensions not in the ClientHello")
					assert.Equal(t, offered, slices.Contains(eeTypes, tc.ext), "offered=%v, EncryptedExtensions %v", offered, eeTypes)
				}
			})
		}
	})
	t.Run("HelloRetryRequest", func(t *testing.T) {
		hrrCfg := cfg
		hrrCfg.Groups = []tls.CurveID{tls.CurveP256}
		ch := hello13()
		res, _ := stepHello(t, &hrrCfg, ch.record())
		require.Equal(t, NeedInput, res.State, res.Reason)
		msgs, _ := plaintextMessages(t, res.Output)
		hrr := parseServerHello(t, msgs[0])
		require.Equal(t, helloRetryRandomRFC, hrr.random, "a HelloRetryRequest")
		assert.Subset(t, types(ch), hrr.extTypes())
		data, _ := hrr.ext(xKeyShare)
		assert.Equal(t, []byte{0x00, 0x17}, data, "selected_group secp256r1")
	})
}

// helloRetryRandomRFC is SHA-256("HelloRetryRequest"), RFC 8446, Section 4.1.3.
var helloRetryRandomRFC = func() []byte { s := sha256.Sum256([]byte("HelloRetryRequest")); return s[:] }()

// constReader yields the same byte forever: a fixed server randomness.
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

// TestDowngradeSentinelBytes reads ServerHello.random. RFC 8446, Section
// 4.1.3: a TLS 1.3 server negotiating TLS 1.2 "MUST set the last 8 bytes of
// their Random value to the bytes 44 4F 57 4E 47 52 44 01"; a server whose
// maximum is TLS 1.2 is not one, and its random is just random.
func TestDowngradeSentinelBytes(t *testing.T) {
	p := getPKI(t)
	sentinel := []byte{0x44, 0x4F, 0x57, 0x4E, 0x47, 0x52, 0x44, 0x01}
	for _, tc := range []struct {
		name    string
		max     uint16
		hello   rawHello
		wantEnd []byte
	}{
		{"TLS 1.3 server, TLS 1.2 client", tls.VersionTLS13, hello12(), sentinel},
		{"TLS 1.2 server, TLS 1.2 client", tls.VersionTLS12, hello12(), bytes.Repeat([]byte{0x5a}, 8)},
		{"TLS 1.2 server, TLS 1.3 client", tls.VersionTLS12, hello13().with(rawExt{xECPointFormats, []byte{1, 0}}).replace(extVersions(0x0304, 0x0303)),
			bytes.Repeat([]byte{0x5a}, 8)},
		{"TLS 1.3 server, TLS 1.3 client", tls.VersionTLS13, hello13(), bytes.Repeat([]byte{0x5a}, 8)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.MaxVersion, cfg.Rand = tc.max, constReader(0x5a)
			if tc.max == tls.VersionTLS12 {
				// TLS 1.2 suites for the TLS 1.3 client's hello too.
				tc.hello.suites = append(slices.Clone(tc.hello.suites), suitesTLS12...)
			}
			res, _ := stepHello(t, &cfg, tc.hello.record())
			require.Equal(t, NeedInput, res.State, res.Reason)
			msgs, _ := plaintextMessages(t, res.Output)
			sh := parseServerHello(t, msgs[0])
			assert.Equal(t, tc.wantEnd, sh.random[24:], "last 8 bytes of ServerHello.random")
			assert.Equal(t, bytes.Repeat([]byte{0x5a}, 24), sh.random[:24])
		})
	}
}

// TestHelloRetryRequestSecondHello checks the second ClientHello against
// the first. RFC 8446, Section 4.1.2: "the client MUST send the same
// ClientHello without modification, except as follows" (key_share replaced
// by a single share for the selected group, early_data removed, cookie,
// pre_shared_key, padding); Section 4.2.8: the server MUST verify that the
// selected group matches the one it asked for and that there is a single
// share.
func TestHelloRetryRequestSecondHello(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	cfg.Groups = []tls.CurveID{tls.CurveP256}
	first := hello13()
	second := first.replace(extKeyShare(shareP256))
	otherRandom := second
	otherRandom.random = bytes.Repeat([]byte{0x43}, 32)
	otherSuites := second
	otherSuites.suites = []uint16{0x1301, 0x1302}
	tests := []struct {
		name  string
		hello rawHello
		want  Alert // 0: the server flight follows
	}{
		{"as required", second, 0},
		{"early_data removed", second, 0},
		{"two key shares", second.replace(extKeyShare(shareP256, shareX25519)), alertIllegalParameter},
		{"share for another group", first, alertIllegalParameter},
		{"share for another group, with the right one's bytes", first.replace(extKeyShare(rawExt{0x001d, shareP256.data})), alertIllegalParameter},
		{"no key share", second.replace(extKeyShare()), alertIllegalParameter},
		{"early_data added", second.with(extEarlyData), alertIllegalParameter},
		{"random changed", otherRandom, alertIllegalParameter},
		{"cipher suites changed", otherSuites, alertIllegalParameter},
		{"ALPN changed", second.replace(extALPN("http/1.1")), alertIllegalParameter},
		{"server_name changed", second.replace(extSNI("rsa.example.com")), alertIllegalParameter},
		{"signature_algorithms changed", second.replace(rawExt{xSignatureAlgs, u16s(0x0403)}), alertIllegalParameter},
		{"supported_groups changed", second.replace(extGroups(0x0017)), alertIllegalParameter},
		{"TLS 1.3 withdrawn", second.replace(extVersions(0x0303)), alertIllegalParameter},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			firstHello := first
			if tc.name == "early_data removed" {
				firstHello = first.with(extEarlyData)
			}
			h, err := NewHandshake(&cfg)
			require.NoError(t, err)
			res := h.Step(context.Background(), p.keys, firstHello.record())
			require.Equal(t, NeedInput, res.State, res.Reason)
			msgs, _ := plaintextMessages(t, res.Output)
			require.Equal(t, helloRetryRandomRFC, parseServerHello(t, msgs[0]).random, "a HelloRetryRequest")
			res = h.Step(context.Background(), p.keys, tc.hello.record())
			if tc.want == 0 {
				require.Equal(t, NeedInput, res.State, res.Reason)
				msgs, _ := plaintextMessages(t, res.Output)
				assert.NotEqual(t, helloRetryRandomRFC, parseServerHello(t, msgs[0]).random, "a real ServerHello")
				return
			}
			expectAlert(t, res, tc.want)
			if strings.Contains(tc.name, "share") {
				assert.Contains(t, res.Reason, "lacks exactly one key share", "refused by the key share check")
			}
		})
	}
}

// TestLegacyVersion records the decisions on ClientHello.legacy_version
// when supported_versions is present (see the notes of issue 8).
func TestLegacyVersion(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	both := func(legacy uint16, versions ...uint16) rawHello {
		h := hello13().replace(extVersions(versions...)).with(extPoints)
		h.legacyVersion = legacy
		h.suites = append(slices.Clone(suitesTLS13), suitesTLS12...)
		return h
	}
	for _, tc := range []struct {
		name     string
		hello    rawHello
		want     Alert // 0: accepted with version vers
		wantVers uint16
	}{
		// RFC 8446, Section 4.1.2: "the legacy_version field MUST be set to
		// 0x0303" in a TLS 1.3 ClientHello.
		{"TLS 1.3 with legacy 0x0301", both(0x0301, 0x0304, 0x0303), alertProtocolVersion, 0},
		{"TLS 1.3 with legacy 0x0302", both(0x0302, 0x0304), alertProtocolVersion, 0},
		{"TLS 1.3 with legacy 0x0303", both(0x0303, 0x0304, 0x0303), 0, tls.VersionTLS13},
		// RFC 8446, Section 4.2.1: servers "MUST use only the
		// supported_versions extension to determine client preferences".
		{"TLS 1.2 with legacy 0x0301", both(0x0301, 0x0303), 0, tls.VersionTLS12},
		// RFC 8446, Appendix D.5: legacy_version 0x0300 or less MUST abort
		// with protocol_version.
		{"legacy 0x0300", both(0x0300, 0x0304, 0x0303), alertProtocolVersion, 0},
		{"legacy 0x0200", both(0x0200, 0x0303), alertProtocolVersion, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, h := stepHello(t, &cfg, tc.hello.record())
			if tc.want != 0 {
				expectAlert(t, res, tc.want)
				return
			}
			require.Equal(t, NeedInput, res.State, res.Reason)
			assert.Equal(t, tc.wantVers, h.vers)
		})
	}
}

// TestSSLv2ClientHello: an SSL 2.0 compatible CLIENT-HELLO (RFC 5246,
// Appendix E.2) is refused. RFC 8446, Appendix D.5: "Implementations MUST
// NOT negotiate TLS 1.3 or later using an SSL version 2.0 compatible
// CLIENT-HELLO. Implementations are NOT RECOMMENDED to accept an SSL
// version 2.0 compatible CLIENT-HELLO in order to negotiate older versions
// of TLS."
func TestSSLv2ClientHello(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	body := []byte{
		1,          // msg_type: CLIENT-HELLO
		0x03, 0x03, // version: TLS 1.2
		0, 6, // cipher_spec_length
		0, 0, // session_id_length
		0, 16, // challenge_length
		0x00, 0xc0, 0x2f, // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
		0x00, 0x00, 0xff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
	}
	body = append(body, bytes.Repeat([]byte{0x11}, 16)...)
	msg := append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...)
	res, _ := stepHello(t, &cfg, msg)
	expectAlert(t, res, alertUnexpectedMessage)
	assert.Contains(t, res.Reason, "SSL 2.0 compatible ClientHello")
	assert.Empty(t, res.Output)
}

// TestChangeCipherSpecLimit: RFC 8446, Section 5 has the server drop a
// compatibility change_cipher_spec during the handshake; the engine drops
// up to maxDroppedCCS of them and ends the handshake at the next.
func TestChangeCipherSpecLimit(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	res := h.Step(context.Background(), p.keys, hello13().record())
	require.Equal(t, NeedInput, res.State, res.Reason)
	for i := range maxDroppedCCS {
		// Saved and restored halfway, the count goes along.
		if i == maxDroppedCCS/2 {
			saved, err := h.MarshalBinary()
			require.NoError(t, err)
			h, err = RestoreHandshake(&cfg, saved)
			require.NoError(t, err)
		}
		res = h.Step(context.Background(), p.keys, ccs)
		require.Equal(t, NeedInput, res.State, "change_cipher_spec %d: %s", i+1, res.Reason)
	}
	assert.Equal(t, 16, maxDroppedCCS, "the bound the notes give")
	res = h.Step(context.Background(), p.keys, ccs)
	require.Equal(t, Failed, res.State)
	assert.Equal(t, alertUnexpectedMessage, res.AlertDescription, res.Reason)
	// The alert goes out under the server's application traffic keys: the
	// server has sent its Finished.
	assert.Equal(t, byte(record.ApplicationData), res.Alert[0])
}

// TestSecretsWiped: when a handshake ends, the secrets it held are zeroed,
// except those the Session hands on: on Complete the TLS 1.2 master secret
// and the TLS 1.3 client handshake traffic secret, on Failed all of them.
func TestSecretsWiped(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, failing := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/failed=%v", versionName(vers), failing), func(t *testing.T) {
				var held [][]byte
				tamperFinished := tamperProtected(typeFinished, flipLast)
				capture := func(h *Handshake, rec []byte) []byte {
					for _, s := range [][]byte{h.masterSecret, h.clientKey, h.clientIV, h.serverKey, h.serverIV,
						h.clientHandshake, h.clientTraffic, h.serverTraffic, h.exporterSecret} {
						if len(s) > 0 && !slices.ContainsFunc(held, func(o []byte) bool { return &o[0] == &s[0] }) {
							held = append(held, s)
						}
					}
					if failing {
						return tamperFinished(h, rec)
					}
					return rec
				}
				cl := clientConfig(p, "p256.example.com")
				cl.MaxVersion = vers
				res := runInterop(t, interopCase{server: serverConfig(p.p256), client: cl, mode: splitRecords, tamper: capture})
				var kept [][]byte
				if failing {
					expectFailure(t, res, alertDecryptError)
				} else {
					s := expectSuccess(t, res)
					kept = [][]byte{s.ClientKey, s.ClientIV, s.ServerKey, s.ServerIV, s.ClientTrafficSecret, s.ServerTrafficSecret, s.ExporterMasterSecret}
				}
				wiped := 0
				for _, secret := range held {
					if slices.ContainsFunc(kept, func(k []byte) bool { return len(k) > 0 && &k[0] == &secret[0] }) {
						continue
					}
					wiped++
					assert.Equal(t, make([]byte, len(secret)), secret, "a %d-byte secret left in memory", len(secret))
				}
				assert.Positive(t, wiped, "no secret to wipe was seen: the test checks nothing")
			})
		}
	}
}
