package main

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// jsonLines decodes every line of a process's log; one that is not a JSON
// object fails the test.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "not a JSON log line: %q\nlog:\n%s", line, out)
		recs = append(recs, rec)
	}
	return recs
}

// TestProductionLogsJSON: a production instance logs JSON lines by
// default, at info and above.
func TestProductionLogsJSON(t *testing.T) {
	s := newProdSetup(t)
	p := startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	recs := jsonLines(t, p.out())
	var serving bool
	for _, rec := range recs {
		assert.NotEqual(t, "DEBUG", rec["level"], "debug line at the default level: %v", rec)
		serving = serving || rec["msg"] == "handshaked serving"
	}
	assert.True(t, serving, "no serving line:\n%s", p.out())
}

// TestLogFlags: -log-format json and -log-level debug turn a development
// instance's log into JSON lines with debug records, grpc-go's own among
// them, marked as such; nothing reaches stderr in another format.
func TestLogFlags(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-log-format", "json", "-log-level", "debug")
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	_, err := p.client(t).ListKeys(context.Background(), &pb.ListKeysRequest{})
	require.NoError(t, err)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	<-p.exited
	var grpcLines, debugLines int
	var devWarning bool
	for _, rec := range jsonLines(t, p.out()) {
		if rec["logger"] == "grpc" {
			grpcLines++
		}
		if rec["level"] == "DEBUG" {
			debugLines++
		}
		devWarning = devWarning || (rec["level"] == "WARN" && strings.Contains(rec["msg"].(string), "DEVELOPMENT MODE"))
	}
	assert.Positive(t, grpcLines, "no grpc-go line:\n%s", p.out())
	assert.Positive(t, debugLines, "no debug line:\n%s", p.out())
	assert.True(t, devWarning, "no development-mode warning:\n%s", p.out())

	bad := startProcess(t, t.TempDir(), "-log-format", "xml")
	assert.Contains(t, waitExit(t, bad), "want json or text")
}
