package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
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
	doc := "intro\n<!-- other:begin -->\nnot this\n<!-- other:end -->\n<!-- run:begin -->\n\n```sh\necho one\necho two\n```\n\n<!-- run:end -->\n" +
		"<!-- file:begin -->\n```json\n{\"a\": 1}\n```\n<!-- file:end -->\n"
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
	assert.Equal(t, "echo one\necho two", DocBlock(t, path, "run"))
	assert.Equal(t, "not this", DocBlock(t, path, "other"))
	assert.Equal(t, `{"a": 1}`, DocBlock(t, path, "file"), "a fence with another language")
}

// TestFreePortsBelowEphemeral: the ports handed out differ, are free, and
// lie below the ephemeral range, where no outgoing connection takes them
// before the test's process listens.
func TestFreePortsBelowEphemeral(t *testing.T) {
	low := ephemeralLow()
	if low <= 10000 {
		t.Skipf("ephemeral range starts at %d: no room below it", low)
	}
	seen := map[int]bool{}
	for _, p := range append(FreePorts(t, 20), FreePort(t)) {
		assert.Less(t, p, low, "port %d in the ephemeral range", p)
		assert.False(t, seen[p], "port %d handed out twice", p)
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		require.NoError(t, err, "port %d not free", p)
		l.Close()
	}
}

// TestFreePortsNotToAnotherBinary: the ports one test binary handed out
// are not handed out by another one running meanwhile (go test ./...
// runs packages' tests at once). 500 each: drawn without the claims,
// about eleven would be both binaries'.
func TestFreePortsNotToAnotherBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("ports are claimed across test binaries on Linux only")
	}
	if os.Getenv("TESTENV_PRINT_PORTS") != "" {
		for range 500 {
			fmt.Println(FreePort(t))
		}
		return
	}
	ours := map[int]bool{}
	for range 500 {
		ours[FreePort(t)] = true
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFreePortsNotToAnotherBinary$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTENV_PRINT_PORTS=1", "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	var theirs, both int
	for _, line := range strings.Split(string(out), "\n") {
		if p, err := strconv.Atoi(line); err == nil {
			theirs++
			if ours[p] {
				both++
			}
		}
	}
	require.Equal(t, 500, theirs, "the other binary's ports:\n%s", out)
	assert.Zero(t, both, "ports handed out by both binaries")
}

// TestRunInCloneEndsWithTheBinary: what a README script left running ends
// when the test binary running it ends without its cleanups, at a -timeout
// or killed (a Ctrl-C is the same end; SIGINT is not sent here, as a
// test run started in the background ignores it), not only at the end of
// the test.
func TestRunInCloneEndsWithTheBinary(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		end  func(*os.Process) error
	}{
		{"timeout", []string{"-test.timeout", "5s"}, func(*os.Process) error { return nil }},
		{"killed", nil, (*os.Process).Kill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			EndsWithTheBinary(t, "^TestRunInCloneLeavesASleep$", tc.args, tc.end)
		})
	}
}

// TestRunInCloneLeavesASleep is TestRunInCloneEndsWithTheBinary's test
// binary's: a script that starts a sleep in the background and waits.
func TestRunInCloneLeavesASleep(t *testing.T) {
	PIDFile(t)
	src := t.TempDir()
	_, out, err := RunInClone(t, src, `sleep 300 & echo $! > "$`+pidFileEnv+`"; wait`)
	t.Fatalf("the script ended: %v\n%s", err, out)
}
