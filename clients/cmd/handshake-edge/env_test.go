package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestEnvironmentAndJSONLog runs the built handshake-edge configured by
// environment variables only and checks that they took effect (the
// service, the key, -max-version 1.2 and -log-level debug) and that every
// line it writes is JSON, grpc-go's among them; then that a bad value in a
// variable stops it with the variable's name.
func TestEnvironmentAndJSONLog(t *testing.T) {
	f := newFixture(t)
	bin := testenv.BuildCommand(t, "handshake-edge")
	cmd := exec.Command(bin)
	cmd.Env = append(cmd.Environ(), "HANDSHAKE_EDGE_HANDSHAKED="+f.srv.GRPCAddr, "HANDSHAKE_EDGE_LISTEN=127.0.0.1:0",
		"HANDSHAKE_EDGE_KEY="+f.ecdsa.ID, "HANDSHAKE_EDGE_MAX_VERSION=1.2", "HANDSHAKE_EDGE_LOG_LEVEL=debug")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	var log testenv.Buffer
	listening := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.Write(append(sc.Bytes(), '\n'))
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "handshake-edge listening" {
				listening <- rec.Addr
			}
		}
	}()
	var addr string
	select {
	case addr = <-listening:
	case <-done:
		require.FailNow(t, "handshake-edge exited", log.String())
	case <-time.After(30 * time.Second):
		require.FailNow(t, "handshake-edge did not listen", log.String())
	}

	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool})
	require.NoError(t, err, "log:\n%s", log.String())
	assert.Equal(t, uint16(tls.VersionTLS12), conn.ConnectionState().Version, "HANDSHAKE_EDGE_MAX_VERSION not applied")
	conn.Close()
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	<-done

	var grpcLines, debugLines int
	for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "not a JSON line: %q", line)
		if rec["logger"] == "grpc" {
			grpcLines++
		}
		if rec["level"] == "DEBUG" {
			debugLines++
		}
	}
	assert.Positive(t, grpcLines, "no grpc-go line:\n%s", log.String())
	assert.Positive(t, debugLines, "HANDSHAKE_EDGE_LOG_LEVEL not applied:\n%s", log.String())

	bad := exec.Command(bin)
	bad.Env = append(bad.Environ(), "HANDSHAKE_EDGE_MAX_HANDSHAKES=many")
	out, err := bad.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "HANDSHAKE_EDGE_MAX_HANDSHAKES")
}
