package main

import (
	"context"
	"crypto/tls"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// Issue 8 items 4 and 5 through handshake-edge, the service and the vault:
// each signature scheme offered alone by OpenSSL against every key type in
// both versions, and P-521 as the only group.

// sigalgKey is a vault key served alone by its own handshake-edge, so that a
// handshake cannot fall back to another certificate.
type sigalgKey struct {
	key  servicetest.ServerKey
	ca   string // PEM file that trusts the key's certificate
	addr string // the edge's
}

func sigalgFixture(t *testing.T) map[string]sigalgKey {
	t.Helper()
	f := newFixture(t)
	keys := map[string]sigalgKey{}
	for name, k := range map[string]servicetest.ServerKey{
		"rsa":     f.rsa,
		"p256":    f.ecdsa,
		"p384":    f.srv.ServerKey(t, "edge-p384", "p384-sec1.pem", "p384.test"),
		"p521":    f.srv.ServerKey(t, "edge-p521", "p521-pkcs8.pem", "p521.test"),
		"ed25519": f.srv.ServerKey(t, "edge-ed25519", "ed25519-pkcs8.pem", "ed25519.test"),
	} {
		ca := filepath.Join(t.TempDir(), name+".pem")
		require.NoError(t, os.WriteFile(ca, []byte(k.CertPEM), 0o600))
		// start serves the fixture's two keys; here both are k.
		addr, _ := (&fixture{srv: f.srv, rsa: k, ecdsa: k}).start(t)
		keys[name] = sigalgKey{k, ca, addr}
	}
	return keys
}

// sClient runs openssl s_client against the edge for key with args, sends
// one HTTP/1.0 request and returns what it printed.
func sClient(t *testing.T, openssl string, k sigalgKey, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, append([]string{"s_client", "-connect", k.addr, "-servername", k.key.Name,
		"-CAfile", k.ca, "-verify_return_error", "-ign_eof"}, args...)...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// TestSignatureSchemeOfferedAlone: RFC 8446 §4.2.3. In TLS 1.3 an ECDSA
// scheme names the curve and rsa_pkcs1 signs no handshake message; in TLS
// 1.2 an ECDSA scheme names only the hash ("the old semantics did not
// constrain the signing curve"), so every ECDSA key serves every ECDSA
// scheme. A scheme the key cannot produce ends in handshake_failure. The
// TLS 1.2 cases offer only ECDHE suites, so RSA key exchange, which signs
// nothing, cannot stand in.
func TestSignatureSchemeOfferedAlone(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	keys := sigalgFixture(t)
	pss := []string{"rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"}
	pkcs1 := []string{"rsa_pkcs1_sha256", "rsa_pkcs1_sha384", "rsa_pkcs1_sha512"}
	ecdsa := []string{"ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384", "ecdsa_secp521r1_sha512"}
	all := append(append(append(append([]string{}, pss...), pkcs1...), ecdsa...), "ed25519")
	// The schemes each key must complete with; every other one must fail.
	want := map[string]map[string][]string{
		"-tls1_3": {"rsa": pss, "p256": {"ecdsa_secp256r1_sha256"}, "p384": {"ecdsa_secp384r1_sha384"},
			"p521": {"ecdsa_secp521r1_sha512"}, "ed25519": {"ed25519"}},
		"-tls1_2": {"rsa": append(append([]string{}, pss...), pkcs1...), "p256": ecdsa, "p384": ecdsa, "p521": ecdsa, "ed25519": {"ed25519"}},
	}
	for vers, byKey := range want {
		for name, ok := range byKey {
			k := keys[name]
			for _, scheme := range all {
				t.Run(vers+"/"+name+"/"+scheme, func(t *testing.T) {
					args := []string{vers, "-sigalgs", scheme}
					if vers == "-tls1_2" {
						args = append(args, "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
					}
					out := sClient(t, openssl, k, args...)
					if !slices.Contains(ok, scheme) {
						assert.Contains(t, out, "alert handshake failure", "%s must fail", scheme)
						assert.NotContains(t, out, "HTTP/1.0 200")
						return
					}
					assert.Contains(t, out, "HTTP/1.0 200", "%s must complete", scheme)
					hash := strings.ToUpper(scheme[strings.LastIndex(scheme, "_")+1:])
					if scheme != "ed25519" {
						assert.Contains(t, out, "Peer signing digest: "+hash)
					}
				})
			}
		}
	}
}

// TestP521Group: a client that offers only secp521r1 completes in TLS 1.2
// and TLS 1.3 (issue 8 item 5). In TLS 1.2 the group list also bounds the
// curve of an ECDSA certificate (RFC 8422, Section 5.1), so there the P-256
// key is left out; in TLS 1.3 it is not (RFC 8446, Section 4.2.7). With
// P-256 offered too, a TLS 1.2 client gets P-256: P-521 comes last in the
// server's preference.
func TestP521Group(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	keys := sigalgFixture(t)
	for vers, names := range map[string][]string{"-tls1_2": {"rsa", "p521"}, "-tls1_3": {"rsa", "p256", "p521"}} {
		for _, name := range names {
			k := keys[name]
			out := sClient(t, openssl, k, vers, "-groups", "P-521")
			assert.Contains(t, out, "HTTP/1.0 200", "%s %s", vers, name)
			assert.Contains(t, out, "Group: CurveP521\n", "%s %s", vers, name)
		}
	}
	k := keys["rsa"]
	out := sClient(t, openssl, k, "-tls1_2", "-groups", "P-521:P-256")
	assert.Contains(t, out, "Group: CurveP256\n", "P-521 must not come before P-256")
}

// TestGoClientP384TLS12: Go's client prefers ecdsa_secp256r1_sha256 in TLS
// 1.2, so before the fix a P-384 key failed with internal_error.
func TestGoClientP384TLS12(t *testing.T) {
	keys := sigalgFixture(t)
	k := keys["p384"]
	conn, err := tls.Dial("tcp", k.addr, &tls.Config{ServerName: k.key.Name, RootCAs: k.key.Pool, MaxVersion: tls.VersionTLS12})
	require.NoError(t, err)
	defer conn.Close()
	assert.Equal(t, uint16(tls.VersionTLS12), conn.ConnectionState().Version)
	_, err = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	require.NoError(t, err)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	page, _ := io.ReadAll(conn)
	assert.Contains(t, string(page), "HTTP/1.0 200")
	assert.Contains(t, string(page), "Signature scheme: ECDSAWithP256AndSHA256\n")
}
