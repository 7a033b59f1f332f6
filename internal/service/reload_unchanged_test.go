package service

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUnchanged: a poll reloads files only when one was created, removed,
// replaced, resized or touched. Reloading on every poll would fill the
// audit log with reloads; missing a change would keep a revoked grant or
// an old certificate in force.
func TestUnchanged(t *testing.T) {
	dir := t.TempDir()
	path, other := filepath.Join(dir, "policy.json"), filepath.Join(dir, "other.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"grants": []}`), 0o644))
	require.NoError(t, os.WriteFile(other, []byte(`{"grants": []}`), 0o644))
	before := stat([]string{path, filepath.Join(dir, "missing.json")})
	require.NotNil(t, before[0])
	require.Nil(t, before[1], "a missing file stats as nil")

	assert.True(t, unchanged(before, stat([]string{path, filepath.Join(dir, "missing.json")})), "nothing changed")
	assert.False(t, unchanged(before, stat([]string{other, filepath.Join(dir, "missing.json")})), "another file at the path")
	assert.False(t, unchanged(before, stat([]string{path, other})), "a missing file appeared")
	assert.False(t, unchanged(stat([]string{other, path}), stat([]string{other, filepath.Join(dir, "missing.json")})), "a file disappeared")

	// Grown, with the old modification time put back: only the size says
	// it changed.
	require.NoError(t, os.WriteFile(path, []byte(`{"grants": [ ]}`), 0o644))
	require.NoError(t, os.Chtimes(path, before[0].ModTime(), before[0].ModTime()))
	assert.False(t, unchanged(before, stat([]string{path, filepath.Join(dir, "missing.json")})), "resized")

	// Same size, new time.
	grown := stat([]string{path})
	require.NoError(t, os.WriteFile(path, []byte(`{"grants": [_]}`), 0o644))
	require.NoError(t, os.Chtimes(path, grown[0].ModTime().Add(1), grown[0].ModTime().Add(1)))
	assert.False(t, unchanged(grown, stat([]string{path})), "touched")
}
