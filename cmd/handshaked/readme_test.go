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

// TestREADMEGrpcurl runs the README's grpcurl commands verbatim against a
// fresh development instance (only the port differs): the services listed
// by reflection, a key created, a signature, and the health check.
func TestREADMEGrpcurl(t *testing.T) {
	testenv.LookPath(t, "bash")
	testenv.LookPath(t, "grpcurl")
	script := readmeBlock(t, "grpcurl")
	p := startProcess(t, t.TempDir())
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	const documented = "127.0.0.1:7070"
	require.Contains(t, script, documented, "the grpcurl commands do not use the documented address")
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(script, documented, p.grpcAddr))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "grpcurl commands failed:\n%s\nserver:\n%s", out, p.out())
	for _, want := range []string{"handshake.v1.KeyVault", "handshake.v1.Handshake", "handshake.v1.Admin", `"id": "demo-ed"`, `"signature": "`, `"status": "SERVING"`} {
		assert.Contains(t, string(out), want, "grpcurl's output")
	}
}
