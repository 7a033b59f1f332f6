package keyvault

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// laterKind is a record kind this release does not know: one a later
// release writes (StoreFormat).
const laterKind RecordKind = 8

var laterRef = RecordRef{Kind: laterKind, ID: "web", Version: 2}

// commitLater commits a record of laterKind as a replica of a later
// release does: sealed under the KEK, listed in the manifest, skippable or
// not.
func commitLater(t *testing.T, v *Vault, plaintext []byte, skippable bool) {
	t.Helper()
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	require.False(t, formatZeroKind(laterKind))
	v.entries[laterRef] = recordEntry{skippable: skippable} // commit keeps the flag of a record it replaces
	require.NoError(t, v.commit(ctx, Write{Put: []Record{v.sealer.seal(laterRef, plaintext)}}))
}

// requireLaterRecord checks that the store at path holds the record
// commitLater wrote, listed as skippable, opening under kek to plaintext.
func requireLaterRecord(t *testing.T, path string, kek, plaintext []byte) {
	t.Helper()
	v := openTestVault(t, path, kek)
	assert.True(t, v.entries[laterRef].skippable, "listed as skippable")
	require.NoError(t, v.Close())
	s, err := newSealer(kek)
	require.NoError(t, err)
	var found bool
	for _, r := range storedRecords(t, path) {
		if r.RecordRef == laterRef {
			found = true
			got, err := s.open(r)
			require.NoError(t, err, "the record opens under the KEK")
			assert.Equal(t, plaintext, got)
		}
	}
	assert.True(t, found, "the store holds the record")
}

// TestStoreFormatSkipsALaterReleasesRecord: a replica of a later release
// writes a record of a kind this release does not know and that the
// manifest lists as skippable. This release serves beside it: it opens the
// store, uses its keys, keeps the record listed in the manifests it writes
// after, rewraps it in a KEK rotation and carries it through a backup and
// restore. Before StoreFormat, it refused the whole store as corrupted.
func TestStoreFormatSkipsALaterReleasesRecord(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	plaintext := []byte(`{"label":"handshaked/web/2/later"}`)
	commitLater(t, v, plaintext, true)
	require.NoError(t, v.Close())

	v = openTestVault(t, path, testKEK)
	signOK(t, v, "web", 1)
	_, err := v.Rotate(ctx, "web") // a commit of this release: the manifest must still list the record
	require.NoError(t, err)
	require.NoError(t, v.Close())
	requireLaterRecord(t, path, testKEK, plaintext)

	v = openTestVault(t, path, testKEK)
	var snapshot bytes.Buffer
	_, err = v.Backup(ctx, &snapshot)
	require.NoError(t, err)
	nextKEK := newKEK(t)
	_, err = v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	signOK(t, v, "web", 2)
	require.NoError(t, v.Close())
	requireLaterRecord(t, path, nextKEK, plaintext)

	fresh, freshPath := newTestVault(t)
	_, err = fresh.Restore(ctx, &snapshot)
	require.NoError(t, err)
	signOK(t, fresh, "web", 2)
	require.NoError(t, fresh.Close())
	requireLaterRecord(t, freshPath, testKEK, plaintext)
}

// addLater commits a record of laterKind into the bolt store at path.
func addLater(t *testing.T, path string, skippable bool) {
	t.Helper()
	v := openTestVault(t, path, testKEK)
	commitLater(t, v, []byte("{}"), skippable)
	require.NoError(t, v.Close())
}

// TestStoreFormatKeepsTamperDetection: skipping a later release's record
// is no way around the manifest. One that it does not list, one of other
// bytes, and one taken out of the store are refused as any record is; one
// listed as not skippable is refused as needing a later release.
func TestStoreFormatKeepsTamperDetection(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	require.NoError(t, v.Close())
	clean, err := os.ReadFile(path)
	require.NoError(t, err)
	s, err := newSealer(testKEK)
	require.NoError(t, err)

	t.Run("not listed", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		editBolt(t, path, func(tx *bolt.Tx) error { return putRecord(tx, s.seal(laterRef, []byte("{}"))) })
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "is not in the manifest")
	})
	t.Run("other bytes", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		addLater(t, path, true)
		editBolt(t, path, func(tx *bolt.Tx) error { return putRecord(tx, s.seal(laterRef, []byte("{}"))) })
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "is not the one revision")
	})
	t.Run("removed", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		addLater(t, path, true)
		editBolt(t, path, func(tx *bolt.Tx) error {
			_, err := applyWrite(tx, Write{Erase: []RecordRef{laterRef}})
			return err
		})
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "is missing")
	})
	t.Run("not skippable", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		addLater(t, path, false)
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrFailedPrecondition)
		assert.ErrorContains(t, err, "written by a later release")
	})
}

// TestStoreFormatSharedReplicaFollowsALaterRecord: on a shared store, a
// replica of this release follows a commit of a later release's record
// without taking its view for corrupted, keeps serving, and its own
// commits keep the record listed, so the later replica reads the store
// after them.
func TestStoreFormatSharedReplicaFollowsALaterRecord(t *testing.T) {
	s := newMemShared()
	later, _ := newSharedVault(t, s)
	this, _ := newSharedVault(t, s)
	importTestKey(t, later, "web", ECDSAP256)
	commitLater(t, later, []byte("{}"), true)

	require.NoError(t, this.Sync(ctx))
	signOK(t, this, "web", 1)
	_, err := this.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, later.Sync(ctx))
	signOK(t, later, "web", 2)
	later.writeMu.Lock()
	defer later.writeMu.Unlock()
	assert.True(t, later.entries[laterRef].skippable, "still listed as skippable")
}
