package keyvault

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memKeeper keeps a KEK in memory, or fails while fail is set.
type memKeeper struct {
	mu   sync.Mutex
	kek  []byte
	fail bool
}

func (k *memKeeper) KeepKEK(ctx context.Context, kek []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail {
		return errors.New("test: the KEK file cannot be written")
	}
	k.kek = bytes.Clone(kek)
	return nil
}

func (k *memKeeper) kept() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return bytes.Clone(k.kek)
}

// TestKEKKeeperKeepsEveryNewKEK: a vault that keeps its KEK itself (a
// token-wrapped KEK) makes the new KEK of a rotation and has it kept, on
// the replica rotating and on every other one before the rotation
// completes; the kept KEK opens the store after, the old one no longer.
// A keeper failing stops the rotation before any record is rewrapped,
// with the store opening with the KEK kept so far; opened so, mid
// rotation, the vault keeps the new KEK, and RotateKEK carries on to it.
func TestKEKKeeperKeepsEveryNewKEK(t *testing.T) {
	s := newMemShared()
	ka, kb := &memKeeper{}, &memKeeper{}
	a, _ := newSharedVault(t, s, WithKEKKeeper(ka))
	b, _ := newSharedVault(t, s, WithKEKKeeper(kb))
	assert.Nil(t, ka.kept(), "opened with the KEK kept: nothing to keep")
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)

	st, err := a.RotateKEK(ctx, nil)
	require.NoError(t, err)
	assert.Empty(t, st.Retiring, "complete")
	newKEK := ka.kept()
	require.Len(t, newKEK, kekSize, "the rotating replica kept the KEK it made")
	assert.Equal(t, st.ID, KEKID(newKEK))
	assert.Equal(t, newKEK, kb.kept(), "the other replica kept it before the rotation completed")
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)

	_, err = New(ctx, s.client(), testKEK)
	require.ErrorIs(t, err, ErrWrongKEK, "the old KEK")
	c, err := New(ctx, s.client(), newKEK)
	require.NoError(t, err, "the kept KEK opens the store")
	signOK(t, c, "web", 1)
	_, err = c.RotateKEK(ctx, nil)
	require.ErrorIs(t, err, ErrFailedPrecondition, "no keeper: no KEK made, none the store would need and nothing keeps")
	require.NoError(t, c.Close())

	// The keeper fails: the rotation has begun, no record is rewrapped,
	// and the KEK kept so far still opens the store.
	require.NoError(t, b.Close())
	ka.mu.Lock()
	ka.fail = true
	ka.mu.Unlock()
	_, err = a.RotateKEK(ctx, nil)
	require.Error(t, err)
	assert.ErrorContains(t, err, "keep the new KEK")
	st = a.KEKStatus()
	require.NotEmpty(t, st.Retiring, "the rotation is under way")
	assert.Equal(t, st.Records-1, st.Stale, "no record rewrapped (the rotation record aside)")
	require.NoError(t, a.Close())

	// Opened with the KEK kept, the retiring one: the new KEK is kept at
	// once, and RotateKEK without a KEK finishes the rotation to it.
	kd := &memKeeper{kek: newKEK}
	d, err := New(ctx, s.client(), newKEK, WithKEKKeeper(kd))
	require.NoError(t, err)
	defer d.Close()
	third := kd.kept()
	assert.Equal(t, st.ID, KEKID(third), "the rotation's new KEK, kept at the start")
	done, err := d.RotateKEK(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, st.ID, done.ID, "the rotation under way finished, not another begun")
	assert.Empty(t, done.Retiring)
	_, err = New(ctx, s.client(), newKEK)
	require.ErrorIs(t, err, ErrWrongKEK)
	e, err := New(ctx, s.client(), third)
	require.NoError(t, err)
	signOK(t, e, "web", 1)
	require.NoError(t, e.Close())
}
