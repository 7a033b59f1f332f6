//go:build pkcs11

package pkcs11_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
)

// BenchmarkBackends signs with ECDSA P-256 and RSA-2048 and decrypts an
// RSA-2048 premaster through the vault, with the key in the SoftHSM token
// and in the software backend, in one run and in parallel (the token's
// sessions are pooled). SoftHSM is software too: the ratio is the PKCS #11
// backend's overhead, not an HSM's speed.
//
//	go test -tags pkcs11 -run '^$' -bench Backends -benchtime 2s ./internal/keyvault/pkcs11/
func BenchmarkBackends(b *testing.B) {
	backend := softhsmtest.Open(b)
	v, _ := newVault(b, backend)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, kind := range []struct {
		name    string
		backend string
	}{{"software", keyvault.BackendSoftware}, {"pkcs11", keyvault.BackendPKCS11}} {
		for _, alg := range []keyvault.Algorithm{keyvault.ECDSAP256, keyvault.RSA2048} {
			id := kind.name + map[keyvault.Algorithm]string{keyvault.ECDSAP256: "-ec", keyvault.RSA2048: "-rsa"}[alg]
			k, err := v.CreateInBackend(b.Context(), kind.backend, id, alg, nil)
			require.NoError(b, err)
			scheme := tls.ECDSAWithP256AndSHA256
			if alg == keyvault.RSA2048 {
				scheme = tls.PSSWithSHA256
			}
			b.Run("sign/"+alg.String()+"/"+kind.name, func(b *testing.B) {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := v.Sign(b.Context(), id, 0, scheme, digest[:], true); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			if alg != keyvault.RSA2048 {
				continue
			}
			premaster := make([]byte, 48)
			premaster[0], premaster[1] = 3, 3
			ct, err := rsa.EncryptPKCS1v15(rand.Reader, k.Versions[0].PublicKey.(*rsa.PublicKey), premaster)
			require.NoError(b, err)
			b.Run("premaster/"+alg.String()+"/"+kind.name, func(b *testing.B) {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := v.Decrypt(b.Context(), id, 0, keyvault.DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
