package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type runFunc func() int

func (f runFunc) Run() int { return f() }

// TestMainFailsOnLeftovers: Main fails a passing run whose tests left a
// file in the temporary directory, passes a clean one, keeps a failure a
// failure, and removes what was left either way.
func TestMainFailsOnLeftovers(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var root string
	leaky := runFunc(func() int {
		root = os.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(root, "client.key"), []byte("left behind"), 0o600))
		return 0
	})
	assert.Equal(t, 1, Main(leaky))
	assert.NoDirExists(t, root, "Main leaves its own directory behind")

	clean := runFunc(func() int {
		dir, err := os.MkdirTemp("", "cleaned")
		require.NoError(t, err)
		require.NoError(t, os.RemoveAll(dir))
		return 0
	})
	assert.Equal(t, 0, Main(clean))
	assert.Equal(t, 3, Main(runFunc(func() int { return 3 })))
}

// TestDocBlock: the block between a name's markers, its code fence and
// surrounding blank lines removed, not another name's block.
func TestDocBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	doc := "intro\n<!-- other:begin -->\nnot this\n<!-- other:end -->\n<!-- run:begin -->\n\n```sh\necho one\necho two\n```\n\n<!-- run:end -->\n"
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
	assert.Equal(t, "echo one\necho two", DocBlock(t, path, "run"))
	assert.Equal(t, "not this", DocBlock(t, path, "other"))
}
