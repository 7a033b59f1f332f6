package keyvault

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loneID returns a key id whose manifest bucket holds none of the
// vault's own records (the check record, the KEK rotation record).
func loneID(t *testing.T) string {
	t.Helper()
	for i := range 1000 {
		id := fmt.Sprintf("lone%d", i)
		if b := bucketOf(keyRef(id)); b != bucketOf(checkRef) && b != bucketOf(rotationRef) {
			return id
		}
	}
	require.FailNow(t, "no key id in a bucket of its own")
	return ""
}

// TestKEKRotationRewrapsABucketLeftEmpty: a bucket whose last record was
// erased (here the intent of a key creation that never landed, undone at
// the next start) holds no record a KEK rotation rewraps. It must still not
// be left sealed under the old KEK: after the rotation the store opens with
// the new KEK alone.
func TestKEKRotationRewrapsABucketLeftEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	oldKEK, nextKEK := newKEK(t), newKEK(t)
	b := &labelBackend{labels: map[string]int{}}
	v := openTestVault(t, path, oldKEK, WithBackend(b))
	importTestKey(t, v, "web", ECDSAP256)
	id := loneID(t)
	_, in, err := v.beginIntent(ctx, b, id, 1)
	require.NoError(t, err)
	require.NotNil(t, in)
	require.NoError(t, v.Close()) // a crash mid-creation: the intent stays

	v = openTestVault(t, path, oldKEK, WithBackend(b)) // undoes it
	v.writeMu.Lock()
	_, held := v.entries[in.ref]
	v.writeMu.Unlock()
	require.False(t, held, "the intent is undone")
	_, err = v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)
	require.NoError(t, v.Close())

	s, err := newSealer(nextKEK)
	require.NoError(t, err)
	for _, r := range storedRecords(t, path) {
		_, err := s.open(r)
		assert.NoError(t, err, "%v opens under the new KEK", r.RecordRef)
	}
	v, err = openVault(path, nextKEK, WithBackend(b))
	require.NoError(t, err, "the store opens with the new KEK")
	signOK(t, v, "web", 1)
	require.NoError(t, v.Close())
}

// TestKEKRotationRefusesASplicedRecord: a KEK rotation reads the records it
// rewraps from the store. An older copy of one put back there (by a writer
// with store access, here the enabled version record of a version since
// disabled) must be refused, not resealed under the new KEK with a digest
// the new manifest vouches for: that would undo the disable for every
// replica that opens the store after.
func TestKEKRotationRefusesASplicedRecord(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	importTestKey(t, a, "web", ECDSAP256)
	_, err := a.Rotate(ctx, "web")
	require.NoError(t, err)
	s.mu.Lock()
	enabled := s.records[verRef("web", 1)]
	s.mu.Unlock()
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)

	_, err = s.client().Commit(ctx, Write{Put: []Record{enabled}})
	require.NoError(t, err)
	nextKEK := newKEK(t)
	_, err = a.RotateKEK(ctx, nextKEK)
	assert.ErrorIs(t, err, ErrCorrupted, "the rotation")

	c, err := New(ctx, s.client(), nextKEK)
	if err == nil {
		defer c.Close()
		signFails(t, c, "web", 1, ErrFailedPrecondition)
	}
	assert.ErrorIs(t, err, ErrCorrupted, "a replica opening the store")
}

// TestSharedFollowerRefusesASplicedRecordAfterABackup: a Backup that finds
// the store ahead of the view takes in the newer state. The follower must
// then trust, as verified before, only the bytes of that state: an older
// copy of a record it replaced (here the enabled version record of a
// version since disabled), put back by a writer with store access, is
// refused at the next change it follows, as it is without the Backup.
func TestSharedFollowerRefusesASplicedRecordAfterABackup(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	importTestKey(t, a, "web", ECDSAP256)
	_, err := a.Rotate(ctx, "web")
	require.NoError(t, err)
	// A bound of minutes and a watch that reports nothing: F reads the
	// store only when the test says.
	f, fc := newSharedVault(t, s, WithStalenessBound(10*time.Minute))
	fc.watchHeld.Store(true)
	s.mu.Lock()
	enabled := s.records[verRef("web", 1)]
	s.mu.Unlock()
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	var snapshot bytes.Buffer
	_, err = f.Backup(ctx, &snapshot)
	require.NoError(t, err)
	signFails(t, f, "web", 1, ErrFailedPrecondition)

	_, err = s.client().Commit(ctx, Write{Put: []Record{enabled}})
	require.NoError(t, err)
	_, err = a.Create(ctx, "api", ECDSAP256, nil)
	require.NoError(t, err)
	err = f.Sync(ctx)
	assert.ErrorIs(t, err, ErrCorrupted, "the follower")
	assert.ErrorContains(t, err, `key "web" version 1 is not the one revision`)
}

// TestSharedFollowerRefusesARecordSwappedForAnUnlistedOne: a follower
// reading only the changes counts the store's records to tell erasures. A
// record deleted from the store and another put in that nothing lists (by
// a writer with store access) leave the count as it was; the follower must
// refuse that store, as a replica opening it does, not drop the unlisted
// record and keep serving the deleted one.
func TestSharedFollowerRefusesARecordSwappedForAnUnlistedOne(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	importTestKey(t, a, "web", ECDSAP256)
	f, fc := newSharedVault(t, s, WithStalenessBound(10*time.Minute))
	fc.watchHeld.Store(true) // F reads the changes from the store

	s.mu.Lock()
	delete(s.records, verRef("web", 1))
	s.mu.Unlock()
	_, err := s.client().Commit(ctx, Write{Put: []Record{{RecordRef: keyRef("ghost"), Sealed: []byte("unlisted")}}})
	require.NoError(t, err)
	_, err = a.Create(ctx, "api", ECDSAP256, nil)
	require.NoError(t, err)
	assert.ErrorIs(t, f.Sync(ctx), ErrCorrupted, "the follower")
	_, err = New(ctx, s.client(), testKEK)
	assert.ErrorIs(t, err, ErrCorrupted, "a replica opening the store")
}
