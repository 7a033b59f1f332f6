// Package buildinfotest checks a binary's -version against what the Go
// toolchain stamped into it.
package buildinfotest

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// CheckVersion builds the command in the current directory, runs it with each of argSets (e.g. -version) in env (added to the
// test's), and checks that it exits 0 and prints "name" and the build as `go
// version -m` reads it back: the module version, the VCS revision (where
// the checkout allows stamping it) and the Go version.
func CheckVersion(t *testing.T, name string, env []string, argSets ...[]string) {
	t.Helper()
	bin := testenv.BuildCommand(t, name)
	stamped, err := exec.Command(testenv.LookPath(t, "go"), "version", "-m", bin).Output()
	require.NoError(t, err)
	var goVersion, version, revision string
	for i, line := range strings.Split(string(stamped), "\n") {
		f := strings.Fields(line)
		switch {
		case i == 0 && len(f) == 2:
			goVersion = f[1]
		case len(f) >= 3 && f[0] == "mod":
			version = f[2]
		case len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision="):
			revision = "revision " + strings.TrimPrefix(f[1], "vcs.revision=")
		}
	}
	require.NotEmpty(t, goVersion, "go version -m:\n%s", stamped)
	require.NotEmpty(t, version, "go version -m:\n%s", stamped)

	for _, args := range argSets {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), env...)
		out, err := cmd.Output()
		require.NoError(t, err, "%s %v", name, args)
		line := strings.TrimSpace(string(out))
		assert.True(t, strings.HasPrefix(line, name+" "+version), "%s %v printed %q", name, args, line)
		assert.True(t, strings.HasSuffix(line, " "+goVersion), "%s %v printed %q", name, args, line)
		assert.Contains(t, line, revision, "%s %v", name, args)
	}
}
