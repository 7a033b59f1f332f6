package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pidFileEnv names, for the test binary EndsWithTheBinary runs, the file
// where its test writes the pid of the process that must end with it.
const pidFileEnv = "TESTENV_PID_FILE"

// PIDFile is, in the test binary EndsWithTheBinary runs, the file where
// its test writes the pid of the process it started; in any other run it
// skips the test, which only EndsWithTheBinary's binary runs.
func PIDFile(t testing.TB) string {
	t.Helper()
	f := os.Getenv(pidFileEnv)
	if f == "" {
		t.Skip("run by EndsWithTheBinary")
	}
	return f
}

// EndsWithTheBinary runs this test binary again, only its test run with
// args, and ends it without its cleanups with end (at a -timeout in args
// when end does nothing; killed when it is (*os.Process).Kill). That test
// starts a process, writes its pid to PIDFile's file and waits for it:
// EndsWithTheBinary fails t unless that process ends with the binary.
func EndsWithTheBinary(t *testing.T, run string, args []string, end func(*os.Process) error) {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "pid")
	cmd := exec.Command(os.Args[0], append([]string{"-test.run", run}, args...)...)
	cmd.Env = append(os.Environ(), pidFileEnv+"="+pidFile, "TMPDIR="+t.TempDir())
	out := &Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, time.Minute, 10*time.Millisecond, "%s did not start its process:\n%s", run, out)
	// Only a process that outlived the binary, or a test stopped before
	// it could tell, is killed here: one that ended may have left its pid
	// to another process by now.
	t.Cleanup(func() {
		if t.Failed() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	require.NoError(t, end(cmd.Process))
	assert.Error(t, cmd.Wait(), "the test binary ended as it should not have:\n%s", out)
	assert.Eventually(t, func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH }, 30*time.Second, 10*time.Millisecond,
		"the process %s started outlived the test binary", run)
}
