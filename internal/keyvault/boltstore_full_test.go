package keyvault

import (
	"io/fs"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// failWrites makes bbolt's writes to the file of s go through write,
// given the page size and bbolt's own write, until the test ends. bbolt
// writes to the *os.File it opened, which no fileSystem of the store's
// reaches, so its write function (DB.ops.writeAt, bbolt v1.5.0) is
// swapped.
func failWrites(t *testing.T, s *BoltStore, write func(pageSize int, orig func([]byte, int64) (int, error), b []byte, off int64) (int, error)) {
	t.Helper()
	f := reflect.ValueOf(s.db).Elem().FieldByName("ops").FieldByName("writeAt")
	require.True(t, f.IsValid(), "bbolt's DB has no ops.writeAt (this test follows bbolt v1.5.0)")
	p := (*func([]byte, int64) (int, error))(unsafe.Pointer(f.UnsafeAddr()))
	orig, pageSize := *p, s.db.Info().PageSize
	*p = func(b []byte, off int64) (int, error) { return write(pageSize, orig, b, off) }
	t.Cleanup(func() { *p = orig })
}

// noRoom fails a write with ENOSPC, as a full disk does.
func noRoom(b []byte, off int64) (int, error) {
	return 0, &fs.PathError{Op: "write", Path: "vault.db", Err: syscall.ENOSPC}
}

// newBoltVault opens a vault with a countingBackend, which records no
// intents, so that a key's creation is one commit in place.
func newBoltVault(t *testing.T) (*Vault, *BoltStore, *countingBackend, string) {
	t.Helper()
	b, path := &countingBackend{}, filepath.Join(t.TempDir(), "vault.db")
	store, err := OpenBolt(path)
	require.NoError(t, err)
	v, err := New(ctx, store, testKEK, WithBackend(b))
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	return v, store, b, path
}

// TestKeyWhoseInPlaceCommitAFullDiskRefusedIsDestroyed: a key's commit in
// place (no record erased) that a full disk refused while bbolt wrote its
// data pages, before its meta page, did not land and cannot later: the
// file's meta pages name the commit before. So the vault reports
// UNAVAILABLE with the full disk's message and destroys the key generated
// in the backend at once, as for a rewrite that a full disk refused; it
// kept it, as for a commit that may have landed.
func TestKeyWhoseInPlaceCommitAFullDiskRefusedIsDestroyed(t *testing.T) {
	v, store, b, path := newBoltVault(t)
	_, err := v.CreateInBackend(ctx, "counting", "before", ECDSAP256, nil)
	require.NoError(t, err)
	full := true
	failWrites(t, store, func(pageSize int, orig func([]byte, int64) (int, error), p []byte, off int64) (int, error) {
		if full {
			return noRoom(p, off)
		}
		return orig(p, off)
	})
	_, err = v.CreateInBackend(ctx, "counting", "full", ECDSAP256, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "its disk is full")
	assert.ErrorAs(t, err, new(*notAppliedError))
	assert.EqualValues(t, 1, b.destroyed.Load(), "the key generated for a commit that did not land is kept in the backend")

	full = false
	_, err = v.CreateInBackend(ctx, "counting", "full", ECDSAP256, nil)
	require.NoError(t, err)
	signOK(t, v, "full", 1)
	require.NoError(t, v.Close())
	v = openTestVault(t, path, testKEK, WithBackend(b))
	signOK(t, v, "before", 1)
	signOK(t, v, "full", 1)
	assert.EqualValues(t, 1, b.destroyed.Load())
}

// TestKeyWhoseInPlaceCommitWroteItsMetaPageIsKept: a commit in place that
// failed once its meta page was written (a sync that a full disk failed,
// or an I/O error) may have landed: the file names it, and a restart reads
// it. Its key in the backend is kept, and the error is UNAVAILABLE, not
// one of a commit that did not land (nor, for the I/O error, a plain
// failure, which the vault would take for one that failed for certain and
// destroy the key a restart then finds its record naming).
func TestKeyWhoseInPlaceCommitWroteItsMetaPageIsKept(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		says  string
	}{
		{syscall.ENOSPC, "its disk is full"},
		{syscall.EIO, "cannot tell whether a commit took effect"},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			v, store, b, _ := newBoltVault(t)
			failWrites(t, store, func(pageSize int, orig func([]byte, int64) (int, error), p []byte, off int64) (int, error) {
				n, err := orig(p, off)
				if err == nil && off < 2*int64(pageSize) {
					err = &fs.PathError{Op: "write", Path: "vault.db", Err: tc.errno}
				}
				return n, err
			})
			_, err := v.CreateInBackend(ctx, "counting", "full", ECDSAP256, nil)
			require.ErrorIs(t, err, ErrUnavailable)
			assert.ErrorContains(t, err, tc.says)
			assert.NotErrorAs(t, err, new(*notAppliedError), "a commit the file names is taken for one that did not land")
			assert.Zero(t, b.destroyed.Load(), "the key of a commit that may have landed is destroyed")
		})
	}
}
