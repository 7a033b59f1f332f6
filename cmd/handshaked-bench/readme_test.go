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

// readmeBlock returns the shell block of the README between two markers.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	return testenv.DocBlock(t, filepath.Join("..", "..", "README.md"), name)
}

// TestREADMEPerformance runs the README's benchmark command, as a user
// types it from the repository, in its short mode: every part (key
// operations over every transport, handshakes through the edge and the
// local-key server, memory) runs in its own processes and prints its
// table, and the README's table has the columns the command prints.
func TestREADMEPerformance(t *testing.T) {
	testenv.LookPath(t, "bash")
	command := readmeBlock(t, "bench:command")
	require.Equal(t, "go run ./cmd/handshaked-bench", command, "the documented command")
	cmd := exec.Command("bash", "-c", command+" -short")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	got := string(out)
	for _, want := range []string{
		"| RSA-2048 PKCS#1 premaster decrypt | 8 |", "| RSA-2048 PSS sign | 1 |", "| ECDSA P-256 sign | 8 |", "| Ed25519 sign | 1 |",
		"| TLS 1.3 ECDSA P-256 | full | 2 |", "| TLS 1.3 RSA-2048 | resumed | 2 |", "| TLS 1.2 RSA key exchange | resumed | 2 |", "| TLS 1.2 RSA key exchange | resumed | 1 |",
		"| TLS 1.3 ECDSA P-256 | full | 1 |", "| TLS 1.3 ECDSA P-256 | resumed | 1 |", "| TLS 1.3 RSA-2048 | full | 1 |", "| TLS 1.3 RSA-2048 | resumed | 1 |",
		"| 100 |", "| 300 |",
	} {
		assert.Contains(t, got, want)
	}
	table := readmeBlock(t, "bench:table")
	for _, line := range strings.Split(got, "\n") {
		if strings.HasPrefix(line, "| operation |") || strings.HasPrefix(line, "| handshake |") || strings.HasPrefix(line, "| pending sessions |") {
			assert.Contains(t, table, line, "the README's table is not what the command prints")
		}
	}
}
