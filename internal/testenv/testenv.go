// Package testenv holds what tests across packages need from the machine they
// run on.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

// Buffer is a bytes.Buffer safe for concurrent writers and readers: process
// output, captured logs or a TLS key log that a test reads while it grows.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *Buffer) String() string { return string(b.Bytes()) }

// BuildCommand builds the command in the current directory, as an operator
// would (go build), into the test's temporary directory and returns the
// binary's path: for tests of what only the real process shows, such as
// its exit status and the build information the toolchain stamps into it.
func BuildCommand(t testing.TB, name string) string {
	t.Helper()
	goTool := LookPath(t, "go")
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command(goTool, "build", "-buildvcs=auto", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	return bin
}
