package testenv

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// CopyTree copies the source tree at src to dst, as a fresh clone would
// have it: without .git, and without what a development instance or an
// earlier build leaves at the root. A test that runs a README's commands
// as written runs them there, so that what they leave (a development
// instance's handshaked-data/, a build's bin/) stays out of the checkout.
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	skip := map[string]bool{".git": true, "handshaked-data": true, "bin": true, "fleet": true, "hsm": true, "handshaked": true}
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if !strings.Contains(rel, string(filepath.Separator)) && skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy the source tree: %v", err)
	}
}

// RunInClone runs a README's script with bash (-euo pipefail) in a copy of
// the source tree at src (CopyTree), as a user would in a fresh clone,
// with env added to the environment and TMPDIR in the test's temporary
// directory. The script runs in a process group of its own (StartGroup);
// its output goes to a file, not a pipe, which servers it left in the
// background would hold open.
// It returns the clone's directory, the output and how the script ended.
func RunInClone(t testing.TB, src, script string, env ...string) (clone, out string, err error) {
	t.Helper()
	clone = filepath.Join(t.TempDir(), "handshaked")
	CopyTree(t, src, clone)
	f, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir, cmd.Stdout, cmd.Stderr = clone, f, f
	cmd.Env = append(append(os.Environ(), "TMPDIR="+t.TempDir()), env...)
	StartGroup(t, cmd)
	err = cmd.Wait()
	b, rerr := os.ReadFile(f.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return clone, string(b), err
}

// StartGroup starts cmd (a server, or a script that leaves servers in the
// background) in a process group of its own, killed with whatever cmd left
// running when the test ends, also when the test binary ends without its
// cleanups (endGroupWithUs).
func StartGroup(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	endGroupWithUs(t, cmd.Process.Pid)
}

// endGroupWithUs kills the process group pgid at the end of the test,
// before the test's directories are removed. A test binary that ends
// without its cleanups (a -timeout panic; a Ctrl-C, which a group in the
// background does not get) would leave the group running, its servers on
// their ports, so a watcher in the group kills it then: it reads a pipe
// whose other end only this process holds, and end of file means this
// process is gone.
func endGroupWithUs(t testing.TB, pgid int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Fatal(err)
	}
	defer r.Close()
	watcher := exec.Command("sh", "-c", `cat >/dev/null; kill -s KILL 0`) // 0: its own group
	watcher.Stdin = r
	watcher.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
	if err := watcher.Start(); err != nil {
		w.Close()
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		w.Close()
		watcher.Wait()
	})
}
