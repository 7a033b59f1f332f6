package keyless_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// handshakeOnce serves one TLS connection with cfg and reports the
// handshake's error.
func handshakeOnce(t *testing.T, cfg *tls.Config) (string, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		tc := tls.Server(c, cfg)
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte("keyless ok\n"))
			tc.Close()
		}
		done <- err
	}()
	return l.Addr().String(), done
}

// TestKeylessSignatureSchemes is issue 8 item 4 for the keyless Signer: a
// crypto/tls server whose ECDSA keys live in the vault answers an OpenSSL
// client that offers one ECDSA scheme alone. In TLS 1.2 the scheme names
// only the hash, so every ECDSA key serves every ECDSA scheme (crypto/tls
// asks a P-384 key for SHA-256); in TLS 1.3 only the scheme of the key's
// curve (RFC 8446 §4.2.3), and the others end in handshake_failure.
func TestKeylessSignatureSchemes(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	srv := servicetest.Start(t, service.Options{})
	c := handshaked.New(srv.Conn)
	own := map[string]string{"p256": "ecdsa_secp256r1_sha256", "p384": "ecdsa_secp384r1_sha384", "p521": "ecdsa_secp521r1_sha512"}
	fixtures := map[string]string{"p256": "p256-pkcs8.pem", "p384": "p384-sec1.pem", "p521": "p521-pkcs8.pem"}
	for key, fixture := range fixtures {
		sk := srv.ServerKey(t, "keyless-"+key, fixture, key+".test")
		cert, err := keyless.Certificate(context.Background(), c, sk.ID)
		require.NoError(t, err)
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		require.NoError(t, os.WriteFile(caFile, []byte(sk.CertPEM), 0o600))
		for _, vers := range []string{"-tls1_2", "-tls1_3"} {
			for _, scheme := range []string{"ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384", "ecdsa_secp521r1_sha512"} {
				t.Run(key+vers+"/"+scheme, func(t *testing.T) {
					addr, done := handshakeOnce(t, &tls.Config{Certificates: []tls.Certificate{cert}})
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					out, _ := exec.CommandContext(ctx, openssl, "s_client", "-connect", addr, "-servername", sk.Name,
						"-CAfile", caFile, "-verify_return_error", "-ign_eof", vers, "-sigalgs", scheme).CombinedOutput()
					err := <-done
					if vers == "-tls1_3" && scheme != own[key] {
						assert.Error(t, err, "TLS 1.3 with another curve's scheme must fail\n%s", out)
						assert.Contains(t, string(out), "handshake failure")
						return
					}
					require.NoError(t, err, "server handshake\n%s", out)
					assert.Contains(t, string(out), "keyless ok")
					hash := strings.ToUpper(scheme[strings.LastIndex(scheme, "_")+1:])
					assert.Contains(t, string(out), "Peer signing digest: "+hash)
				})
			}
		}
	}
}

// TestKeylessGoClientP384 is the case Go's own client hits: in TLS 1.2 it
// prefers ecdsa_secp256r1_sha256 over ecdsa_secp384r1_sha384, so crypto/tls
// asks a P-384 keyless key for an ECDSA signature over SHA-256.
func TestKeylessGoClientP384(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	c := handshaked.New(srv.Conn)
	sk := srv.ServerKey(t, "keyless-p384", "p384-sec1.pem", "p384.test")
	cert, err := keyless.Certificate(context.Background(), c, sk.ID)
	require.NoError(t, err)
	addr, done := handshakeOnce(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: sk.Name, RootCAs: sk.Pool, MaxVersion: tls.VersionTLS12})
	require.NoError(t, err)
	defer conn.Close()
	assert.NoError(t, <-done)
}
