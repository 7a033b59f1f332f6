package testenv

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

var (
	// benchCommand is a README line running Go benchmarks: go test, its
	// flags, then a ./package/ (and a comment, perhaps).
	benchCommand = regexp.MustCompile(`^(go test [^#]*?-bench [^#]*?) (\./\S+/)(\s.*)?$`)
	// benchRan is the result line of a benchmark that ran once.
	benchRan = regexp.MustCompile(`(?m)^Benchmark\S+\s+1\s`)
)

// RunBenchCommands runs a README's go test -bench commands (script, one a
// line) as written in the module at root, each benchmark once
// (-benchtime 1x after the command's own flags, so that it wins): what the
// README promises, commands whose benchmarks compile and run, checked
// without measuring anything. Each command must run at least one
// benchmark.
func RunBenchCommands(t testing.TB, root, script string) {
	t.Helper()
	for _, line := range strings.Split(script, "\n") {
		m := benchCommand.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not a go test -bench command with a ./package/ argument: %q", line)
		}
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", m[1]+" -benchtime 1x "+m[2])
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the README's %q failed: %v\n%s", line, err, out)
		}
		if !benchRan.Match(out) {
			t.Fatalf("the README's %q ran no benchmark:\n%s", line, out)
		}
	}
}
