package main

import (
	"bytes"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var healthLine = regexp.MustCompile(`health_addr=(\S+)`)

func noEnv(string) (string, bool) { return "", false }

// TestHealthCommand: -health-addr serves plain-text gRPC health, and
// "handshaked health" exits 0 with SERVING against it, 1 against a port
// nothing serves, 2 on a usage mistake; the address also comes from
// HANDSHAKED_HEALTH_ADDR, as in the container image.
func TestHealthCommand(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-health-addr", "127.0.0.1:0")
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	var addr string
	require.Eventually(t, func() bool {
		m := healthLine.FindStringSubmatch(p.out())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, 10*time.Second, 10*time.Millisecond, "no health_addr in the log:\n%s", p.out())

	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, healthCommand([]string{"-addr", addr}, noEnv, &stdout, &stderr), "%s", stderr.String())
	assert.Equal(t, "SERVING\n", stdout.String())
	stdout.Reset()
	env := func(k string) (string, bool) { return addr, k == "HANDSHAKED_HEALTH_ADDR" }
	assert.Equal(t, 0, healthCommand(nil, env, &stdout, &stderr), "%s", stderr.String())

	// A port that nothing serves any more.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := lis.Addr().String()
	lis.Close()
	stderr.Reset()
	assert.Equal(t, 1, healthCommand([]string{"-addr", closed, "-timeout", "2s"}, noEnv, &stdout, &stderr))
	assert.Contains(t, stderr.String(), closed)

	assert.Equal(t, 2, healthCommand([]string{"extra"}, noEnv, &stdout, &stderr))
	assert.Equal(t, 0, healthCommand([]string{"-h"}, noEnv, &stdout, &stderr))

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.exited:
		assert.NoError(t, err, "%s", p.out())
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", p.out())
	}
	assert.False(t, strings.Contains(p.out(), "level=ERROR"), "%s", p.out())
}

// TestHealthAddrLoopbackInDevelopmentMode: a development instance refuses
// to serve even health beyond loopback.
func TestHealthAddrLoopbackInDevelopmentMode(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-health-addr", "0.0.0.0:0")
	assert.Contains(t, waitExit(t, p), "not a loopback address")
}
