package keyvault

import (
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCommitsAfterAnUnseenRenameLandInTheFileThePathNames: a rewrite whose
// rename took effect but answered an error, and whose look-up of the
// store's path failed once, may have landed (UNAVAILABLE). The commits
// after it go into the new file, which the path names, and survive a
// restart; they went into the old file, unlinked by the rename, and were
// lost at the next start.
func TestCommitsAfterAnUnseenRenameLandInTheFileThePathNames(t *testing.T) {
	v, b, fsys, path := newDiskVault(t)
	_, err := v.Create(ctx, "before", Ed25519, nil)
	require.NoError(t, err)
	fsys.renameLost.Store(true)
	fsys.statAfterRename.Store(1)
	_, err = v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "cannot tell whether a commit took effect")
	assert.Len(t, b.labels, 1, "the key of a version the store may hold is destroyed in the backend")
	fsys.full.Store(false)

	_, err = v.Create(ctx, "after", Ed25519, nil)
	require.NoError(t, err)
	signOK(t, v, "web", 1)
	require.NoError(t, v.Close())

	v = openTestVault(t, path, testKEK, WithBackend(b))
	for _, id := range []string{"before", "after"} {
		signEd25519(t, v, id)
	}
	signOK(t, v, "web", 1)
	assert.Len(t, b.labels, 1)
}

// TestStoreThatCannotTellWhichFileItsPathNamesTakesNoWrites: after a
// rewrite's rename that failed, while the store's path cannot be looked
// up, the store cannot tell which file it names, and refuses every write
// (UNAVAILABLE, saying what to check) rather than commit into a file the
// rename may have unlinked; keys are still served. Once the path answers,
// writes go on in the file it names, and nothing acknowledged is lost, the
// rename landed or not.
func TestStoreThatCannotTellWhichFileItsPathNamesTakesNoWrites(t *testing.T) {
	for _, landed := range []bool{true, false} {
		t.Run(fmt.Sprintf("landed=%v", landed), func(t *testing.T) {
			v, b, fsys, path := newDiskVault(t)
			_, err := v.Create(ctx, "before", Ed25519, nil)
			require.NoError(t, err)
			fsys.renameLost.Store(landed)
			fsys.renameFails.Store(!landed)
			fsys.statAfterRename.Store(math.MaxInt64)
			_, err = v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
			require.ErrorIs(t, err, ErrUnavailable)
			fsys.full.Store(false)
			fsys.renameFails.Store(false)

			for range 2 {
				_, err = v.Create(ctx, "refused", Ed25519, nil)
				require.ErrorIs(t, err, ErrUnavailable, "a commit into a file the store's path may not name")
				assert.ErrorContains(t, err, "cannot tell which file its path names")
				assert.ErrorContains(t, err, path)
			}
			signEd25519(t, v, "before")

			fsys.statFails.Store(0)
			_, err = v.Create(ctx, "after", Ed25519, nil)
			require.NoError(t, err)
			require.NoError(t, v.Close())
			_, err = os.Stat(rewritePath(path))
			assert.ErrorIs(t, err, os.ErrNotExist, "the rewrite's new file is left")

			v = openTestVault(t, path, testKEK, WithBackend(b))
			for _, id := range []string{"before", "after"} {
				signEd25519(t, v, id)
			}
			_, err = v.Get(ctx, "refused")
			assert.ErrorIs(t, err, ErrNotFound)
			requireRenameOutcome(t, v, b, landed)
		})
	}
}

// TestStoreWhoseFileWasReplacedTakesNoWrites: a store whose path names
// another file than the one it opened (replaced while it runs: a copy
// renamed over it) refuses writes (UNAVAILABLE) rather than commit into
// the file no name reaches, which the next start would not see.
func TestStoreWhoseFileWasReplacedTakesNoWrites(t *testing.T) {
	v, b, _, path := newDiskVault(t)
	_, err := v.Create(ctx, "before", Ed25519, nil)
	require.NoError(t, err)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+".copy", data, 0o600))
	require.NoError(t, os.Rename(path+".copy", path))

	_, err = v.Create(ctx, "refused", Ed25519, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "names another file than the one it has open")
	signEd25519(t, v, "before")
	require.NoError(t, v.Close())

	v = openTestVault(t, path, testKEK, WithBackend(b))
	signEd25519(t, v, "before")
	_, err = v.Create(ctx, "after", Ed25519, nil)
	require.NoError(t, err)
}

// TestCommitsAfterARenameNotMadeDurableWaitForIt: after a rewrite whose
// rename landed but whose directory sync failed, nothing more is committed
// into the new file until the rename is durable (UNAVAILABLE meanwhile): a
// crash before could bring the old file back, and lose those commits too,
// which the store had acknowledged as durable.
func TestCommitsAfterARenameNotMadeDurableWaitForIt(t *testing.T) {
	v, b, fsys, path := newDiskVault(t)
	fsys.syncFails.Store(true)
	_, err := v.CreateInBackend(ctx, "token", "web", ECDSAP256, nil)
	require.ErrorContains(t, err, "sync")
	_, err = v.Create(ctx, "refused", Ed25519, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "not known durable")
	signOK(t, v, "web", 1)

	fsys.syncFails.Store(false)
	_, err = v.Create(ctx, "after", Ed25519, nil)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	v = openTestVault(t, path, testKEK, WithBackend(b))
	signOK(t, v, "web", 1)
	signEd25519(t, v, "after")
	_, err = v.Get(ctx, "refused")
	assert.ErrorIs(t, err, ErrNotFound)
}
