package keyvault

import (
	"crypto/sha256"
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCallsCatchUp: a call on one replica naming a key or version another
// replica made a moment ago finds it, though the watch has not brought it
// into the view yet: a not-found makes the vault read the store once before
// it answers, for reads, key operations and changes alike; cut off from the
// store, it says that rather than not-found. A call naming a key that
// exists nowhere does not reread the store.
func TestCallsCatchUp(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, bc := newSharedVault(t, s)
	digest := sha256.Sum256([]byte("hello"))
	follows := func(what string, call func(id string) error) {
		t.Helper()
		id := "catch-up-" + what
		bc.watchHeld.Store(true) // b's watch lags
		_, err := a.Create(ctx, id, ECDSAP256, nil)
		require.NoError(t, err)
		assert.NoError(t, call(id), "%s on the other replica at once", what)
		bc.watchHeld.Store(false)
	}
	follows("get", func(id string) error { _, err := b.Get(ctx, id); return err })
	follows("sign", func(id string) error {
		_, err := b.Sign(ctx, id, 0, tls.ECDSAWithP256AndSHA256, digest[:], true)
		return err
	})
	follows("chain", func(id string) error { _, _, _, err := b.VersionChain(ctx, id, 1); return err })
	follows("rotate", func(id string) error { _, err := b.Rotate(ctx, id); return err })
	follows("disable", func(id string) error { _, err := b.SetVersionEnabled(ctx, id, 1, false); return err })

	// A version made on a: b serves it at once too.
	bc.watchHeld.Store(true)
	_, err := a.Rotate(ctx, "catch-up-get")
	require.NoError(t, err)
	_, err = b.Sign(ctx, "catch-up-get", 2, tls.ECDSAWithP256AndSHA256, digest[:], true)
	assert.NoError(t, err, "a version made on the other replica")
	bc.watchHeld.Store(false)

	_, err = b.Get(ctx, "no-such-key")
	assert.ErrorIs(t, err, ErrNotFound)
	// A change naming a key that exists nowhere: a revision read shows
	// the view is current, and nothing is read again.
	scans := bc.scans.Load()
	_, err = b.SetVersionEnabled(ctx, "no-such-key", 1, false)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, scans, bc.scans.Load(), "a change naming no key reread the store")
	bc.setDown(true)
	_, err = b.Get(ctx, "no-such-key")
	assert.ErrorIs(t, err, ErrUnavailable, "cut off from the store, a key it does not know is not said to be missing")
	bc.setDown(false)
}
