package keyvault

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTruncatedStore cuts a store file at every page boundary and more: each
// cut that loses a page in use is a clear ErrCorrupted (cut to nothing, an
// empty store), never a panic or a fault, and leaves the file unlocked.
func TestTruncatedStore(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "rsa", RSA2048)
	for i := range 40 {
		_, err := v.Create(ctx, "k"+strconv.Itoa(i), Ed25519, nil)
		require.NoError(t, err)
	}
	v.Close()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	page := os.Getpagesize()
	cuts := []int{1, 100, page - 1, page + 1, len(data) - 1}
	for n := page; n < len(data); n += page {
		cuts = append(cuts, n)
	}
	dir := t.TempDir()
	for _, n := range cuts {
		// A file of its own for each cut: bbolt leaves a file it panicked
		// on mapped, and so locked, until the process exits.
		cut := filepath.Join(dir, strconv.Itoa(n)+".db")
		require.NoError(t, os.WriteFile(cut, data[:n], 0o600))
		v, err := openVault(cut, testKEK)
		if err == nil {
			// Cut only past the pages the last commit uses: nothing is lost.
			keys, _, err := v.List(ctx, 0, "")
			assert.NoError(t, err)
			assert.Len(t, keys, 41, "cut at %d of %d bytes", n, len(data))
			v.Close()
			continue
		}
		assert.ErrorIs(t, err, ErrCorrupted, "cut at %d of %d bytes", n, len(data))
		assert.ErrorContains(t, err, cut)
	}
	cut := filepath.Join(dir, "empty.db")
	require.NoError(t, os.WriteFile(cut, nil, 0o600))
	store, err := OpenBolt(cut)
	require.NoError(t, err)
	_, err = Open(ctx, store, testKEK)
	assert.ErrorIs(t, err, ErrEmptyStore)
	store.Close()
}

// TestStoreInUse opens a store another holder has open: the error says so
// and names the process (this one) and since when it runs, not bbolt's
// bare timeout.
func TestStoreInUse(t *testing.T) {
	_, path := newTestVault(t)
	_, err := OpenBolt(path)
	require.Error(t, err)
	assert.ErrorContains(t, err, "another process has it open")
	assert.ErrorContains(t, err, "pid "+strconv.Itoa(os.Getpid()))
	assert.NotContains(t, err.Error(), "timeout")
	t.Log(err)
	if runtime.GOOS == "linux" {
		_, since, ok := strings.Cut(err.Error(), ", since ")
		require.True(t, ok, "%v", err)
		start, perr := time.Parse(time.RFC3339, since[:len("2006-01-02T15:04:05Z")])
		require.NoError(t, perr, "%v", err)
		// This process started before the test, and not long before.
		assert.False(t, start.After(time.Now()), "%v", err)
		assert.WithinDuration(t, time.Now(), start, time.Hour, "%v", err)
	}
}
