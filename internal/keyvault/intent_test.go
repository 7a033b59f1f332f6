package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// labelBackend is the software backend as a backend whose keys live
// outside the store (a LabelDestroyer), which the vault writes intents
// for; it counts the keys it holds by label.
type labelBackend struct {
	mu     sync.Mutex
	labels map[string]int
}

func (b *labelBackend) Name() string { return "token" }

func (b *labelBackend) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	handle, signer, err := softwareBackend{}.Generate(ctx, alg, label)
	if err == nil {
		b.mu.Lock()
		b.labels[label]++
		b.mu.Unlock()
	}
	return handle, signer, err
}

func (b *labelBackend) Load(ctx context.Context, alg Algorithm, handle []byte) (crypto.Signer, error) {
	return softwareBackend{}.Load(ctx, alg, handle)
}

func (b *labelBackend) Destroy(ctx context.Context, handle []byte) error { return nil }

func (b *labelBackend) DestroyLabeled(ctx context.Context, label string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.labels, label)
	return nil
}

// pausingBackend is a labelBackend whose next Generate, once paused is
// set, waits for release: a creation held between its intent's commit and
// its version's.
type pausingBackend struct {
	labelBackend
	paused  chan struct{} // closed when the paused Generate began
	release chan struct{}
	once    sync.Once
}

func newPausingBackend() *pausingBackend {
	return &pausingBackend{labelBackend: labelBackend{labels: map[string]int{}}, paused: make(chan struct{}), release: make(chan struct{})}
}

func (b *pausingBackend) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	first := false
	b.once.Do(func() { first = true })
	if first {
		close(b.paused)
		<-b.release
	}
	return b.labelBackend.Generate(ctx, alg, label)
}

// TestKEKRotationDuringACreationMakesItAgain: a KEK rotation that runs
// while a key is generated in a backend with an intent (an HSM's) rewraps
// that intent; the creation, a create or a rotate, undoes that attempt and
// makes the key again under the new KEK, and succeeds: the caller never
// sees the rotation. Only the key it stored is left in the backend, and the
// store, at the next start, holds no intent.
func TestKEKRotationDuringACreationMakesItAgain(t *testing.T) {
	for _, op := range []string{"create", "rotate"} {
		t.Run(op, func(t *testing.T) {
			b := newPausingBackend()
			path := filepath.Join(t.TempDir(), "vault.db")
			v, err := openVault(path, testKEK, WithBackend(&b.labelBackend))
			require.NoError(t, err)
			_, err = v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
			require.NoError(t, err)
			require.NoError(t, v.Close())
			v, err = openVault(path, testKEK, WithBackend(b))
			require.NoError(t, err)

			type result struct {
				k   *Key
				err error
			}
			done := make(chan result, 1)
			go func() {
				var r result
				if op == "create" {
					r.k, r.err = v.CreateInBackend(ctx, "token", "api", ECDSAP256, nil)
				} else {
					r.k, r.err = v.Rotate(ctx, "web")
				}
				done <- r
			}()
			<-b.paused
			nextKEK := newKEK(t)
			_, err = v.RotateKEK(ctx, nextKEK)
			require.NoError(t, err, "the rotation rewraps the intent of the creation under way")
			close(b.release)
			r := <-done
			require.NoError(t, r.err)
			id, n := "api", uint32(1)
			if op == "rotate" {
				id, n = "web", 2
			}
			assert.Len(t, r.k.Versions, int(n))
			signOK(t, v, id, n)
			assert.Len(t, b.labels, 2, "the key stored and web's first; the attempt's is destroyed")
			require.NoError(t, v.Close())

			v, err = openVault(path, nextKEK, WithBackend(b))
			require.NoError(t, err)
			signOK(t, v, id, n)
			require.NoError(t, v.Close())
			for _, r := range storedRecords(t, path) {
				assert.NotEqual(t, RecordKeyIntent, r.Kind, "left %v", r.RecordRef)
			}
			assert.Len(t, b.labels, 2)
		})
	}
}

// intentsWritten counts the commits of s that wrote a key intent.
func intentsWritten(s *memShared) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ch := range s.log {
		for _, r := range ch.Put {
			if r.Kind == RecordKeyIntent {
				n++
			}
		}
	}
	return n
}

// TestIntentWaitsForEveryReplicaToReadFormat1: while a replica of a
// release before store formats follows the store (it announces none), a
// key of a LabelDestroyer is made without an intent, the one record kind
// that replica could not read (it would refuse its whole view); once it is
// gone, with one, which the version's commit erases.
func TestIntentWaitsForEveryReplicaToReadFormat1(t *testing.T) {
	s := newMemShared()
	old := s.client()
	old.formatZero.Store(true)
	require.NoError(t, old.Announce(ctx, 0))
	b := &labelBackend{labels: map[string]int{}}
	v, _ := newSharedVault(t, s, WithBackend(b))

	_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.NoError(t, err)
	assert.Zero(t, intentsWritten(s), "no intent while a replica of format 0 follows the store")

	require.NoError(t, old.Close())
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, 1, intentsWritten(s), "an intent once every replica reads format 1")
	v.writeMu.Lock()
	for ref := range v.entries {
		assert.NotEqual(t, RecordKeyIntent, ref.Kind, "the version's commit erased %v", ref)
	}
	v.writeMu.Unlock()
	signOK(t, v, "web", 2)
	assert.Len(t, b.labels, 2, "both keys are kept")
}

// TestRestoreLeavesTheSnapshotsIntents: a snapshot holds the store as it
// is, intents included; an instance restored from it does not take them
// over: they name attempts of the instance the snapshot was taken of,
// which may have stored their versions since, and whose keys the restored
// one must not destroy.
func TestRestoreLeavesTheSnapshotsIntents(t *testing.T) {
	b := &labelBackend{labels: map[string]int{}}
	v, _ := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	label, in, err := v.beginIntent(ctx, b, "web", 2)
	require.NoError(t, err)
	require.NotNil(t, in)
	b.labels[label]++ // the generation under way
	var snapshot bytes.Buffer
	_, err = v.Backup(ctx, &snapshot)
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "vault.db")
	fresh := openTestVault(t, path, testKEK, WithBackend(b))
	_, err = fresh.Restore(ctx, &snapshot)
	require.NoError(t, err)
	signOK(t, fresh, "web", 1)
	require.NoError(t, fresh.Close())
	for _, r := range storedRecords(t, path) {
		assert.NotEqual(t, RecordKeyIntent, r.Kind, "restored %v", r.RecordRef)
	}
	openTestVault(t, path, testKEK, WithBackend(b)) // starts clean, and undoes nothing
	assert.Equal(t, 1, b.labels[label], "the key of the snapshot's intent is not destroyed")
}

// TestForgedIntentIsRefused: an intent is checked against the manifest as
// every record is: one put into the file that the manifest does not list
// (which would make a replica destroy the keys of any label it names) is
// refused, and nothing is destroyed.
func TestForgedIntentIsRefused(t *testing.T) {
	b := &labelBackend{labels: map[string]int{"handshaked/web/1/0000000000000000": 1}}
	path := filepath.Join(t.TempDir(), "vault.db")
	v := openTestVault(t, path, testKEK, WithBackend(b))
	importTestKey(t, v, "web", ECDSAP256)
	require.NoError(t, v.Close())
	s, err := newSealer(testKEK)
	require.NoError(t, err)
	forged, err := s.sealJSON(RecordRef{Kind: RecordKeyIntent, ID: "web", Version: 1}, intentRecord{Backend: "token", Label: "handshaked/web/1/0000000000000000"})
	require.NoError(t, err)
	editBolt(t, path, func(tx *bolt.Tx) error { return putRecord(tx, forged) })
	_, err = openVault(path, testKEK, WithBackend(b))
	assert.ErrorIs(t, err, ErrCorrupted)
	assert.ErrorContains(t, err, `key "web" version 1 intent is not in the manifest`)
	assert.Len(t, b.labels, 1, "nothing destroyed")
}

// TestRestoreKeepsTheInstancesOwnIntents: an intent the instance restored
// into holds (an attempt of its own whose version never landed, its key in
// the token) stays through Restore, and is undone at the next start: the
// restore erased it, and the key stayed in the token with nothing naming
// it.
func TestRestoreKeepsTheInstancesOwnIntents(t *testing.T) {
	b := &labelBackend{labels: map[string]int{}}
	v, _ := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	var snapshot bytes.Buffer
	_, err := v.Backup(ctx, &snapshot)
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "vault.db")
	fresh := openTestVault(t, path, testKEK, WithBackend(b))
	label, in, err := fresh.beginIntent(ctx, b, "api", 1)
	require.NoError(t, err)
	require.NotNil(t, in)
	b.labels[label]++ // generated; the version's commit never landed
	_, err = fresh.Restore(ctx, &snapshot)
	require.NoError(t, err)
	signOK(t, fresh, "web", 1)
	require.NoError(t, fresh.Close())

	reopened, err := openVault(path, testKEK, WithBackend(b))
	require.NoError(t, err)
	require.NoError(t, reopened.Close())
	assert.Zero(t, b.labels[label], "the key of the instance's own intent is destroyed at the next start")
	for _, r := range storedRecords(t, path) {
		assert.NotEqual(t, RecordKeyIntent, r.Kind, "left %v", r.RecordRef)
	}
}

// TestKEKRotationDuringACreationAbortsIt: a KEK rotation that rewraps the
// intent of a creation under way changes it as a claim does: the attempt's
// version commit fails with ABORTED, saying so (errRewrapped, on which
// Rotate and CreateInBackend make the key again), and leaves nothing in the
// backend; a retry succeeds, and the intent left is undone at the next
// start.
func TestKEKRotationDuringACreationAbortsIt(t *testing.T) {
	b := &labelBackend{labels: map[string]int{}}
	path := filepath.Join(t.TempDir(), "vault.db")
	v, err := openVault(path, testKEK, WithBackend(b))
	require.NoError(t, err)
	_, err = v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.NoError(t, err)
	label, in, err := v.beginIntent(ctx, b, "web", 2)
	require.NoError(t, err)
	require.NotNil(t, in)
	handle, signer, err := b.Generate(ctx, ECDSAP256, label)
	require.NoError(t, err)
	nextKEK := newKEK(t)
	_, err = v.RotateKEK(ctx, nextKEK)
	require.NoError(t, err)

	_, err = v.rotate(ctx, "web", "token", handle, signer, ECDSAP256, in)
	require.ErrorIs(t, err, ErrAborted)
	assert.ErrorIs(t, err, errRewrapped)
	require.ErrorIs(t, v.unstored(ctx, b, handle, in, err), ErrAborted)
	assert.Zero(t, b.labels[label], "the attempt's key is destroyed")
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	signOK(t, v, "web", 2)
	require.NoError(t, v.Close())

	v, err = openVault(path, nextKEK, WithBackend(b))
	require.NoError(t, err)
	require.NoError(t, v.Close())
	for _, r := range storedRecords(t, path) {
		assert.NotEqual(t, RecordKeyIntent, r.Kind, "left %v", r.RecordRef)
	}
	assert.Len(t, b.labels, 2, "the keys of both versions are kept")
}

// fullDiskFS is the operating system's file system on a disk that, while
// full is set, has no room for the file a commit that erases writes, and
// that, while syncFails is set, fails to sync a directory. Its next rename
// once renameLost is set renames, then fails, as a network file system's
// whose answer was lost (the retried RENAME finds no source: ENOENT), and
// leaves the disk full; while renameFails is set, renames fail with EIO.
// Its next statFails look-ups of a file fail with EIO, as a network file
// system's that does not answer; its next rename sets statFails to
// statAfterRename, if set.
type fullDiskFS struct {
	osFS
	full, syncFails, renameLost, renameFails atomic.Bool
	statFails, statAfterRename               atomic.Int64
}

func (f *fullDiskFS) Stat(name string) (os.FileInfo, error) {
	if f.statFails.Add(-1) >= 0 {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: syscall.EIO}
	}
	f.statFails.Store(0)
	return f.osFS.Stat(name)
}

func (f *fullDiskFS) Rename(oldpath, newpath string) error {
	if n := f.statAfterRename.Swap(0); n > 0 {
		f.statFails.Store(n)
	}
	if f.renameFails.Load() {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EIO}
	}
	if err := f.osFS.Rename(oldpath, newpath); err != nil || !f.renameLost.CompareAndSwap(true, false) {
		return err
	}
	f.full.Store(true)
	return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.ENOENT}
}

func (f *fullDiskFS) SyncDir(dir string) error {
	if f.syncFails.Load() {
		return &fs.PathError{Op: "sync", Path: dir, Err: syscall.EIO}
	}
	return f.osFS.SyncDir(dir)
}

func (f *fullDiskFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	if f.full.Load() && strings.HasSuffix(name, rewritePath("")) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.ENOSPC}
	}
	return f.osFS.OpenFile(name, flag, perm)
}

// newDiskVault opens a vault with a labelBackend on a bolt store at path,
// in a directory of its own, reached through a fullDiskFS.
func newDiskVault(t *testing.T) (v *Vault, b *labelBackend, fsys *fullDiskFS, path string) {
	t.Helper()
	b, fsys = &labelBackend{labels: map[string]int{}}, &fullDiskFS{}
	path = filepath.Join(t.TempDir(), "vault.db")
	store, err := openBolt(path, fsys)
	require.NoError(t, err)
	v, err = New(ctx, store, testKEK, WithBackend(b))
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	return v, b, fsys, path
}

// TestKeyWhoseCommitAFullDiskRefusedLeavesNothingInTheBackend: a version's
// commit that a bolt store on a full disk refused (UNAVAILABLE) did not
// land, and cannot later: the file is untouched until the rename that ends
// a rewrite. So the key generated in the backend is destroyed at once, as
// for any commit that failed for certain, not kept until its intent is
// undone at the next start (as it was, like a commit whose answer was lost).
func TestKeyWhoseCommitAFullDiskRefusedLeavesNothingInTheBackend(t *testing.T) {
	v, b, fsys, _ := newDiskVault(t)
	fsys.full.Store(true)
	_, err := v.CreateInBackend(ctx, "token", "full", ECDSAP256, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "its disk is full")
	assert.Empty(t, b.labels, "the key generated for the version is still in the backend")

	fsys.full.Store(false)
	_, err = v.CreateInBackend(ctx, "token", "full", ECDSAP256, nil)
	require.NoError(t, err)
	signOK(t, v, "full", 1)
	assert.Len(t, b.labels, 1)
}

// TestKeyWhoseCommitWasNotMadeDurableIsKept: a version's commit whose
// rewrite was renamed into place but whose directory sync then failed is
// in the store (the vault reads it from the new file), durably or not: its
// key in the backend is kept, as for any commit that may have landed, not
// destroyed under a version that names it (as it was: the store returned
// the error alone, a commit failed for certain). Should the rename be lost
// in a crash, the old file's intent has the key destroyed at the next
// start.
func TestKeyWhoseCommitWasNotMadeDurableIsKept(t *testing.T) {
	v, b, fsys, path := newDiskVault(t)
	fsys.syncFails.Store(true)
	_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.Error(t, err)
	assert.ErrorContains(t, err, "sync")
	assert.Len(t, b.labels, 1, "the key of the stored version is destroyed in the backend")
	fsys.syncFails.Store(false)
	_, err = v.CreateInBackend(ctx, "token", "api", ECDSAP256, nil)
	require.NoError(t, err, "the vault goes on from the store's state")
	require.NoError(t, v.Close())

	v = openTestVault(t, path, testKEK, WithBackend(b))
	signOK(t, v, "web", 1)
	assert.Len(t, b.labels, 2)
}

// TestKeyWhoseRenameFailedIsKept: a version's rewrite whose rename failed
// may have landed (POSIX keeps the name unchanged only on errors other
// than EIO, and a network file system may rename and lose the answer), so
// its key in the backend is kept, not destroyed at once as for a commit
// failed for certain (as it was).
//   - Landed: the store's path names the new file. The store reads it,
//     and the next start serves the version, with its key. The key was
//     destroyed, and the next start served a version whose key was gone.
//   - The name unchanged as far as the store can see: UNAVAILABLE, and
//     the key is kept with its intent, which the next start undoes,
//     finding no version.
func TestKeyWhoseRenameFailedIsKept(t *testing.T) {
	for _, landed := range []bool{true, false} {
		t.Run(fmt.Sprintf("landed=%v", landed), func(t *testing.T) {
			v, b, fsys, path := newDiskVault(t)
			fsys.renameLost.Store(landed)
			fsys.renameFails.Store(!landed)
			_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
			require.ErrorContains(t, err, "rename")
			if !landed {
				assert.ErrorIs(t, err, ErrUnavailable)
				assert.ErrorContains(t, err, "cannot tell whether a commit took effect")
			}
			assert.Len(t, b.labels, 1, "the key of a version the store may hold is destroyed in the backend")
			require.NoError(t, v.Close())

			requireRenameOutcome(t, openTestVault(t, path, testKEK, WithBackend(b)), b, landed)
		})
	}
}

// requireRenameOutcome requires v, started again on a store whose rewrite
// committing version 1 of key "web" in b failed at its rename, to serve
// the version with its key if the rename landed, and otherwise neither
// (the intent left undone at the start).
func requireRenameOutcome(t *testing.T, v *Vault, b *labelBackend, landed bool) {
	t.Helper()
	if landed {
		signOK(t, v, "web", 1)
		assert.Len(t, b.labels, 1)
		return
	}
	_, err := v.Get(ctx, "web")
	require.ErrorIs(t, err, ErrNotFound)
	assert.Empty(t, b.labels, "the intent left is undone at the start")
}

// corruptStored changes the bytes of the record ref in s in place, as the
// store's own damage would, with no commit a replica is told of.
func corruptStored(t *testing.T, s *memShared, ref RecordRef, sealed func([]byte) []byte) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[ref]
	require.True(t, ok, "%v is stored", ref)
	r.Sealed = sealed(bytes.Clone(r.Sealed))
	s.records[ref] = r
}

// intentLeft opens a vault on s, with a short bound, that committed an
// intent of key "web" and generated its key in the backend, the version's
// commit never made. It returns the vault, its backend, the key's label
// and the intent.
func intentLeft(t *testing.T, s *memShared) (*Vault, *labelBackend, string, *keyIntent) {
	t.Helper()
	b := &labelBackend{labels: map[string]int{}}
	v, _ := newSharedVault(t, s, WithBackend(b), WithStalenessBound(50*time.Millisecond))
	label, in, err := v.beginIntent(ctx, b, "web", 1)
	require.NoError(t, err)
	require.NotNil(t, in)
	b.labels[label]++ // generated; the version's commit never came
	return v, b, label, in
}

// TestDamagedIntentIsReportedNotUndone: an intent whose stored bytes are
// not those the manifest lists, in the state of the store the view holds,
// is reported as corrupted (left work that cannot be finished, counted and
// logged), not skipped without a word at every sweep as it was, and the
// keys of its label are not destroyed.
func TestDamagedIntentIsReportedNotUndone(t *testing.T) {
	s := newMemShared()
	v, b, label, in := intentLeft(t, s)
	corruptStored(t, s, in.ref, func(sealed []byte) []byte { sealed[len(sealed)-1] ^= 1; return sealed })

	assert.Eventually(t, func() bool { return v.StuckBackendDestroys() == 1 }, 10*time.Second, 10*time.Millisecond,
		"the damaged intent is reported")
	b.mu.Lock()
	defer b.mu.Unlock()
	assert.Equal(t, 1, b.labels[label], "the key of the damaged intent's label is destroyed")
}

// refusingBackend is a labelBackend whose Destroy fails while refuse is
// set, and that records the handles it destroyed.
type refusingBackend struct {
	labelBackend
	refuse    atomic.Bool
	destroyed [][]byte
}

func (b *refusingBackend) Destroy(ctx context.Context, handle []byte) error {
	if b.refuse.Load() {
		return errors.New("test: the token refuses")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.destroyed = append(b.destroyed, bytes.Clone(handle))
	return nil
}

// destroyLeft opens a vault on s whose key "web" has its version 1
// destroyed, and the key left in the backend, which refused the destroy
// and then takes destroys again.
func destroyLeft(t *testing.T, s *memShared) (*Vault, *refusingBackend) {
	t.Helper()
	b := &refusingBackend{labelBackend: labelBackend{labels: map[string]int{}}}
	// A bound long enough that no sweep finds the handle before the test
	// changes it, while the backend still refuses.
	v, _ := newSharedVault(t, s, WithBackend(b), WithStalenessBound(500*time.Millisecond))
	_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	b.refuse.Store(true)
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err, "destroyed; its key is left to destroy in the backend")
	return v, b
}

// TestSplicedHandleOfADestroyedVersionIsNotDestroyed: a destroyed
// version's handle left in the store (its backend refused the destroy) is
// checked against the manifest before the destroy is finished: one put
// there since (validly sealed, for the same record: the handle of another
// key) is reported as corrupted, and the key it names is not destroyed.
func TestSplicedHandleOfADestroyedVersionIsNotDestroyed(t *testing.T) {
	s := newMemShared()
	v, b := destroyLeft(t, s)
	forged := v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: "web", Version: 1}, []byte("another key's handle"))
	corruptStored(t, s, forged.RecordRef, func([]byte) []byte { return forged.Sealed })
	b.refuse.Store(false)
	assert.Eventually(t, func() bool { return v.StuckBackendDestroys() == 1 }, 10*time.Second, 10*time.Millisecond,
		"the spliced handle is reported")
	b.mu.Lock()
	defer b.mu.Unlock()
	assert.Empty(t, b.destroyed, "a handle the manifest does not list is destroyed")
}

// loseStored takes the record ref out of s, as the store's own damage (or
// a key deleted by hand in etcd) would, with no commit a replica is told
// of.
func loseStored(t *testing.T, s *memShared, ref RecordRef) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.records[ref]
	require.True(t, ok, "%v is stored", ref)
	delete(s.records, ref)
}

// TestLostLeftWorkIsReported: a record of left work (an intent to undo, a
// destroyed version's handle) that the manifest lists and the store, in
// the state the view holds, does not hold is reported as corrupted (left
// work that cannot be finished, counted and logged), as a damaged one is,
// not looked for in silence at every sweep, its key left in the backend
// unreported.
func TestLostLeftWorkIsReported(t *testing.T) {
	t.Run("intent", func(t *testing.T) {
		s := newMemShared()
		v, _, _, in := intentLeft(t, s)
		loseStored(t, s, in.ref)
		assert.Eventually(t, func() bool { return v.StuckBackendDestroys() == 1 }, 5*time.Second, 10*time.Millisecond,
			"the lost intent is reported")
	})
	t.Run("handle", func(t *testing.T) {
		s := newMemShared()
		v, b := destroyLeft(t, s)
		loseStored(t, s, RecordRef{Kind: RecordMaterial, ID: "web", Version: 1})
		b.refuse.Store(false)
		assert.Eventually(t, func() bool { return v.StuckBackendDestroys() == 1 }, 5*time.Second, 10*time.Millisecond,
			"the lost handle is reported")
	})
}

// TestCommitNotMadeDurableIsServed: a bolt rewrite renamed into place
// whose directory sync then failed is in the store (a committedError), and
// the vault serves it at once. Nothing follows a bolt store, so the view
// is read again there, not left behind until the next write's conflict: a
// key created so was not served, and a software version destroyed so kept
// its state (and its private key in memory). And the second such commit
// panicked the vault (a nil follower's changes read).
func TestCommitNotMadeDurableIsServed(t *testing.T) {
	v, _, fsys, _ := newDiskVault(t)
	fsys.syncFails.Store(true)
	_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.ErrorContains(t, err, "sync")
	signOK(t, v, "web", 1)

	fsys.syncFails.Store(false)
	_, err = v.Create(ctx, "soft", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "soft", 1, false)
	require.NoError(t, err)
	fsys.syncFails.Store(true)
	_, err = v.DestroyVersion(ctx, "soft", 1) // erases the material: a rewrite
	require.ErrorContains(t, err, "sync")
	k, err := v.Get(ctx, "soft")
	require.NoError(t, err)
	require.Len(t, k.Versions, 1)
	assert.Equal(t, StateDestroyed, k.Versions[0].State)
	// A bolt view read again keeps no state to read changes from (only a
	// follower has one): the second refresh read them from the follower
	// a bolt store has not, and panicked.
	fsys.syncFails.Store(false)
	_, err = v.Create(ctx, "after", ECDSAP256, nil)
	require.NoError(t, err)
	signOK(t, v, "after", 1)
}
