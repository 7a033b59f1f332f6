package engine

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// goAlertText is what crypto/tls's client reports for an alert it received
// ("remote error: tls: " and this), written out rather than taken from the
// engine's alert table.
var goAlertText = map[Alert]string{
	alertUnexpectedMessage:   "unexpected message",
	alertRecordOverflow:      "record overflow",
	alertBadCertificate:      "bad certificate",
	alertCertificateExpired:  "expired certificate",
	alertIllegalParameter:    "illegal parameter",
	alertUnknownCA:           "unknown certificate authority",
	alertDecryptError:        "error decrypting message",
	alertCertificateRequired: "certificate required",
	alertHandshakeFailure:    "handshake failure",
	alertInternalError:       "internal error",
}

// transcriptThrough returns the transcript hash of the handshake so far
// followed by the messages in pt before the first one of type typ: the
// hash a client signs when its CertificateVerify follows them.
func transcriptThrough(t *testing.T, h *Handshake, pt []byte, typ uint8) []byte {
	t.Helper()
	state, err := h.transcript.state.(encoding.BinaryMarshaler).MarshalBinary()
	require.NoError(t, err)
	th := h.transcript.hash.New()
	require.NoError(t, th.(encoding.BinaryUnmarshaler).UnmarshalBinary(state))
	for off := 0; off+4 <= len(pt); {
		n := int(pt[off+1])<<16 | int(pt[off+2])<<8 | int(pt[off+3])
		if pt[off] == typ {
			break
		}
		th.Write(pt[off : off+4+n])
		off += 4 + n
	}
	return th.Sum(nil)
}

// resignCertificateVerify replaces the client's TLS 1.3 CertificateVerify
// by a valid signature of the right transcript under scheme, made with
// key: only the scheme is wrong, so only the scheme check can refuse it.
func resignCertificateVerify(t *testing.T, scheme tls.SignatureScheme, key crypto.Signer) func(h *Handshake, rec []byte) []byte {
	return func(h *Handshake, rec []byte) []byte {
		return rewriteProtected(func(pt []byte) []byte {
			out := make([]byte, 0, len(pt))
			for off := 0; off+4 <= len(pt); {
				n := int(pt[off+1])<<16 | int(pt[off+2])<<8 | int(pt[off+3])
				msg := pt[off : off+4+n]
				off += 4 + n
				if msg[0] != typeCertificateVerify {
					out = append(out, msg...)
					continue
				}
				signed := signedMessage13(clientSignatureContext, transcriptThrough(t, h, pt, typeCertificateVerify))
				var sig []byte
				var err error
				switch scheme {
				case tls.PKCS1WithSHA256:
					d := sha256.Sum256(signed)
					sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, d[:])
				case tls.ECDSAWithP384AndSHA384:
					d := sha512.Sum384(signed)
					sig, err = ecdsa.SignASN1(rand.Reader, key.(*ecdsa.PrivateKey), d[:])
				default:
					t.Fatalf("no signer for %v", scheme)
				}
				require.NoError(t, err)
				var b cryptobyte.Builder
				b.AddUint8(typeCertificateVerify)
				b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16(uint16(scheme))
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sig) })
				})
				out = append(out, b.BytesOrPanic()...)
			}
			return out
		})(h, rec)
	}
}

// replaceFinished replaces the client's Finished message.
func replaceFinished(f func(body []byte) []byte) func(h *Handshake, rec []byte) []byte {
	return rewriteProtected(func(pt []byte) []byte {
		if pt[0] != typeFinished {
			return pt
		}
		body := f(pt[4:])
		return append([]byte{typeFinished, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	})
}

// keyUpdateForFinished sends a KeyUpdate where the client's Finished was.
var keyUpdateForFinished = rewriteProtected(func(pt []byte) []byte {
	if pt[0] == typeFinished {
		return []byte{typeKeyUpdate, 0, 0, 1, 0}
	}
	return pt
})

// oversizeProtected replaces the client's first protected record by one a
// byte longer than RFC 8446, Section 5.2 allows.
func oversizeProtected(h *Handshake, rec []byte) []byte {
	if h.readCipher == nil || rec[0] != byte(record.ApplicationData) {
		return rec
	}
	n := record.MaxCiphertextTLS13 + 1
	return append([]byte{byte(record.ApplicationData), 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
}

// TestAlertsAfterServerFinished: every alert the server sends about the
// client's second flight reaches a real client readable, under the keys the
// client reads with at that point: in TLS 1.3 the server application
// traffic keys, which the server writes with from its Finished on (RFC
// 8446, Section 7.1 and Appendix A.2); in TLS 1.2 plaintext, before the
// server's ChangeCipherSpec. crypto/tls's client names the alert it read;
// one it cannot decrypt shows as a local bad_record_mac instead.
func TestAlertsAfterServerFinished(t *testing.T) {
	p := getPKI(t)
	rsaClient := p.clientCerts["rsa"]
	tests := []struct {
		name    string
		vers    []uint16
		auth    ClientAuthMode
		cert    *tls.Certificate
		now     time.Time
		tamper  func(h *Handshake, rec []byte) []byte
		want    Alert
		wantRsn string
	}{
		{name: "client certificate from an unknown CA", auth: ClientAuthRequired, cert: &p.rogueClientCert, want: alertUnknownCA},
		{name: "no client certificate", vers: []uint16{tls.VersionTLS13}, auth: ClientAuthRequired, want: alertCertificateRequired},
		{name: "no client certificate", vers: []uint16{tls.VersionTLS12}, auth: ClientAuthRequired, want: alertHandshakeFailure},
		{name: "client certificate expired", auth: ClientAuthRequired, cert: &rsaClient, now: time.Now().Add(72 * time.Hour), want: alertCertificateExpired},
		// RFC 5280, Section 4.2.1.12: a certificate whose extended key usage
		// leaves out clientAuth is not for client authentication.
		{name: "client certificate for serverAuth only", auth: ClientAuthRequired, cert: &p.serverAuthClientCert, want: alertBadCertificate},
		// The certificate is valid but the client signs with another key:
		// the transcript stays consistent, only the signature is wrong.
		{name: "CertificateVerify by another key", auth: ClientAuthRequired, cert: &p.wrongKeyClientCert, want: alertDecryptError,
			wantRsn: "invalid client CertificateVerify signature"},
		// RFC 8446, Section 4.4.3: the scheme must be one the server offered
		// (rsa_pkcs1_* are not, in TLS 1.3) and fit the key; the signature
		// itself is valid under the scheme named.
		{name: "CertificateVerify with rsa_pkcs1_sha256", vers: []uint16{tls.VersionTLS13}, auth: ClientAuthRequired, cert: &rsaClient,
			tamper: resignCertificateVerify(t, tls.PKCS1WithSHA256, rsaClient.PrivateKey.(crypto.Signer)), want: alertIllegalParameter,
			wantRsn: "not offered or not fitting its key"},
		{name: "CertificateVerify with a P-384 scheme for a P-256 key", vers: []uint16{tls.VersionTLS13}, auth: ClientAuthRequired,
			cert: ptr(p.clientCerts["p256"]), tamper: resignCertificateVerify(t, tls.ECDSAWithP384AndSHA384, p.p256.signer),
			want: alertIllegalParameter, wantRsn: "not offered or not fitting its key"},
		{name: "Finished wrong", tamper: tamperProtected(typeFinished, flipLast), want: alertDecryptError},
		// A Finished compared as a prefix of the expected one would pass
		// these.
		{name: "Finished empty", tamper: replaceFinished(func([]byte) []byte { return nil }), want: alertDecryptError},
		{name: "Finished truncated", tamper: replaceFinished(func(b []byte) []byte { return b[:len(b)-1] }), want: alertDecryptError},
		{name: "Finished with client certificate, empty", auth: ClientAuthRequired, cert: ptr(p.clientCerts["ed25519"]),
			tamper: replaceFinished(func([]byte) []byte { return nil }), want: alertDecryptError},
		{name: "record overflow", vers: []uint16{tls.VersionTLS13}, tamper: oversizeProtected, want: alertRecordOverflow},
		{name: "KeyUpdate instead of Finished", tamper: keyUpdateForFinished, want: alertUnexpectedMessage},
	}
	for _, tc := range tests {
		versions := tc.vers
		if versions == nil {
			versions = []uint16{tls.VersionTLS13, tls.VersionTLS12}
		}
		for _, vers := range versions {
			t.Run(versionName(vers)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				cfg := serverConfig(p.p256)
				cfg.ClientAuth = tc.auth
				if tc.auth != ClientAuthOff {
					cfg.ClientCAs = p.clientCA
				}
				if !tc.now.IsZero() {
					cfg.Time = func() time.Time { return tc.now }
				}
				cl := clientConfig(p, "p256.example.com")
				cl.MinVersion, cl.MaxVersion = vers, vers
				if tc.cert != nil {
					// crypto/tls sends only a certificate from a CA the
					// server names; these are sent regardless.
					cl.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.cert, nil }
				}
				res := runInterop(t, interopCase{server: cfg, client: cl, mode: splitRecords, tamper: tc.tamper})
				expectFailure(t, res, tc.want)
				if tc.wantRsn != "" {
					assert.Contains(t, res.relay.last.Reason, tc.wantRsn)
				}
				alertRec := res.relay.last.Alert
				require.NotEmpty(t, alertRec)
				if vers == tls.VersionTLS13 {
					assert.Equal(t, byte(record.ApplicationData), alertRec[0], "TLS 1.3 alert record protected")
				} else {
					assert.Equal(t, []byte{byte(record.Alert), 3, 3, 0, 2, alertLevelFatal, byte(tc.want)}, alertRec, "TLS 1.2 plaintext alert")
				}
				require.Error(t, res.clientErr)
				assert.Contains(t, res.clientErr.Error(), "remote error: tls: "+goAlertText[tc.want], "the client read the alert")
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestClientCertificateExtKeyUsage: the client certificate must allow
// clientAuth, as x509 verification with ExtKeyUsageClientAuth requires; a
// certificate without the extension allows any use (RFC 5280, Section
// 4.2.1.12).
func TestClientCertificateExtKeyUsage(t *testing.T) {
	p := getPKI(t)
	for _, vers := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, tc := range []struct {
			name string
			cert tls.Certificate
			ok   bool
		}{
			{"clientAuth", p.clientCerts["p256"], true},
			{"no extended key usage", p.noEKUClientCert, true},
			{"serverAuth only", p.serverAuthClientCert, false},
		} {
			t.Run(versionName(vers)+"/"+tc.name, func(t *testing.T) {
				cfg := serverConfig(p.p256)
				cfg.ClientAuth, cfg.ClientCAs = ClientAuthRequired, p.clientCA
				cl := clientConfig(p, "p256.example.com")
				cl.MaxVersion = vers
				cl.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tc.cert, nil }
				res := runInterop(t, interopCase{server: cfg, client: cl})
				if !tc.ok {
					expectFailure(t, res, alertBadCertificate)
					return
				}
				s := expectSuccess(t, res)
				assert.Equal(t, tc.cert.Certificate, s.PeerCertificates)
			})
		}
	}
}
