//go:build openssl

package keyvault

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSoftwareRSAIsOpenSSLs: with the openssl tag, every way a software RSA
// key comes into memory (generated, imported, rotated, loaded when the
// vault opens) gives OpenSSL's key, and the other algorithms keep the
// standard library's. The rest of the package's tests, run with the tag,
// check that it behaves as crypto/rsa does.
func TestSoftwareRSAIsOpenSSLs(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "imported", RSA2048)
	importTestKey(t, v, "ec", ECDSAP256)
	_, err := v.Create(ctx, "generated", RSA2048, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "generated")
	require.NoError(t, err)

	check := func(v *Vault, when string) {
		t.Helper()
		for _, ref := range []struct {
			id      string
			version uint32
		}{{"imported", 1}, {"generated", 1}, {"generated", 2}} {
			ver, err := v.keyVersion(ctx, ref.id, ref.version)
			require.NoError(t, err)
			assert.IsType(t, &opensslRSA{}, ver.signer, "%s: %s version %d", when, ref.id, ref.version)
			pub := ver.signer.Public().(*rsa.PublicKey)
			_, ct := encryptPremaster(t, pub, tls.VersionTLS12)
			_, err = v.Decrypt(ctx, ref.id, ref.version, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12)
			assert.NoError(t, err)
		}
		ver, err := v.keyVersion(ctx, "ec", 1)
		require.NoError(t, err)
		assert.IsType(t, &ecdsa.PrivateKey{}, ver.signer, "%s: an ECDSA key", when)
	}
	check(v, "in the vault that made them")
	require.NoError(t, v.Close())
	check(openTestVault(t, path, testKEK), "loaded when the vault opens")
}
