package keyvault

import (
	"crypto/tls"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cachestat(2) (Linux 6.5) reports how many pages of a file range the page
// cache holds dirty or under writeback: written, not yet durable. Its
// number is the same on every architecture.
const sysCachestat = 451

type cachestatRange struct{ off, len uint64 }

type cachestatResult struct{ cache, dirty, writeback, evicted, recentlyEvicted uint64 }

// unsynced reports whether any page of f in [off, off+n) is not yet durable.
func unsynced(f *os.File, off, n int64) (bool, error) {
	r := cachestatRange{uint64(off), uint64(n)}
	var cs cachestatResult
	_, _, errno := syscall.Syscall6(sysCachestat, f.Fd(), uintptr(unsafe.Pointer(&r)), uintptr(unsafe.Pointer(&cs)), 0, 0, 0)
	if errno != 0 {
		return false, errno
	}
	return cs.dirty+cs.writeback > 0, nil
}

// requireCachestat skips (fails in CI) unless the kernel and the file
// system under dir tell a written page from a synced one.
func requireCachestat(t *testing.T, dir string) {
	t.Helper()
	ok := func() error {
		f, err := os.Create(filepath.Join(dir, "probe"))
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(make([]byte, os.Getpagesize())); err != nil {
			return err
		}
		dirty, err := unsynced(f, 0, 0)
		if err != nil || !dirty {
			return errors.Join(errors.New("a written page does not show as unsynced"), err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if dirty, err = unsynced(f, 0, 0); err != nil || dirty {
			return errors.Join(errors.New("a synced page still shows as unsynced (tmpfs?)"), err)
		}
		return os.Remove(f.Name())
	}()
	if ok != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the power-loss test needs cachestat(2) (Linux 6.5) on a disk-backed TMPDIR: %v", ok)
		}
		t.Skipf("cachestat(2) cannot tell synced pages here: %v", ok)
	}
}

// powerLossFS is the store's file system, able to lose power: what no
// fsync made durable is lost. Pages of the store file that the page cache
// still holds dirty are lost (zeroed), and a file creation or a rename that
// no sync of its directory made durable is undone.
type powerLossFS struct {
	mu      sync.Mutex
	created []pendingRename // previous is always ""
	renames []pendingRename
	n       int
}

func (p *powerLossFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	_, statErr := os.Stat(name)
	f, err := os.OpenFile(name, flag, perm)
	if err == nil && flag&os.O_CREATE != 0 && errors.Is(statErr, fs.ErrNotExist) {
		p.mu.Lock()
		p.created = append(p.created, pendingRename{dir: filepath.Dir(name), path: name})
		p.mu.Unlock()
	}
	return f, err
}

// pendingRename is a rename not yet durable; previous is a hard link to the
// file that path named before, "" if none.
type pendingRename struct{ dir, path, previous string }

func (p *powerLossFS) Rename(oldpath, newpath string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	previous := newpath + ".before-rename-" + strconv.Itoa(p.n)
	if err := os.Link(newpath, previous); errors.Is(err, fs.ErrNotExist) {
		previous = ""
	} else if err != nil {
		return err
	}
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	p.renames = append(p.renames, pendingRename{dir: filepath.Dir(newpath), path: newpath, previous: previous})
	return nil
}

func (p *powerLossFS) Stat(name string) (os.FileInfo, error) { return os.Stat(name) }

func (p *powerLossFS) SyncDir(dir string) error {
	if err := (osFS{}).SyncDir(dir); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	durable := func(r pendingRename) bool {
		if r.dir == dir && r.previous != "" {
			os.Remove(r.previous)
		}
		return r.dir == dir
	}
	p.renames = slices.DeleteFunc(p.renames, durable)
	p.created = slices.DeleteFunc(p.created, durable)
	return nil
}

// powerLoss leaves at path what a machine that lost power now would find
// there when it comes back. The store must be closed (bbolt's Close syncs
// nothing, as a killed process would not).
func (p *powerLossFS) powerLoss(t *testing.T, path string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.renames) - 1; i >= 0; i-- {
		r := p.renames[i]
		if r.previous == "" {
			require.NoError(t, os.Remove(r.path))
		} else {
			require.NoError(t, os.Rename(r.previous, r.path))
		}
	}
	for _, c := range p.created {
		if err := os.Remove(c.path); !errors.Is(err, fs.ErrNotExist) {
			require.NoError(t, err)
		}
	}
	p.renames, p.created = nil, nil
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	page := int64(os.Getpagesize())
	lost := make([]byte, page)
	for off := int64(0); off < fi.Size(); off += page {
		dirty, err := unsynced(f, off, page)
		require.NoError(t, err)
		if dirty {
			_, err := f.WriteAt(lost, off)
			require.NoError(t, err)
		}
	}
	// What the loss left is now the durable state the next start sees.
	require.NoError(t, f.Sync())
}

// TestAcknowledgedWritesSurvivePowerLoss: every write the vault
// acknowledged survives a power loss right after it: in a new store file
// (its directory entry made durable by a directory sync), with bbolt's own
// writes (fsync per commit), and after the rewrite that erases a destroyed
// key (its rename made durable by a directory sync).
func TestAcknowledgedWritesSurvivePowerLoss(t *testing.T) {
	dir := t.TempDir()
	requireCachestat(t, dir)
	path := filepath.Join(dir, "vault.db")
	fsys := &powerLossFS{}
	open := func() *Vault {
		t.Helper()
		store, err := openBolt(path, fsys)
		require.NoError(t, err)
		v, err := New(ctx, store, testKEK)
		require.NoError(t, err)
		return v
	}
	lose := func(v *Vault) *Vault {
		t.Helper()
		require.NoError(t, v.Close())
		fsys.powerLoss(t, path)
		return open()
	}

	v := open()
	importTestKey(t, v, "web", ECDSAP256)
	_, err := v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.Create(ctx, "api", Ed25519, nil)
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	v = lose(v)
	key, err := v.Get(ctx, "web")
	require.NoError(t, err, "an acknowledged key was lost")
	require.Len(t, key.Versions, 2)
	assert.Equal(t, StateDisabled, key.Versions[0].State, "an acknowledged disable was lost")
	signOK(t, v, "web", 2)
	_, err = v.Sign(ctx, "api", 0, tls.Ed25519, []byte("m"), false)
	assert.NoError(t, err, "an acknowledged key was lost")

	// Destroying rewrites the file and renames it over the old one.
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	v = lose(v)
	key, err = v.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, key.Versions[0].State, "an acknowledged destroy was lost")
	_, err = v.Create(ctx, "after", Ed25519, nil)
	require.NoError(t, err)
	v = lose(v)
	defer v.Close()
	for _, id := range []string{"web", "api", "after"} {
		_, err := v.Get(ctx, id)
		assert.NoError(t, err, "acknowledged key %s lost", id)
	}
	signOK(t, v, "web", 2)
}
