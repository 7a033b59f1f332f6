//go:build pkcs11

package pkcs11_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
)

// lostAnswer is an etcd store whose commits apply but, while lose is set,
// answer ErrUnavailable: an etcd request that timed out after etcd
// committed it.
type lostAnswer struct {
	*etcdstore.Store
	lose atomic.Bool
}

func (s *lostAnswer) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	rev, err := s.Store.Commit(ctx, w)
	if err == nil && s.lose.Load() {
		return 0, fmt.Errorf("test: no answer: %w", keyvault.ErrUnavailable)
	}
	return rev, err
}

// destroyLosingTheAnswer makes key id in the token with two versions on
// maker and destroys version 1 on v while store (v's) loses the answer:
// the destroy is committed, and the caller is told UNAVAILABLE. The token
// still holds version 1's objects then (the vault cannot know it
// committed).
func destroyLosingTheAnswer(t *testing.T, maker, v *keyvault.Vault, store *lostAnswer, b *pkcs11.Backend, id string) {
	t.Helper()
	_, err := maker.CreateInBackend(t.Context(), keyvault.BackendPKCS11, id, keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = maker.Rotate(t.Context(), id)
	require.NoError(t, err)
	_, err = maker.SetVersionEnabled(t.Context(), id, 1, false)
	require.NoError(t, err)
	n, err := pkcs11.ObjectsOfVersion(b, id, 1)
	require.NoError(t, err)
	require.Equal(t, 2, n, "version 1's public and private key in the token")

	store.lose.Store(true)
	_, err = v.DestroyVersion(t.Context(), id, 1)
	store.lose.Store(false)
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
}

// TestDestroyWithLostAnswerLeavesNothingInToken: a destroy of a token key
// whose commit etcd applied but whose answer was lost is finished all the
// same: by the replica itself once it has followed the store (it sees the
// destroy pending), or, had that replica stopped, by the next replica to
// start. The token ends with no object of the destroyed version, the
// other version still signs, and the store opens cleanly after.
func TestDestroyWithLostAnswerLeavesNothingInToken(t *testing.T) {
	b := softhsmtest.Open(t)
	c := etcdtest.Start(t, 1)
	kek := bytes.Repeat([]byte{7}, 32)
	open := func(t *testing.T, prefix string) *lostAnswer {
		s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix})
		require.NoError(t, err)
		return &lostAnswer{Store: s}
	}
	replica := func(t *testing.T, s keyvault.SharedStore, bound time.Duration) *keyvault.Vault {
		v, err := keyvault.New(t.Context(), s, kek, keyvault.WithBackend(b), keyvault.WithStalenessBound(bound))
		require.NoError(t, err)
		t.Cleanup(func() { v.Close() })
		return v
	}
	gone := func(t *testing.T, id string) bool {
		n, err := pkcs11.ObjectsOfVersion(b, id, 1)
		require.NoError(t, err)
		return n == 0
	}

	t.Run("the replica that lost the answer", func(t *testing.T) {
		// The replica that loses the answer has a short bound, which must
		// lapse: it finishes the destroy a bound after it saw it pending,
		// which the test waits for. The key is made, and used after, on
		// replicas whose bound never lapses in the test, so that neither a
		// creation standing ten short bounds (undone) nor a view older
		// than one (key use refused) on a loaded machine fails it.
		maker := replica(t, open(t, "/lost-answer"), time.Hour)
		store := open(t, "/lost-answer")
		v := replica(t, store, 400*time.Millisecond)
		destroyLosingTheAnswer(t, maker, v, store, b, "lost-answer")
		eventually(t, func() bool { return gone(t, "lost-answer") }, "version 1's objects are still in the token")
		next := replica(t, open(t, "/lost-answer"), time.Hour)
		signsP256(t, next, "lost-answer")
		k, err := next.Get(t.Context(), "lost-answer")
		require.NoError(t, err, "the store opens")
		assert.Equal(t, keyvault.StateDestroyed, k.Versions[0].State)
	})

	t.Run("the replica stopped", func(t *testing.T) {
		store := open(t, "/stopped")
		// A bound far longer than the test: this replica does not finish
		// the destroy itself before it stops.
		v := replica(t, store, time.Hour)
		destroyLosingTheAnswer(t, v, v, store, b, "stopped")
		require.NoError(t, v.Close())
		require.False(t, gone(t, "stopped"), "the stopped replica did not finish it")

		next := replica(t, open(t, "/stopped"), time.Hour)
		assert.True(t, gone(t, "stopped"), "the next replica finished the destroy at its start")
		signsP256(t, next, "stopped")
		k, err := next.Get(t.Context(), "stopped")
		require.NoError(t, err)
		assert.Equal(t, keyvault.StateDestroyed, k.Versions[0].State)
	})
}
