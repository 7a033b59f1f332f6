// Package testenv holds what tests across packages need from the machine they
// run on.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// LookPath returns the path of an external program a test needs (openssl,
// gnutls-cli, ...). Where it is missing the test is skipped on a developer's
// machine, but fails in CI (CI=true), where .ci/run installs every such
// program: a skipped interop test must not pass for a green run.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required in CI (.ci/run installs it): %v", name, err)
	}
	t.Skipf("%s not installed: %v", name, err)
	return ""
}
