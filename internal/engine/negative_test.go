package engine

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// stripTLS13 rewrites the client's ClientHello to offer only TLS 1.2, as a
// downgrading attacker would.
func stripTLS13(_ *Handshake, rec []byte) []byte {
	if rec[0] != byte(record.Handshake) || rec[5] != typeClientHello {
		return rec
	}
	var ch clientHelloMsg
	if !ch.unmarshal(rec[9:]) {
		return rec
	}
	ch.extensions = slices.DeleteFunc(slices.Clone(ch.extensions), func(e uint16) bool { return e == extensionSupportedVersions })
	return helloRecord(&ch)
}

// rewriteProtected rewrites the plaintext of the handshake records the
// client protected and protects them again under the same keys, so that
// only the content is wrong.
func rewriteProtected(rewrite func(pt []byte) []byte) func(h *Handshake, rec []byte) []byte {
	return func(h *Handshake, rec []byte) []byte {
		if h.readCipher == nil || rec[0] == byte(record.ChangeCipherSpec) {
			return rec
		}
		newCipher := func() *record.Cipher {
			c, err := h.newCipher(h.clientHandshake, h.clientKey, h.clientIV, h.readCipher.Seq())
			if err != nil {
				panic(err)
			}
			return c
		}
		typRec, vers, body, _, err := record.Parse(rec, record.MaxCiphertextTLS12)
		if err != nil {
			return rec
		}
		inner, pt, err := newCipher().Open(typRec, vers, slices.Clone(body))
		if err != nil || inner != record.Handshake {
			return rec
		}
		out, err := newCipher().Seal(nil, inner, rewrite(pt), 0)
		if err != nil {
			panic(err)
		}
		return out
	}
}

// tamperProtected changes the first handshake message of type typ in a
// protected record.
func tamperProtected(typ uint8, mutate func(body []byte)) func(h *Handshake, rec []byte) []byte {
	return rewriteProtected(func(pt []byte) []byte {
		for off := 0; off+4 <= len(pt); {
			n := int(pt[off+1])<<16 | int(pt[off+2])<<8 | int(pt[off+3])
			if pt[off] == typ {
				mutate(pt[off+4 : off+4+n])
				break
			}
			off += 4 + n
		}
		return pt
	})
}

// tamperPlain rewrites the first handshake message of type typ in a
// plaintext record.
func tamperPlain(typ uint8, mutate func(body []byte)) func(h *Handshake, rec []byte) []byte {
	return func(h *Handshake, rec []byte) []byte {
		if rec[0] != byte(record.Handshake) || h.readCipher != nil {
			return rec
		}
		rec = slices.Clone(rec)
		pt := rec[record.HeaderLen:]
		for off := 0; off+4 <= len(pt); {
			n := int(pt[off+1])<<16 | int(pt[off+2])<<8 | int(pt[off+3])
			if pt[off] == typ {
				mutate(pt[off+4 : off+4+n])
				break
			}
			off += 4 + n
		}
		return rec
	}
}

func flipLast(body []byte) { body[len(body)-1] ^= 0x80 }

// shortenRSAPremaster drops the last byte of the RSA-encrypted premaster in
// a plaintext record holding only the ClientKeyExchange, keeping every
// length field consistent.
func shortenRSAPremaster(h *Handshake, rec []byte) []byte {
	pt := rec[record.HeaderLen:]
	if rec[0] != byte(record.Handshake) || h.readCipher != nil || len(pt) < 6 || pt[0] != typeClientKeyExchange {
		return rec
	}
	ct := pt[6 : 4+(int(pt[1])<<16|int(pt[2])<<8|int(pt[3]))]
	ct = ct[:len(ct)-1]
	body := append([]byte{byte(len(ct) >> 8), byte(len(ct))}, ct...)
	msg := append([]byte{typeClientKeyExchange, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return record.Append(nil, record.Handshake, tls.VersionTLS12, msg)
}

func TestTamperedClientMessages(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(versionName(vers)+"/Finished", func(t *testing.T) {
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			res := runInterop(t, interopCase{server: serverConfig(p.p256), client: cl, mode: splitRecords,
				tamper: tamperProtected(typeFinished, flipLast)})
			expectFailure(t, res, alertDecryptError)
		})
		t.Run(versionName(vers)+"/CertificateVerify", func(t *testing.T) {
			cfg := serverConfig(p.p256)
			cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			cl.Certificates = []tls.Certificate{p.clientCerts["p256"]}
			tamper := tamperProtected(typeCertificateVerify, flipLast)
			if vers == tls.VersionTLS12 {
				tamper = tamperPlain(typeCertificateVerify, flipLast)
			}
			res := runInterop(t, interopCase{server: cfg, client: cl, mode: splitRecords, tamper: tamper})
			expectFailure(t, res, alertDecryptError)
		})
	}
	// A wrong premaster (here: a corrupted RSA ciphertext) goes unnoticed
	// until the client's Finished record, which fails to authenticate under
	// the keys derived from it: the same bad_record_mac as for any wrong key.
	t.Run("RSA premaster", func(t *testing.T) {
		cl := clientConfig(p, "rsa.example.com")
		cl.MaxVersion = tls.VersionTLS12
		cl.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
		res := runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, mode: splitRecords,
			tamper: tamperPlain(typeClientKeyExchange, flipLast)})
		expectFailure(t, res, alertBadRecordMAC)
	})
	// A ciphertext shorter than the modulus cannot decrypt (RFC 8017,
	// Section 7.2.2, step 1), and like any that fails gets no alert of its
	// own: the handshake goes on with a random premaster (RFC 5246, Section
	// 7.4.7.1), and the client's Finished does not authenticate.
	t.Run("RSA premaster of the wrong length", func(t *testing.T) {
		cl := clientConfig(p, "rsa.example.com")
		cl.MaxVersion = tls.VersionTLS12
		cl.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
		res := runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, mode: splitRecords,
			tamper: shortenRSAPremaster})
		expectFailure(t, res, alertBadRecordMAC)
	})
	// Nothing may follow the client's Finished in its record: the keys
	// change there (RFC 8446, Section 5.1).
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(versionName(vers)+"/data after Finished", func(t *testing.T) {
			cl := clientConfig(p, "p256.example.com")
			cl.MaxVersion = vers
			keyUpdate := []byte{typeKeyUpdate, 0, 0, 1, 0}
			res := runInterop(t, interopCase{server: serverConfig(p.p256), client: cl, mode: splitRecords,
				tamper: rewriteProtected(func(pt []byte) []byte {
					if pt[0] == typeFinished {
						return append(pt, keyUpdate...)
					}
					return pt
				})})
			expectFailure(t, res, alertUnexpectedMessage)
		})
	}
	t.Run("record MAC", func(t *testing.T) {
		tamper := func(h *Handshake, rec []byte) []byte {
			if h.readCipher != nil && rec[0] == byte(record.ApplicationData) {
				rec = slices.Clone(rec)
				rec[len(rec)-1] ^= 1
			}
			return rec
		}
		res := runInterop(t, interopCase{server: serverConfig(p.p256), client: clientConfig(p, "p256.example.com"),
			mode: splitRecords, tamper: tamper})
		expectFailure(t, res, alertBadRecordMAC)
		// The alert is protected under the server's application traffic
		// keys, and the client reads it.
		assert.Equal(t, byte(record.ApplicationData), res.relay.last.Alert[0], "alert record protected")
		assert.ErrorContains(t, res.clientErr, "remote error: tls: bad record MAC")
	})
}

// stepAll feeds records to a fresh handshake, one Step each, and returns the
// last result.
func stepAll(t *testing.T, cfg *Config, inputs ...[]byte) (StepResult, *Handshake) {
	t.Helper()
	h, err := NewHandshake(cfg)
	require.NoError(t, err)
	var res StepResult
	for _, in := range inputs {
		res = h.Step(context.Background(), getPKI(t).keys, in)
		if res.State != NeedInput {
			break
		}
	}
	return res, h
}

func expectAlert(t *testing.T, res StepResult, want Alert) {
	t.Helper()
	require.Equal(t, Failed, res.State, res.Reason)
	require.Equal(t, want, res.AlertDescription, res.Reason)
	require.NotEmpty(t, res.Alert)
	if res.Alert[0] == byte(record.ApplicationData) {
		return // protected under the keys the client reads with
	}
	require.Len(t, res.Alert, 7, "alert record %x", res.Alert)
	assert.Equal(t, byte(record.Alert), res.Alert[0])
	assert.Equal(t, []byte{alertLevelFatal, byte(want)}, res.Alert[5:])
}

func TestMalformedInput(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	real13 := captureClientHello(t, clientConfig(p, "p256.example.com"))
	tls12cfg := clientConfig(p, "p256.example.com")
	tls12cfg.MaxVersion = tls.VersionTLS12
	real12 := captureClientHello(t, tls12cfg)
	hello := func(rec []byte, f func(m *clientHelloMsg)) []byte {
		m := parseHello(t, rec)
		m.extensions = slices.Clone(m.extensions)
		f(m)
		return helloRecord(m)
	}
	tls10Hello := hello(real12, func(m *clientHelloMsg) {
		m.vers = tls.VersionTLS10
		m.extensions = slices.DeleteFunc(m.extensions, func(e uint16) bool { return e == extensionSupportedVersions })
	})
	// A handshake message in a record, with a header claiming n bytes.
	message := func(typ uint8, claimed int, body []byte) []byte {
		msg := append([]byte{typ, byte(claimed >> 16), byte(claimed >> 8), byte(claimed)}, body...)
		return record.Append(nil, record.Handshake, tls.VersionTLS12, msg)
	}
	tests := []struct {
		name   string
		inputs [][]byte
		want   Alert
	}{
		{"garbage", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")}, alertUnexpectedMessage},
		{"bad record version", [][]byte{{22, 0x7f, 0x01, 0, 4, 1, 0, 0, 0}}, alertDecodeError},
		{"oversized record", [][]byte{{22, 3, 1, 0x40, 0x01}}, alertRecordOverflow},
		// Longer than any ClientHello's fields can make it: a wrong length.
		{"oversized ClientHello", [][]byte{message(typeClientHello, 1<<20, nil)}, alertDecodeError},
		{"truncated ClientHello", [][]byte{message(typeClientHello, 40, bytes.Repeat([]byte{3}, 40))}, alertDecodeError},
		{"trailing data", [][]byte{hello(real13, func(m *clientHelloMsg) {})[:0], func() []byte {
			m := parseHello(t, real13).marshal()
			m = append(m, 0)
			m[3]++
			return record.Append(nil, record.Handshake, tls.VersionTLS12, m)
		}()}, alertDecodeError},
		{"duplicate extension", [][]byte{hello(real13, func(m *clientHelloMsg) { m.extensions = append(m.extensions, extensionSupportedGroups) })}, alertDecodeError},
		{"TLS 1.0 only", [][]byte{tls10Hello}, alertProtocolVersion},
		{"TLS 1.1 only", [][]byte{hello(real13, func(m *clientHelloMsg) { m.supportedVersions = []uint16{tls.VersionTLS11, tls.VersionTLS10} })}, alertProtocolVersion},
		{"not a ClientHello", [][]byte{message(typeFinished, 12, make([]byte, 12))}, alertUnexpectedMessage},
		{"alert before hello", [][]byte{{21, 3, 3, 0, 3, 2, 40, 0}}, alertDecodeError},
		{"early change_cipher_spec", [][]byte{{20, 3, 3, 0, 1, 1}}, alertUnexpectedMessage},
		{"application data", [][]byte{{23, 3, 3, 0, 1, 1}}, alertUnexpectedMessage},
		{"no null compression", [][]byte{hello(real12, func(m *clientHelloMsg) { m.compressionMethods = []byte{1} })}, alertHandshakeFailure},
		{"TLS 1.3 compression", [][]byte{hello(real13, func(m *clientHelloMsg) { m.compressionMethods = []byte{1, 0} })}, alertIllegalParameter},
		{"no key_share", [][]byte{hello(real13, func(m *clientHelloMsg) {
			m.extensions = slices.DeleteFunc(m.extensions, func(e uint16) bool { return e == extensionKeyShare })
		})}, alertMissingExtension},
		{"share for unoffered group", [][]byte{hello(real13, func(m *clientHelloMsg) {
			m.supportedGroups = []tls.CurveID{tls.CurveP256}
		})}, alertIllegalParameter},
		{"duplicate key share", [][]byte{hello(real13, func(m *clientHelloMsg) { m.keyShares = append(m.keyShares, m.keyShares[len(m.keyShares)-1]) })}, alertIllegalParameter},
		{"bad key share", [][]byte{hello(real13, func(m *clientHelloMsg) {
			m.supportedGroups = []tls.CurveID{tls.X25519}
			m.keyShares = []keyShare{{tls.X25519, make([]byte, 31)}}
		})}, alertIllegalParameter},
		{"low-order X25519 share", [][]byte{hello(real13, func(m *clientHelloMsg) {
			m.supportedGroups = []tls.CurveID{tls.X25519}
			m.keyShares = []keyShare{{tls.X25519, make([]byte, 32)}}
		})}, alertIllegalParameter},
		{"no common suite", [][]byte{hello(real13, func(m *clientHelloMsg) { m.cipherSuites = []uint16{0x0a0a} })}, alertHandshakeFailure},
		{"no common group", [][]byte{hello(real13, func(m *clientHelloMsg) {
			m.supportedGroups = []tls.CurveID{0x0100} // ffdhe2048 (RFC 7919), not supported
			m.keyShares = nil
		})}, alertHandshakeFailure},
		{"no signature scheme", [][]byte{hello(real13, func(m *clientHelloMsg) { m.signatureAlgorithms = []tls.SignatureScheme{tls.Ed25519} })}, alertHandshakeFailure},
		{"invalid server_name", [][]byte{hello(real13, func(m *clientHelloMsg) { m.serverName = "a..example" })}, alertIllegalParameter},
		{"renegotiation_info", [][]byte{hello(real12, func(m *clientHelloMsg) { m.secureRenegotiation = []byte{1} })}, alertHandshakeFailure},
		{"fallback SCSV", [][]byte{hello(real12, func(m *clientHelloMsg) { m.cipherSuites = append(m.cipherSuites, scsvFallback) })}, alertInappropriateFallback},
		{"data after ClientHello", [][]byte{func() []byte {
			msg := parseHello(t, real13).marshal()
			return record.Append(nil, record.Handshake, tls.VersionTLS12, append(msg, typeFinished, 0, 0, 0))
		}()}, alertUnexpectedMessage},
		{"renegotiation TLS 1.2", [][]byte{real12, real12}, alertUnexpectedMessage},
		{"ClientHello after TLS 1.3 keys", [][]byte{real13, real13}, alertUnexpectedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := stepAll(t, &cfg, tc.inputs...)
			expectAlert(t, res, tc.want)
		})
	}

	// The alert to a TLS 1.0 client is in a record it can read.
	res, _ := stepAll(t, &cfg, tls10Hello)
	assert.Equal(t, []byte{3, 1}, res.Alert[1:3], "protocol_version alert in a TLS 1.0 record")
}

func TestPeerAlert(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	real12 := captureClientHello(t, &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true})
	res, _ := stepAll(t, &cfg, real12, []byte{21, 3, 3, 0, 2, 2, byte(alertBadCertificate)})
	require.Equal(t, Failed, res.State, res.Reason)
	assert.Nil(t, res.Alert, "no alert answers the client's")
	assert.Equal(t, alertBadCertificate, res.AlertDescription)
	// After Failed, Step does nothing.
	h, _ := NewHandshake(&cfg)
	h.Step(context.Background(), p.keys, []byte("garbage!"))
	again := h.Step(context.Background(), p.keys, real12)
	assert.Equal(t, Failed, again.State)
	assert.Nil(t, again.Output)
}

// TestKeyOpsFailure: a failed key operation ends the handshake with
// internal_error, and the KeyOps error's text, here carrying the private key
// as a careless key backend might, reaches neither the reason, nor the
// alert, nor the trace.
func TestKeyOpsFailure(t *testing.T) {
	p := getPKI(t)
	der, err := x509.MarshalPKCS8PrivateKey(p.rsa.signer)
	require.NoError(t, err)
	marker := hex.EncodeToString(der)
	leakyErr := fmt.Errorf("backend: key %s unusable", marker)
	leaky := &testKeyOps{signers: p.keys.signers, failWith: leakyErr}
	leakySchemes := &testKeyOps{signers: p.keys.signers, schemesErr: leakyErr}
	for _, tc := range []struct {
		name   string
		vers   uint16
		suites []uint16
		keys   *testKeyOps
	}{
		{"TLS 1.3 Sign", tls.VersionTLS13, nil, leaky},
		{"TLS 1.2 Sign", tls.VersionTLS12, nil, leaky},
		{"TLS 1.2 DecryptPremaster", tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}, leaky},
		{"TLS 1.3 SignatureSchemes", tls.VersionTLS13, nil, leakySchemes},
		{"TLS 1.2 SignatureSchemes", tls.VersionTLS12, nil, leakySchemes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := clientConfig(p, "rsa.example.com")
			cl.MaxVersion, cl.CipherSuites = tc.vers, tc.suites
			res := runInterop(t, interopCase{server: serverConfig(p.rsa), client: cl, keys: tc.keys})
			expectFailure(t, res, alertInternalError)
			last := res.relay.last
			assert.Contains(t, last.Reason, "key operation failed")
			for _, where := range []string{last.Reason, string(last.Alert), traceText(res.relay.trace)} {
				assert.NotContains(t, where, marker[:64], "KeyOps error text reached the engine's output")
				assert.NotContains(t, where, string(der[:64]))
			}
		})
	}
	// A cancelled context is the caller's own doing and is named.
	cancelled := &testKeyOps{signers: p.keys.signers, failWith: fmt.Errorf("vault: %w", context.Canceled)}
	res := runInterop(t, interopCase{server: serverConfig(p.rsa), client: clientConfig(p, "rsa.example.com"), keys: cancelled})
	expectFailure(t, res, alertInternalError)
	assert.Contains(t, res.relay.last.Reason, "key operation failed: context canceled")
}

func TestEarlyDataRefused(t *testing.T) {
	// A ClientHello offering a PSK and 0-RTT, followed by early data records
	// the server cannot read: the server ignores the PSK, does a full
	// handshake and skips the early data until the client's handshake
	// records arrive.
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	real13 := captureClientHello(t, clientConfig(p, "p256.example.com"))
	m := parseHello(t, real13)
	m.extensions = append(slices.Clone(m.extensions), extensionEarlyData, extensionPSKModes, extensionPreSharedKey)
	m.pskModes = []uint8{1}
	h, err := NewHandshake(&cfg)
	require.NoError(t, err)
	in := helloRecord(m)
	in = append(in, 20, 3, 3, 0, 1, 1) // compatibility change_cipher_spec
	for range 3 {
		in = append(in, record.Append(nil, record.ApplicationData, tls.VersionTLS12, bytes.Repeat([]byte{0xee}, 100))...)
	}
	res := h.Step(context.Background(), p.keys, in)
	require.Equal(t, NeedInput, res.State, res.Reason)
	require.NotEmpty(t, res.Output)
	require.True(t, h.skipEarlyData)
	require.Equal(t, 3*100, h.skippedEarlyData)
	// Past the limit, the server gives up.
	big := record.Append(nil, record.ApplicationData, tls.VersionTLS12, make([]byte, record.MaxCiphertextTLS13))
	for range maxSkippedEarlyData / len(big) {
		res = h.Step(context.Background(), p.keys, big)
		require.Equal(t, NeedInput, res.State, res.Reason)
	}
	res = h.Step(context.Background(), p.keys, big)
	assert.Equal(t, Failed, res.State, "after too much early data")
}

// TestClientRejectsServer: a client that does not trust the server's
// certificate sends an alert, which ends the handshake with nothing to send
// back.
func TestClientRejectsServer(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cl := clientConfig(p, "p256.example.com")
		cl.RootCAs = p.clientCA
		cl.MaxVersion = vers
		res := runInterop(t, interopCase{server: serverConfig(p.p256), client: cl})
		last := res.relay.last
		assert.Equal(t, Failed, last.State, versionName(vers))
		assert.Nil(t, last.Alert, versionName(vers))
		assert.Contains(t, last.Reason, "client sent alert", versionName(vers))
	}
}

func TestNoKeyOps(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	h, _ := NewHandshake(&cfg)
	res := h.Step(context.Background(), nil, captureClientHello(t, clientConfig(p, "p256.example.com")))
	expectAlert(t, res, alertInternalError)
}
