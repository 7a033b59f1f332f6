package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// buildFromREADME runs the README's build command in block verbatim, for a
// cgo build of handshaked, and returns the binary, checked to be a cgo one
// (with an ELF interpreter, unlike the default static one), and the shared
// libraries it needs.
func buildFromREADME(t *testing.T, block string) (bin string, libs []string) {
	t.Helper()
	bash := testenv.LookPath(t, "bash")
	testenv.LookPath(t, "go")
	testenv.LookPath(t, "gcc") // cgo
	bin = filepath.Join(t.TempDir(), "handshaked")
	cmd := exec.Command(bash, "-euo", "pipefail", "-c", readmeBlock(t, block))
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "BIN="+bin, "CGO_ENABLED=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	f, err := elf.Open(bin)
	require.NoError(t, err)
	defer f.Close()
	require.NotNil(t, f.Section(".interp"), "a cgo binary, dynamically linked")
	libs, err = f.ImportedLibraries()
	require.NoError(t, err)
	return bin, libs
}
