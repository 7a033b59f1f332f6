//go:build pkcs11

package pkcs11_test

import (
	"bytes"
	"crypto/tls"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
)

// openWith opens the vault at path under kek, with opts.
func openWith(t *testing.T, path string, kek []byte, opts ...keyvault.Option) (*keyvault.Vault, error) {
	t.Helper()
	store, err := keyvault.OpenBolt(path)
	require.NoError(t, err)
	v, err := keyvault.New(t.Context(), store, kek, opts...)
	if err != nil {
		store.Close()
	}
	return v, err
}

func signsP256(t *testing.T, v *keyvault.Vault, id string) {
	t.Helper()
	sig, err := v.Sign(t.Context(), id, 0, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	require.NoError(t, err, "%s signs", id)
	k, err := v.Get(t.Context(), id)
	require.NoError(t, err)
	require.NoError(t, verify(k.Versions[k.Primary-1].PublicKey, tls.ECDSAWithP256AndSHA256, []byte("m"), sig), "%s: the signature verifies", id)
}

// TestTokenKeysThroughKEKRotationAndBackup: a token key's record (its URI)
// is rewrapped by a KEK rotation and carried by a snapshot like any other:
// after the rotation, and in an instance restored from the snapshot with
// the same token configured, the key signs in the token; an instance
// without the token refuses the snapshot, saying the backend is missing.
func TestTokenKeysThroughKEKRotationAndBackup(t *testing.T) {
	b := softhsmtest.Open(t)
	oldKEK, newKEK := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	path := filepath.Join(t.TempDir(), "keys.db")
	v, err := openWith(t, path, oldKEK, keyvault.WithBackend(b))
	require.NoError(t, err)
	_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "hsm-ec", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.Create(t.Context(), "soft-ec", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.RotateKEK(t.Context(), newKEK)
	require.NoError(t, err)
	signsP256(t, v, "hsm-ec")
	var snap bytes.Buffer
	_, err = v.Backup(t.Context(), &snap)
	require.NoError(t, err)
	require.NoError(t, v.Close())

	_, err = openWith(t, path, oldKEK, keyvault.WithBackend(b))
	assert.ErrorIs(t, err, keyvault.ErrWrongKEK, "the old KEK after the rotation")
	v, err = openWith(t, path, newKEK, keyvault.WithBackend(b))
	require.NoError(t, err)
	signsP256(t, v, "hsm-ec")
	require.NoError(t, v.Close())

	restored, err := openWith(t, filepath.Join(t.TempDir(), "keys.db"), newKEK, keyvault.WithBackend(b))
	require.NoError(t, err)
	defer restored.Close()
	_, err = restored.Restore(t.Context(), bytes.NewReader(snap.Bytes()))
	require.NoError(t, err)
	signsP256(t, restored, "hsm-ec")
	signsP256(t, restored, "soft-ec")

	noToken, err := openWith(t, filepath.Join(t.TempDir(), "keys.db"), newKEK)
	require.NoError(t, err)
	defer noToken.Close()
	_, err = noToken.Restore(t.Context(), bytes.NewReader(snap.Bytes()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not configured in this instance")
}
