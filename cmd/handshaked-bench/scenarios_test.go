package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestLoadScenarios runs the load scenarios of this directory's README
// verbatim, on free ports instead of the documented ones: every tool
// completes its bounded load without a failed call.
func TestLoadScenarios(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "openssl", "ghz", "h2load", "wrk"} {
		testenv.LookPath(t, tool)
	}
	script := testenv.DocBlock(t, "README.md", "scenarios")
	for _, documented := range []string{"127.0.0.1:7070", "127.0.0.1:7080", "127.0.0.1:8443"} {
		require.Contains(t, script, documented)
		addr := testenv.FreeAddr(t)
		script = strings.ReplaceAll(script, documented, addr)
	}
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	testenv.StartGroup(t, cmd) // its servers end with the test, however it ends
	err := cmd.Wait()
	got := out.String()
	require.NoError(t, err, "%s", got)
	// ghz, three times, every call OK.
	assert.Equal(t, 3, strings.Count(got, "Summary:"), "%s", got)
	assert.Equal(t, 3, strings.Count(got, "[OK]"), "%s", got)
	assert.NotContains(t, got, "Error distribution")
	assert.Contains(t, got, "requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored", "h2load")
	assert.Contains(t, got, "Requests/sec:", "wrk")
	assert.NotContains(t, got, "Non-2xx", "wrk")
	assert.NotContains(t, got, "Socket errors", "wrk")
}
