package keyvault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// laterKind is a record kind this release does not know: one a later
// release writes (StoreFormat).
const laterKind RecordKind = 9

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

// storedManifest opens the manifest of s and returns it, with its
// plaintext's top-level fields.
func storedManifest(t *testing.T, s *memShared) (manifestRecord, []string) {
	t.Helper()
	s.mu.Lock()
	r := s.records[manifestRef]
	s.mu.Unlock()
	sealer, err := newSealer(testKEK)
	require.NoError(t, err)
	plaintext, err := sealer.open(r)
	require.NoError(t, err)
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(plaintext, &fields))
	var m manifestRecord
	require.NoError(t, json.Unmarshal(plaintext, &m))
	return m, slices.Sorted(maps.Keys(fields))
}

// storedBuckets returns how many manifest buckets s holds.
func storedBuckets(s *memShared) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for ref := range s.records {
		if ref.Kind == RecordManifestBucket {
			n++
		}
	}
	return n
}

// requireFlat checks that the manifest of s is flat, as store format 1
// writes it (those fields and no other) and reads it (an entry for every
// record), and that s holds no bucket.
func requireFlat(t *testing.T, s *memShared) {
	t.Helper()
	m, fields := storedManifest(t, s)
	assert.Equal(t, []string{"records", "revision"}, fields, "the fields of a format-1 manifest")
	s.mu.Lock()
	records := len(s.records)
	s.mu.Unlock()
	assert.Len(t, m.Records, records-1, "an entry for every record but the manifest")
	assert.Zero(t, storedBuckets(s))
}

// formatOneFleet returns a shared store that a replica of store format 1
// follows (it announces that format), and that replica's client.
func formatOneFleet(t *testing.T) (*memShared, *memClient) {
	t.Helper()
	s := newMemShared()
	old := s.client()
	old.formatOne.Store(true)
	require.NoError(t, old.Announce(ctx, 0))
	return s, old
}

// TestStoreFormatBucketsWaitForEveryReplica: while a replica of store
// format 1 follows a shared store, replicas of this release write the flat
// manifest that one reads, and follow each other on it. Once it is gone,
// the next change converts the manifest to buckets, in a commit of its own
// before the change's, and every replica follows the bucketed store, as a
// replica that opens it then does.
func TestStoreFormatBucketsWaitForEveryReplica(t *testing.T) {
	s, old := formatOneFleet(t)
	a, _ := newSharedVault(t, s)
	b, _ := newSharedVault(t, s)
	importTestKey(t, a, "web", ECDSAP256)
	require.NoError(t, b.Sync(ctx))
	_, err := b.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = a.Create(ctx, "api", ECDSAP256, nil)
	require.NoError(t, err)
	requireFlat(t, s)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "api", 1)
	signOK(t, a, "web", 2)

	require.NoError(t, old.Close())
	s.mu.Lock()
	before := s.rev
	s.mu.Unlock()
	_, err = a.Rotate(ctx, "api")
	require.NoError(t, err)
	m, _ := storedManifest(t, s)
	assert.Equal(t, formatBuckets, m.Format)
	assert.Equal(t, []manifestEntry{bucketedSentinel}, m.Records)
	assert.Equal(t, len(m.Buckets), storedBuckets(s))
	s.mu.Lock()
	after, log := s.rev, s.log
	s.mu.Unlock()
	require.Equal(t, before+2, after, "the conversion, then the rotation")
	conversion := log[before]
	for _, r := range conversion.Put {
		assert.Contains(t, []RecordKind{RecordManifest, RecordManifestBucket}, r.Kind, "the conversion writes %v", r.RecordRef)
	}
	assert.Empty(t, conversion.Erased)

	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "api", 2)
	_, err = b.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, a.Sync(ctx))
	signOK(t, a, "web", 3)
	c, _ := newSharedVault(t, s)
	signOK(t, c, "web", 3)
	signOK(t, c, "api", 2)
}

// TestStoreFormatRestoreAcrossFormats: a snapshot of a flat store restores
// into a bucketed one, and one of a bucketed store into a shared store
// still flat (a replica of format 1 follows it): a restore writes the
// manifest of the store it goes into, whatever the snapshot's.
func TestStoreFormatRestoreAcrossFormats(t *testing.T) {
	flat, _ := formatOneFleet(t)
	a, _ := newSharedVault(t, flat)
	importTestKey(t, a, "web", ECDSAP256)
	_, err := a.Rotate(ctx, "web")
	require.NoError(t, err)
	requireFlat(t, flat)
	var flatSnapshot bytes.Buffer
	_, err = a.Backup(ctx, &flatSnapshot)
	require.NoError(t, err)

	bucketed, path := newTestVault(t)
	_, err = bucketed.Restore(ctx, &flatSnapshot)
	require.NoError(t, err)
	signOK(t, bucketed, "web", 2)
	require.NoError(t, bucketed.Close())
	assert.NotZero(t, countKind(storedRecords(t, path), RecordManifestBucket), "the restored store is bucketed")
	bucketed = openTestVault(t, path, testKEK)
	signOK(t, bucketed, "web", 2)
	_, err = bucketed.Create(ctx, "api", ECDSAP256, nil)
	require.NoError(t, err)
	var bucketedSnapshot bytes.Buffer
	_, err = bucketed.Backup(ctx, &bucketedSnapshot)
	require.NoError(t, err)

	into, _ := formatOneFleet(t)
	r, _ := newSharedVault(t, into)
	_, err = r.Restore(ctx, &bucketedSnapshot)
	require.NoError(t, err)
	requireFlat(t, into)
	signOK(t, r, "web", 2)
	signOK(t, r, "api", 1)
	other, _ := newSharedVault(t, into)
	signOK(t, other, "api", 1)
}

// noRoomForBuckets is a shared store that refuses a commit with a
// manifest bucket as too large, as etcd does past --max-request-bytes.
type noRoomForBuckets struct{ *memClient }

func (s noRoomForBuckets) Commit(ctx context.Context, w Write) (int64, error) {
	for _, r := range w.Put {
		if r.Kind == RecordManifestBucket {
			return 0, fmt.Errorf("the commit is larger than the store takes: %w", ErrFailedPrecondition)
		}
	}
	return s.memClient.Commit(ctx, w)
}

// TestStoreFormatConversionThatDoesNotFit: a store where every bucket in
// one commit does not fit (a flat manifest near etcd's request limit)
// stays flat, and changes go on in it, rather than every change failing.
func TestStoreFormatConversionThatDoesNotFit(t *testing.T) {
	s, old := formatOneFleet(t)
	v, err := New(ctx, noRoomForBuckets{s.client()}, testKEK)
	require.NoError(t, err)
	defer v.Close()
	importTestKey(t, v, "web", ECDSAP256)
	require.NoError(t, old.Close())
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err, "a change once every replica reads format 2")
	requireFlat(t, s)
	signOK(t, v, "web", 2)
}
