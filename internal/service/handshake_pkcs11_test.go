//go:build pkcs11

package service_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// TestTokenKeysThroughEngine runs the handshake matrix of the external
// clients through the engine with server keys generated in a SoftHSM
// token: openssl and gnutls-cli over TLS 1.2 (RSA key exchange, ECDHE with
// RSA and ECDSA, mutual TLS) and TLS 1.3, curl over TLS 1.2 RSA key
// exchange and TLS 1.3, and Go's crypto/tls with RSA, P-256, P-384 and
// Ed25519 keys over both versions. RSA key exchange decrypts the premaster by raw RSA
// in the token and the vault's unpadding.
func TestTokenKeysThroughEngine(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	gnutls := testenv.LookPath(t, "gnutls-cli")
	curl := testenv.LookPath(t, "curl")
	// A token of this test's own: the package has no TestMain-wide one,
	// and SoftHSM reads SOFTHSM2_CONF when the module is initialised.
	b := softhsmtest.OpenNewToken(t)
	srv := servicetest.StartWithVault(t, service.Options{}, keyvault.WithBackend(b))
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}

	rsaKey := s.CreateServerKey(t, uniqueID("hsm-rsa"), pb.KeyBackend_KEY_BACKEND_PKCS11, pb.Algorithm_ALGORITHM_RSA_2048, "rsa.test")
	ecKey := s.CreateServerKey(t, uniqueID("hsm-ec"), pb.KeyBackend_KEY_BACKEND_PKCS11, pb.Algorithm_ALGORITHM_ECDSA_P256, "ec.test")
	for _, id := range []string{rsaKey.ID, ecKey.ID} {
		k, err := s.kv.GetKey(t.Context(), &pb.GetKeyRequest{Key: id})
		require.NoError(t, err)
		require.Equal(t, pb.KeyBackend_KEY_BACKEND_PKCS11, k.GetVersions()[0].GetBackend())
	}
	caFile := filepath.Join(t.TempDir(), "server-ca.pem")
	require.NoError(t, os.WriteFile(caFile, []byte(rsaKey.CertPEM+ecKey.CertPEM), 0o600))
	keys := []*pb.KeyRef{{Key: rsaKey.ID}, {Key: ecKey.ID}}
	pki := newClientPKI(t)

	t.Run("openssl", func(t *testing.T) { opensslMatrix(t, openssl, s, keys, caFile, pki) })

	// Go's crypto/tls, with Ed25519 and P-384 token keys as well.
	edKey := s.CreateServerKey(t, uniqueID("hsm-ed"), pb.KeyBackend_KEY_BACKEND_PKCS11, pb.Algorithm_ALGORITHM_ED25519, "ed.test")
	p384Key := s.CreateServerKey(t, uniqueID("hsm-p384"), pb.KeyBackend_KEY_BACKEND_PKCS11, pb.Algorithm_ALGORITHM_ECDSA_P384, "p384.test")
	hc := s.handshakeClient(t)
	for _, tc := range []struct {
		name    string
		key     servicetest.ServerKey
		version uint16
		suites  []uint16
	}{
		{"go/TLS12-RSA-kx", rsaKey, tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
		{"go/TLS12-ECDHE-RSA", rsaKey, tls.VersionTLS12, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}},
		{"go/TLS12-ECDHE-ECDSA", ecKey, tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}},
		{"go/TLS13-RSA-PSS", rsaKey, tls.VersionTLS13, nil},
		{"go/TLS13-P256", ecKey, tls.VersionTLS13, nil},
		{"go/TLS13-P384", p384Key, tls.VersionTLS13, nil},
		{"go/TLS13-Ed25519", edKey, tls.VersionTLS13, nil},
		{"go/TLS12-Ed25519", edKey, tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: tc.key.ID}}}}
			state, _ := runClient(t, &tls.Config{
				RootCAs: tc.key.Pool, ServerName: tc.key.Name, MinVersion: tc.version, MaxVersion: tc.version, CipherSuites: tc.suites,
			}, func() stepper {
				stream, err := hc.Stream(context.Background())
				require.NoError(t, err)
				return &streamStepper{stream: stream, start: start}
			})
			assert.Equal(t, tc.version, state.Version)
			if len(tc.suites) == 1 {
				assert.Equal(t, tc.suites[0], state.CipherSuite)
			}
		})
	}
	t.Run("gnutls", func(t *testing.T) { gnutlsMatrix(t, gnutls, s, keys, caFile, pki) })
	for _, tc := range []struct {
		name, sni string
		flags     []string
		version   uint32
		suite     uint32
	}{
		{"curl/TLS12-RSA-kx", "rsa.test", []string{"--tls-max", "1.2", "--ciphers", "AES128-GCM-SHA256"}, 0x0303, 0x009c},
		{"curl/TLS13", "ec.test", []string{"--tlsv1.3"}, 0x0304, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const body = "served with a key in the token"
			reply := func([]byte) []byte {
				return fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			}
			out, sess := runRelayed(t, s, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: keys}}, reply, "", curl, func(addr string) []string {
				_, port, _ := net.SplitHostPort(addr)
				return append([]string{"-sS", "--http1.1", "--cacert", caFile, "--resolve", tc.sni + ":" + port + ":127.0.0.1", "https://" + tc.sni + ":" + port + "/"}, tc.flags...)
			})
			assert.Contains(t, out, body)
			assert.Equal(t, tc.version, sess.GetVersion())
			if tc.suite != 0 {
				assert.Equal(t, tc.suite, sess.GetCipherSuite(), "TLS_RSA_WITH_AES_128_GCM_SHA256")
			}
		})
	}
}
