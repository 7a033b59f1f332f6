package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEWalkthrough runs the README's curl walkthrough verbatim against a
// fresh development instance (only the port differs), so the documentation
// cannot drift from what the service does.
func TestREADMEWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "openssl"} {
		testenv.LookPath(t, tool)
	}
	script := readmeBlock(t, "walkthrough")

	p := startProcess(t, t.TempDir())
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	const documented = "http://127.0.0.1:7080"
	require.Contains(t, script, documented, "walkthrough does not use the documented address")
	script = strings.ReplaceAll(script, documented, p.restURL)
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir()) // where its mktemp -d lands
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "walkthrough failed:\n%s\nserver:\n%s", out, p.out())
	for _, want := range []string{"Verified OK", "premaster decrypted: same 48 bytes", "corrupted: 48 other bytes", "corrupted, asked again: the same 48 bytes", "404", `"code":3`} {
		assert.Contains(t, string(out), want, "walkthrough output")
	}
}
