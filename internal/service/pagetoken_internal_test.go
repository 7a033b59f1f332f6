package service

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// newTokenStore opens a new vault store in a temporary directory, and a KEK.
func newTokenStore(t testing.TB) (string, []byte) {
	kek := make([]byte, 32)
	rand.Read(kek)
	return filepath.Join(t.TempDir(), "keys.db"), kek
}

// newTokenVault is the KeyVault API of deployment over the vault at path.
func newTokenVault(t testing.TB, path string, kek []byte, deployment string) *KeyVault {
	t.Helper()
	store, err := keyvault.OpenBolt(path)
	require.NoError(t, err)
	vault, err := keyvault.New(context.Background(), store, kek)
	require.NoError(t, err)
	t.Cleanup(func() { vault.Close() })
	kv, err := newKeyVault(vault, func(context.Context, *keyvault.Key) bool { return true }, deployment, nil)
	require.NoError(t, err)
	return kv
}

func seal(t testing.TB, kv *KeyVault, ctx context.Context, cursor string) string {
	t.Helper()
	tok, err := kv.sealPageToken(ctx, cursor)
	require.NoError(t, err)
	return tok
}

// TestPageTokenSealed: a token opens, for its caller only, to the position
// it was sealed from, and says nothing of it. It is sealed under the
// deployment's page-token keys, kept in the store: it opens on any replica
// of the deployment (here: after a restart, which has the same store) and
// on no other deployment's.
func TestPageTokenSealed(t *testing.T) {
	path, kek := newTokenStore(t)
	kv := newTokenVault(t, path, kek, "prod")
	edge, other := withIdentity(context.Background(), "edge"), withIdentity(context.Background(), "other")
	tok := seal(t, kv, edge, "c2VjcmV0LTE")
	assert.NotContains(t, tok, "c2VjcmV0LTE")
	assert.NotEqual(t, tok, seal(t, kv, edge, "c2VjcmV0LTE"), "sealing is not randomized")
	assert.LessOrEqual(t, len(seal(t, kv, edge, string(make([]byte, 63)))), maxPageTokenBytes, "the longest position seals into a token the service accepts")
	got, err := kv.openPageToken(edge, tok)
	require.NoError(t, err)
	assert.Equal(t, "c2VjcmV0LTE", got)
	_, err = kv.openPageToken(other, tok)
	assert.Equal(t, errPageToken, err, "another caller opened the token")
	assert.Empty(t, seal(t, kv, edge, ""), "the last page has a token")

	kv.vault.Close()
	again := newTokenVault(t, path, kek, "prod")
	got, err = again.openPageToken(edge, tok)
	require.NoError(t, err, "a token of the deployment, on another replica of it")
	assert.Equal(t, "c2VjcmV0LTE", got)
	again.vault.Close()
	_, err = newTokenVault(t, path, kek, "staging").openPageToken(edge, tok)
	assert.Equal(t, errPageToken, err, "another deployment opened the token")
}

// FuzzOpenPageToken: whatever a caller sends as a page token, opening it
// fails cleanly unless this deployment sealed it for that caller.
func FuzzOpenPageToken(f *testing.F) {
	path, kek := newTokenStore(f)
	kv := newTokenVault(f, path, kek, "")
	ctx := withIdentity(context.Background(), "edge")
	f.Add(seal(f, kv, ctx, "a2V5LWE"))
	f.Add("")
	f.Add("a2V5LWE")
	f.Add("!!!!")
	f.Add(string(make([]byte, 300)))
	f.Fuzz(func(t *testing.T, token string) {
		cursor, err := kv.openPageToken(ctx, token)
		if err != nil {
			assert.Equal(t, errPageToken, err)
			assert.Empty(t, cursor)
		}
	})
}
