// Package testenv holds what tests across packages need from the machine they
// run on.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// HomeIn is the environment with HOME and the XDG base directories in
// dir, for a program that writes under the user's home whatever its flags
// say (Chromium, even with --user-data-dir, its crash reports and its NSS
// database): a test leaves nothing outside its temporary directories.
func HomeIn(dir string) []string {
	env := os.Environ()
	for _, v := range []string{"HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"} {
		env = append(env, v+"="+dir)
	}
	return env
}

// BuildCommand builds the command in the current directory, as an operator
// would (go build), into the test's temporary directory and returns the
// binary's path: for tests of what only the real process shows, such as
// its exit status and the build information the toolchain stamps into it.
func BuildCommand(t testing.TB, name string) string {
	t.Helper()
	return BuildPackage(t, name, ".")
}

// BuildPackage is BuildCommand for the command in pkg (a directory such as
// ../../clients/cmd/handshake-edge, or an import path): for a test that runs
// another command of the tree as its own process.
func BuildPackage(t testing.TB, name, pkg string) string {
	t.Helper()
	goTool := LookPath(t, "go")
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command(goTool, "build", "-buildvcs=auto", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Main runs a package's tests, from its TestMain, and exits with their
// status: os.Exit(testenv.Main(m)). They run with TMPDIR set to a directory
// of their own, which fails the run when a test (or a program it started)
// left anything in it: every test keeps its files in t.TempDir(), removed
// after it, and nothing it writes may outlive the run, least of all a key.
func Main(m interface{ Run() int }) int {
	root, err := os.MkdirTemp("", "handshaked-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(root)
	if old, ok := os.LookupEnv("TMPDIR"); ok {
		defer os.Setenv("TMPDIR", old)
	} else {
		defer os.Unsetenv("TMPDIR")
	}
	if err := os.Setenv("TMPDIR", root); err != nil { // os.TempDir reads it on every call
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	code := m.Run()
	entries, err := os.ReadDir(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	if len(entries) > 0 {
		names := make([]string, len(entries))
		for i, e := range entries {
			names[i] = e.Name()
		}
		fmt.Fprintf(os.Stderr, "FAIL: tests left files outside their t.TempDir(), in the temporary directory: %s\n", strings.Join(names, ", "))
		return 1
	}
	return code
}
