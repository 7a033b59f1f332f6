package main

import (
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestLogFlags: handshakectl's only log lines are grpc-go's diagnostics:
// by default (error, text) a failed call shows none of its INFO or WARNING
// lines, only handshakectl's message in plain words; -log-level debug -log-format json shows
// them as JSON records marked as grpc's.
func TestLogFlags(t *testing.T) {
	bin := testenv.BuildCommand(t, "handshakectl")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().String()
	l.Close()
	call := func(args ...string) string {
		out, err := exec.Command(bin, append(append([]string{"-handshaked", closed, "-timeout", "2s"}, args...), "list")...).CombinedOutput()
		require.Error(t, err, "a call to a closed port succeeded: %s", out)
		return string(out)
	}

	quiet := call()
	assert.NotContains(t, quiet, "logger=grpc", "grpc-go's lines at the default level")
	// The SDK retried the read before it gave up, and says so.
	assert.Contains(t, quiet, "list keys: max retries exhausted: failed after 3 attempts: unavailable:")

	var grpcLines int
	for _, line := range strings.Split(strings.TrimSpace(call("-log-level", "debug", "-log-format", "json")), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["logger"] == "grpc" {
			grpcLines++
		}
	}
	assert.Positive(t, grpcLines, "no grpc-go line as JSON at debug")
}
