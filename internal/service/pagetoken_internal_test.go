package service

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
)

func newTokenVault(t testing.TB) *KeyVault {
	kv, err := NewKeyVault(nil, func(context.Context, *keyvault.Key) bool { return true })
	require.NoError(t, err)
	return kv
}

// TestPageTokenSealed: a token opens, for its caller only, to the position
// it was sealed from, and says nothing of it.
func TestPageTokenSealed(t *testing.T) {
	kv := newTokenVault(t)
	edge, other := withIdentity(context.Background(), "edge"), withIdentity(context.Background(), "other")
	tok := kv.sealPageToken(edge, "c2VjcmV0LTE")
	assert.NotContains(t, tok, "c2VjcmV0LTE")
	assert.NotEqual(t, tok, kv.sealPageToken(edge, "c2VjcmV0LTE"), "sealing is not randomized")
	got, err := kv.openPageToken(edge, tok)
	require.NoError(t, err)
	assert.Equal(t, "c2VjcmV0LTE", got)
	_, err = kv.openPageToken(other, tok)
	assert.Equal(t, errPageToken, err, "another caller opened the token")
	_, err = newTokenVault(t).openPageToken(edge, tok)
	assert.Equal(t, errPageToken, err, "another process opened the token")
	assert.Empty(t, kv.sealPageToken(edge, ""), "the last page has a token")
}

// FuzzOpenPageToken: whatever a caller sends as a page token, opening it
// fails cleanly unless this process sealed it for that caller.
func FuzzOpenPageToken(f *testing.F) {
	kv := newTokenVault(f)
	ctx := withIdentity(context.Background(), "edge")
	f.Add(kv.sealPageToken(ctx, "a2V5LWE"))
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
