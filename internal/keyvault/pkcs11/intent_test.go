//go:build pkcs11

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"path/filepath"
	"slices"
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

// lostCommits makes a store's commits of new key versions, while drop is
// set, fail with ErrUnavailable without reaching the store: a request lost
// before the store applied it, as for a replica that crashed between the
// generation of the key in the token and the commit.
type lostCommits struct{ drop atomic.Bool }

func (l *lostCommits) lost(w keyvault.Write) error {
	if l.drop.Load() && slices.ContainsFunc(w.Create, func(r keyvault.Record) bool { return r.Kind == keyvault.RecordMaterial }) {
		return fmt.Errorf("test: the commit was lost: %w", keyvault.ErrUnavailable)
	}
	return nil
}

// lostSharedCommits is lostCommits on etcd. With answerLost, the commits
// are applied and only their answers lost: a request that timed out after
// etcd committed it.
type lostSharedCommits struct {
	*etcdstore.Store
	lostCommits
	answerLost bool
}

func (s *lostSharedCommits) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	err := s.lost(w)
	if err != nil && !s.answerLost {
		return 0, err
	}
	rev, cerr := s.Store.Commit(ctx, w)
	if cerr != nil {
		return rev, cerr
	}
	if err != nil {
		return 0, err
	}
	return rev, nil
}

type lostBoltCommits struct {
	*keyvault.BoltStore
	lostCommits
}

func (s *lostBoltCommits) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	if err := s.lost(w); err != nil {
		return 0, err
	}
	return s.BoltStore.Commit(ctx, w)
}

// intents counts the key intents store holds.
func intents(t *testing.T, store keyvault.Store) int {
	t.Helper()
	n := 0
	_, err := store.Scan(t.Context(), func(r keyvault.Record) error {
		if r.Kind == keyvault.RecordKeyIntent {
			n++
		}
		return nil
	})
	require.NoError(t, err)
	return n
}

func objectsOfVersion(t *testing.T, b *pkcs11.Backend, id string, n uint32) int {
	t.Helper()
	count, err := pkcs11.ObjectsOfVersion(b, id, n)
	require.NoError(t, err)
	return count
}

// eventually waits for cond. Not a timing assertion: the deadline only
// ends a failing run.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), what)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKeyWhoseVersionNeverLandsLeavesNothingInToken: a key generated in the
// token whose version's commit never reached the store (the replica was
// told UNAVAILABLE, and cannot know whether the store has it) is
// destroyed once its intent has stood for ten staleness bounds, by the
// replicas that follow a shared store, or at the next start of a vault on
// a bolt file; its intent is erased, and the key id and version are free
// again. Before intents, its objects stayed in the token for good.
//
// On the shared store the replica that makes and uses the keys has a bound
// that never lapses in the test (its key use needs a fresh view, and a
// creation of its own must not stand long enough to be undone, however
// loaded the machine); another replica, with a short bound, undoes the
// intents left, which the test waits for, and stops before the keys are
// made again.
func TestKeyWhoseVersionNeverLandsLeavesNothingInToken(t *testing.T) {
	b := softhsmtest.Open(t)
	kek := bytes.Repeat([]byte{9}, 32)

	t.Run("shared store", func(t *testing.T) {
		c := etcdtest.Start(t, 1)
		s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/never-lands"})
		require.NoError(t, err)
		store := &lostSharedCommits{Store: s}
		v, err := keyvault.New(t.Context(), store, kek, keyvault.WithBackend(b), keyvault.WithStalenessBound(time.Hour))
		require.NoError(t, err)
		t.Cleanup(func() { v.Close() })

		store.drop.Store(true)
		_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "created", keyvault.ECDSAP256, nil)
		require.ErrorIs(t, err, keyvault.ErrUnavailable)
		store.drop.Store(false)
		_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "rotated", keyvault.ECDSAP256, nil)
		require.NoError(t, err)
		store.drop.Store(true)
		_, err = v.Rotate(t.Context(), "rotated")
		require.ErrorIs(t, err, keyvault.ErrUnavailable)
		store.drop.Store(false)
		assert.Equal(t, 2, objectsOfVersion(t, b, "created", 1), "the key pair is in the token")
		assert.Equal(t, 2, objectsOfVersion(t, b, "rotated", 2), "the key pair is in the token")

		us, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/never-lands"})
		require.NoError(t, err)
		undoer, err := keyvault.New(t.Context(), us, kek, keyvault.WithBackend(b), keyvault.WithStalenessBound(100*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(func() { undoer.Close() })
		eventually(t, func() bool {
			return objectsOfVersion(t, b, "created", 1)+objectsOfVersion(t, b, "rotated", 2)+intents(t, store) == 0
		}, "the keys whose versions never landed are still in the token, or their intents in the store")
		require.NoError(t, undoer.Close())
		assert.Equal(t, 2, objectsOfVersion(t, b, "rotated", 1), "the stored version's key stays")
		_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "created", keyvault.ECDSAP256, nil)
		require.NoError(t, err)
		signsP256(t, v, "created")
		_, err = v.Rotate(t.Context(), "rotated")
		require.NoError(t, err)
		signsP256(t, v, "rotated")
		assert.Zero(t, intents(t, store), "a version's commit erases its intent")
	})

	t.Run("bolt store", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "vault.db")
		s, err := keyvault.OpenBolt(path)
		require.NoError(t, err)
		store := &lostBoltCommits{BoltStore: s}
		v, err := keyvault.New(t.Context(), store, kek, keyvault.WithBackend(b))
		require.NoError(t, err)
		store.drop.Store(true)
		_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "bolt-created", keyvault.ECDSAP256, nil)
		require.ErrorIs(t, err, keyvault.ErrUnavailable)
		require.NoError(t, v.Close())
		assert.Equal(t, 2, objectsOfVersion(t, b, "bolt-created", 1), "the key pair is in the token")

		s, err = keyvault.OpenBolt(path)
		require.NoError(t, err)
		v, err = keyvault.New(t.Context(), s, kek, keyvault.WithBackend(b))
		require.NoError(t, err)
		defer v.Close()
		assert.Zero(t, objectsOfVersion(t, b, "bolt-created", 1), "destroyed at the next start")
		assert.Zero(t, intents(t, s))
		_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "bolt-created", keyvault.ECDSAP256, nil)
		require.NoError(t, err)
		signsP256(t, v, "bolt-created")
	})
}

// slowBackend holds Generate until release is closed, having closed
// started: a generation that outlasts ten staleness bounds.
type slowBackend struct {
	*pkcs11.Backend
	started, release chan struct{}
}

func (s *slowBackend) Generate(ctx context.Context, alg keyvault.Algorithm, label string) ([]byte, crypto.Signer, error) {
	close(s.started)
	<-s.release
	return s.Backend.Generate(ctx, alg, label)
}

// TestSlowGenerationUndoneByAnotherReplicaFailsCleanly: a replica whose
// generation in the token outlasts ten staleness bounds finds its intent
// undone by another replica: its creation fails with ABORTED, and the
// token holds nothing of it, neither what the other replica could destroy
// (nothing yet) nor the key generated after.
func TestSlowGenerationUndoneByAnotherReplicaFailsCleanly(t *testing.T) {
	b := softhsmtest.Open(t)
	c := etcdtest.Start(t, 1)
	kek := bytes.Repeat([]byte{11}, 32)
	replica := func(backend keyvault.KeyBackend, bound time.Duration) (*keyvault.Vault, *etcdstore.Store) {
		s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/slow"})
		require.NoError(t, err)
		v, err := keyvault.New(t.Context(), s, kek, keyvault.WithBackend(backend), keyvault.WithStalenessBound(bound))
		require.NoError(t, err)
		t.Cleanup(func() { v.Close() })
		return v, s
	}
	slow := &slowBackend{Backend: b, started: make(chan struct{}), release: make(chan struct{})}
	// The slow replica's own bound is longer than the test: the other one
	// undoes the intent, and is stopped before the key is made again (a
	// creation that stood ten of its bounds, on a loaded machine, would be
	// undone too).
	a, store := replica(slow, time.Hour)
	other, _ := replica(b, 100*time.Millisecond)

	created := make(chan error, 1)
	go func() {
		_, err := a.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "slow", keyvault.ECDSAP256, nil)
		created <- err
	}()
	<-slow.started
	require.Equal(t, 1, intents(t, store), "the intent is committed before the generation")
	eventually(t, func() bool { return intents(t, store) == 0 }, "the other replica did not undo the intent")
	close(slow.release)

	err := <-created
	require.ErrorIs(t, err, keyvault.ErrAborted)
	assert.ErrorContains(t, err, "the creation was undone")
	assert.Zero(t, objectsOfVersion(t, b, "slow", 1), "nothing of the attempt is left in the token")
	assert.Zero(t, intents(t, store))
	for _, v := range []*keyvault.Vault{a, other} {
		require.NoError(t, v.Sync(t.Context()))
		_, err = v.Get(t.Context(), "slow")
		assert.ErrorIs(t, err, keyvault.ErrNotFound)
	}
	require.NoError(t, other.Close())
	third, _ := replica(b, time.Hour)
	_, err = third.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "slow", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	require.NoError(t, a.Sync(t.Context()))
	signsP256(t, a, "slow")
}

// TestKeyWhoseAnswerWasLostIsKept: a version whose commit etcd applied
// but whose answer was lost (the caller saw UNAVAILABLE) is in the store,
// and the commit erased its intent: nothing is left to undo, and the key
// stays in the token and signs.
func TestKeyWhoseAnswerWasLostIsKept(t *testing.T) {
	b := softhsmtest.Open(t)
	c := etcdtest.Start(t, 1)
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/answer-lost"})
	require.NoError(t, err)
	store := &lostSharedCommits{Store: s, answerLost: true}
	// A bound that never lapses in the test: signing needs a fresh view,
	// and nothing here waits for an intent to be undone (the commit must
	// have erased it already).
	v, err := keyvault.New(t.Context(), store, bytes.Repeat([]byte{13}, 32), keyvault.WithBackend(b), keyvault.WithStalenessBound(time.Hour))
	require.NoError(t, err)
	defer v.Close()

	store.drop.Store(true)
	_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "answer-lost", keyvault.ECDSAP256, nil)
	store.drop.Store(false)
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.Zero(t, intents(t, store), "the version's commit erased the intent")
	require.NoError(t, v.Sync(t.Context()))
	signsP256(t, v, "answer-lost")
	assert.Equal(t, 2, objectsOfVersion(t, b, "answer-lost", 1))
}

// answerCanceled applies a commit of a new key version and then ends its
// caller's context before the answer comes back, failing it as etcdstore
// does when the caller's context ended: a client that gave up (its
// deadline passed) while etcd applied the request.
type answerCanceled struct {
	*etcdstore.Store
	cancel atomic.Pointer[context.CancelFunc]
}

func (s *answerCanceled) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	rev, err := s.Store.Commit(ctx, w)
	cancel := s.cancel.Load()
	if err != nil || cancel == nil || !slices.ContainsFunc(w.Create, func(r keyvault.Record) bool { return r.Kind == keyvault.RecordMaterial }) {
		return rev, err
	}
	(*cancel)()
	return 0, fmt.Errorf("etcdstore: commit: %w", ctx.Err())
}

// TestKeyWhoseCallerGaveUpDuringTheCommitIsKept: a version whose commit
// etcd applied while its caller's context ended (the caller sees the
// context's error, not UNAVAILABLE, yet the store holds the version) keeps
// its key in the token: the failed creation must not destroy by its label
// a key the store names, as it did, leaving a version that cannot sign.
func TestKeyWhoseCallerGaveUpDuringTheCommitIsKept(t *testing.T) {
	b := softhsmtest.Open(t)
	c := etcdtest.Start(t, 1)
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/gave-up"})
	require.NoError(t, err)
	store := &answerCanceled{Store: s}
	// A bound that never lapses in the test, as in
	// TestKeyWhoseAnswerWasLostIsKept.
	v, err := keyvault.New(t.Context(), store, bytes.Repeat([]byte{15}, 32), keyvault.WithBackend(b), keyvault.WithStalenessBound(time.Hour))
	require.NoError(t, err)
	defer v.Close()

	ctx, cancel := context.WithCancel(t.Context())
	store.cancel.Store(&cancel)
	_, err = v.CreateInBackend(ctx, keyvault.BackendPKCS11, "gave-up", keyvault.ECDSAP256, nil)
	require.ErrorIs(t, err, context.Canceled)
	ctx, cancel = context.WithCancel(t.Context())
	store.cancel.Store(&cancel)
	_, err = v.Rotate(ctx, "gave-up")
	require.ErrorIs(t, err, context.Canceled)
	store.cancel.Store(nil)

	assert.Zero(t, intents(t, store), "the versions' commits erased their intents")
	require.NoError(t, v.Sync(t.Context()))
	k, err := v.Get(t.Context(), "gave-up")
	require.NoError(t, err)
	require.Len(t, k.Versions, 2, "both versions are in the store")
	assert.Equal(t, 2, objectsOfVersion(t, b, "gave-up", 1), "the key of version 1 is in the token")
	assert.Equal(t, 2, objectsOfVersion(t, b, "gave-up", 2), "the key of version 2 is in the token")
	signsP256(t, v, "gave-up")
}
