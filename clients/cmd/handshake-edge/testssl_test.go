package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestTestSSLVulnerabilities runs testssl.sh, a scanner written apart from
// this project, for the attacks that depend on how a TLS implementation
// behaves rather than on which suites it offers: Heartbleed, CCS injection
// (CVE-2014-0224), Ticketbleed, ROBOT (Bleichenbacher's oracle against the
// RSA key exchange, which the vault's decryption must not give), and
// client-initiated renegotiation (RFC 5746). The edge serves the RSA key
// only and the service seals session tickets, so that ROBOT and
// Ticketbleed have something to attack: every check must find the edge
// not vulnerable.
func TestTestSSLVulnerabilities(t *testing.T) {
	testssl := testenv.LookPath(t, "testssl")
	t.Parallel() // most of its minute is testssl waiting for answers
	f := newTicketFixture(t)
	addr, _ := startEdge(t, "-handshaked", f.srv.GRPCAddr, "-key", f.rsa.ID)
	dir := t.TempDir()
	report := filepath.Join(dir, "testssl.json")
	cmd := exec.CommandContext(t.Context(), testssl, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "min",
		"--heartbleed", "--ccs-injection", "--ticketbleed", "--robot", "--renegotiation",
		"--jsonfile", report, addr)
	cmd.Env = append(os.Environ(), "TMPDIR="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "testssl:\n%s", out)
	b, err := os.ReadFile(report)
	require.NoError(t, err)
	var findings []struct{ ID, Severity, Finding string }
	require.NoError(t, json.Unmarshal(b, &findings), "testssl's report:\n%s", b)

	got := map[string]string{}
	for _, f := range findings {
		got[f.ID] = f.Finding
		switch {
		case f.Severity == "OK" || f.Severity == "INFO":
		case f.ID == "engine_problem":
			// The local openssl's GOST engine, not the edge.
		default:
			assert.Fail(t, "testssl finding", "%s (%s): %s", f.ID, f.Severity, f.Finding)
		}
	}
	// Each check ran and found nothing, rather than finding nothing to
	// test (ROBOT without an RSA key exchange, Ticketbleed without
	// tickets would say so).
	for id, finding := range map[string]string{
		"heartbleed":           "not vulnerable, no heartbeat extension",
		"CCS":                  "not vulnerable",
		"ticketbleed":          "not vulnerable",
		"ROBOT":                "not vulnerable",
		"secure_renego":        "supported",
		"secure_client_renego": "not vulnerable",
	} {
		assert.Equal(t, finding, got[id], "testssl's %s check:\n%s", id, out)
	}
}
