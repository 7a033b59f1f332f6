package keyvault

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSharedFollowReadsOnlyChanges: a replica following a store of many
// keys reads, at each change of another replica, the records that change
// wrote, not the whole store, whatever the change (a key created,
// rotated, a version disabled or destroyed, which erases its private key),
// and serves each change as it was made.
func TestSharedFollowReadsOnlyChanges(t *testing.T) {
	const keys = 50
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	for i := range keys {
		_, err := a.Create(ctx, fmt.Sprintf("k%d", i), ECDSAP256, nil)
		require.NoError(t, err)
	}
	b, bc := newSharedVault(t, s)
	bc.watchHeld.Store(true) // only the Syncs below read the store
	full, scanned := bc.fullScans.Load(), bc.scanned.Load()
	followed := func(what string, changes int64, change func() error, check func()) {
		t.Helper()
		require.NoError(t, change(), what)
		require.NoError(t, b.Sync(ctx), what)
		check()
		read := bc.scanned.Load() - scanned
		scanned += read
		// A change writes at most a key's record, a version's two, the
		// manifest and the key's manifest bucket.
		assert.LessOrEqual(t, read, 5*changes, "%s: records read to follow it", what)
	}
	followed("create", 1, func() error { _, err := a.Create(ctx, "web", ECDSAP256, nil); return err }, func() { signOK(t, b, "web", 1) })
	followed("rotate", 1, func() error { _, err := a.Rotate(ctx, "web"); return err }, func() { signOK(t, b, "web", 2) })
	followed("disable", 1, func() error { _, err := a.SetVersionEnabled(ctx, "web", 1, false); return err },
		func() { signFails(t, b, "web", 1, ErrFailedPrecondition) })
	followed("destroy", 1, func() error { _, err := a.DestroyVersion(ctx, "web", 1); return err }, func() {
		key, err := b.Get(ctx, "web")
		require.NoError(t, err)
		assert.Equal(t, StateDestroyed, key.Versions[0].State)
	})
	followed("B's own change, then A's", 2, func() error {
		if _, err := b.Rotate(ctx, "k1"); err != nil {
			return err
		}
		_, err := a.Rotate(ctx, "k2")
		return err
	}, func() { signOK(t, b, "k2", 2); signOK(t, b, "k1", 2) })
	assert.Equal(t, full, bc.fullScans.Load(), "the whole store read again")

	// What B follows is what a replica opening the store now reads.
	c, _ := newSharedVault(t, s)
	for _, v := range []*Vault{b, c} {
		keys, _, err := v.List(ctx, 100, "")
		require.NoError(t, err)
		assert.Len(t, keys, 51)
	}
	web, err := c.Get(ctx, "web")
	require.NoError(t, err)
	followedWeb, err := b.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, web, followedWeb)
}

// TestSharedFollowDetectsTampering: reading only what changed, a follower
// still refuses a store whose records are not the ones its manifest
// lists: a record deleted, or an older copy put back, by something other
// than a replica (the manifest unchanged), is reported as corrupted at
// the next change, as a replica opening the store reports it.
func TestSharedFollowDetectsTampering(t *testing.T) {
	for _, c := range []struct {
		name   string
		tamper func(s *memShared, old Record)
	}{
		{"record deleted", func(s *memShared, old Record) { delete(s.records, old.RecordRef) }},
		{"older copy put back", func(s *memShared, old Record) {
			s.rev++
			old.Revision = s.rev
			s.records[old.RecordRef] = old
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newMemShared()
			a, _ := newSharedVault(t, s)
			_, err := a.Create(ctx, "web", Ed25519, nil)
			require.NoError(t, err)
			b, bc := newSharedVault(t, s)
			bc.watchHeld.Store(true)
			ref := RecordRef{Kind: RecordVersion, ID: "web", Version: 1}
			s.mu.Lock()
			old := s.records[ref]
			s.mu.Unlock()
			_, err = a.SetVersionEnabled(ctx, "web", 1, false)
			require.NoError(t, err)
			require.NoError(t, b.Sync(ctx))

			s.mu.Lock()
			c.tamper(s, old)
			s.mu.Unlock()
			_, err = a.Create(ctx, "api", Ed25519, nil)
			require.NoError(t, err)
			assert.ErrorIs(t, b.Sync(ctx), ErrCorrupted, "the follower")
			_, err = New(ctx, s.client(), testKEK)
			assert.ErrorIs(t, err, ErrCorrupted, "a replica opening the store")
		})
	}
}

// TestSharedFollowByWatchReadsNothing: the watch reports each commit with
// the records it wrote and erased, and a replica follows the others from
// it without reading the store (no Scan, no ScanChanged: only the
// Revision reads confirming its view), its own commits in between too.
func TestSharedFollowByWatchReadsNothing(t *testing.T) {
	s := newMemShared()
	// A bound of minutes: no confirmation tick comes during the test, so
	// B reads only to follow what its watch reported.
	a, _ := newSharedVault(t, s, WithStalenessBound(10*time.Minute))
	b, bc := newSharedVault(t, s, WithStalenessBound(10*time.Minute))
	// A Sync of B racing A's commit may find it in the store before B's
	// watch reports it, and then reads it from there: here the watch is
	// never behind.
	bc.watchFirst.Store(true)
	sub := subscribe(b)
	scans := bc.scans.Load()

	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	sub.waitFor(t, "web")
	signOK(t, b, "web", 1)
	_, err = b.Create(ctx, "own", ECDSAP256, nil) // B's own commit, between A's
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	sub.waitFor(t, "web")
	signOK(t, b, "web", 2)
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	sub.waitFor(t, "web")
	_, err = a.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	sub.waitFor(t, "web")
	key, err := b.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, key.Versions[0].State)
	assert.Equal(t, scans, bc.scans.Load(), "reads of the store to follow")

	// What B follows is what a replica opening the store now reads.
	c, _ := newSharedVault(t, s)
	fresh, err := c.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, fresh, key)
	_, err = c.Get(ctx, "own")
	assert.NoError(t, err)
}

// TestSharedFollowerRefusesASplicedRecord: a follower checks what each
// change brings against the manifest as a start does, though it hashes
// only what changed. An older copy of a record, or of it and its manifest
// bucket, written into the store by another writer than a replica (one
// with etcd access) is refused when the follower reads it: its view stays
// as it was, with the disabled version disabled.
func TestSharedFollowerRefusesASplicedRecord(t *testing.T) {
	for _, tc := range []struct {
		name        string
		withBucket  bool
		ownDisabled bool // the follower disabled the version itself
	}{{"record", false, false}, {"record and bucket", true, false}, {"record after its own change", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			withBucket := tc.withBucket
			s := newMemShared()
			a, _ := newSharedVault(t, s)
			importTestKey(t, a, "web", ECDSAP256)
			_, err := a.Rotate(ctx, "web")
			require.NoError(t, err)
			b, _ := newSharedVault(t, s)
			bucket := bucketRef(bucketOf(keyRef("web")))
			s.mu.Lock()
			old := []Record{s.records[verRef("web", 1)], s.records[bucket]}
			s.mu.Unlock()
			disabler := a
			if tc.ownDisabled {
				disabler = b
			}
			_, err = disabler.SetVersionEnabled(ctx, "web", 1, false)
			require.NoError(t, err)
			require.NoError(t, b.Sync(ctx))
			signFails(t, b, "web", 1, ErrFailedPrecondition)

			if !withBucket {
				old = old[:1]
			}
			_, err = s.client().Commit(ctx, Write{Put: old})
			require.NoError(t, err)
			err = b.Sync(ctx)
			require.ErrorIs(t, err, ErrCorrupted)
			assert.ErrorContains(t, err, "is not the one revision")
			signFails(t, b, "web", 1, ErrFailedPrecondition)
		})
	}
}
