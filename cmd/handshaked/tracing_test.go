package main

import (
	"context"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/tracing/tracingtest"
)

// TestTracingFlags: with -otlp-endpoint handshaked exports a span per call,
// named after the process, to an OTLP receiver, and sends what is left at
// shutdown. (internal/service's TestTracingHandshake checks the spans of a
// handshake.)
func TestTracingFlags(t *testing.T) {
	rcv := tracingtest.Start(t)
	p := startProcess(t, t.TempDir(), "-otlp-endpoint", rcv.Addr, "-otlp-insecure")
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	_, err := p.client(t).ListKeys(context.Background(), &pb.ListKeysRequest{})
	require.NoError(t, err)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-p.exited, p.out())
	var found bool
	for _, sp := range rcv.Spans() {
		found = found || sp.Name == "handshake.v1.KeyVault/ListKeys" && sp.Service == "handshaked"
	}
	assert.True(t, found, "no ListKeys span from handshaked: %+v\n%s", rcv.Spans(), p.out())

	bad := startProcess(t, t.TempDir(), "-otlp-endpoint", rcv.Addr, "-trace-sample-ratio", "2")
	assert.Contains(t, waitExit(t, bad), "want 0 to 1")
}
