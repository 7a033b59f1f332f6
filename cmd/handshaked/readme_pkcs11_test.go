package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREADMEPKCS11Build runs the README's build command for the PKCS#11
// backend verbatim: it makes a cgo binary (with an ELF interpreter, unlike
// the default static one) that accepts the -pkcs11-* settings and fails on
// a missing module rather than saying it lacks the backend.
func TestREADMEPKCS11Build(t *testing.T) {
	bin, _ := buildFromREADME(t, "pkcs11-build")

	run := exec.Command(bin, "-data-dir", t.TempDir(), "-pkcs11-module", filepath.Join(t.TempDir(), "missing.so"), "-pkcs11-token", "t")
	run.Env = append(os.Environ(), pkcs11PINEnv+"=1234")
	out, err := run.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "cannot load module")
	assert.NotContains(t, string(out), "built without PKCS#11 support")
}
