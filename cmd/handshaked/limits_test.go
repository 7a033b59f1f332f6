package main

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLimitFlags: production caps streams and connections by default, the
// per-caller flags reach the config, and a development instance keeps its
// ceilings off.
func TestLimitFlags(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	prod := []string{"-mode", "production", "-tls-cert", "a", "-tls-key", "b", "-client-ca", "c", "-policy", "p"}
	cfg, err := parseConfig(prod, none, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, productionMaxStreams, cfg.maxStreams)
	assert.Equal(t, productionMaxConnections, cfg.maxConnections)
	assert.Zero(t, cfg.maxInFlightPerCaller, "per-caller shares default in the service")

	cfg, err = parseConfig(append(prod, "-max-in-flight-per-caller", "7", "-max-streams-per-caller", "8",
		"-max-handshake-sessions-per-caller", "9", "-stream-idle-timeout", "5s", "-unauthenticated-rate", "3",
		"-max-connections", "100", "-max-handshake-input", "1024"), none, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 7, cfg.maxInFlightPerCaller)
	assert.Equal(t, 8, cfg.maxStreamsPerCaller)
	assert.Equal(t, 9, cfg.maxHandshakeSessionsPerCaller)
	assert.Equal(t, 5*time.Second, cfg.streamIdleTimeout)
	assert.Equal(t, 3.0, cfg.unauthenticatedRate)
	assert.Equal(t, 100, cfg.maxConnections)
	assert.Equal(t, int64(1024), cfg.maxHandshakeInput)

	dev, err := parseConfig(nil, none, io.Discard)
	require.NoError(t, err)
	assert.Zero(t, dev.maxStreams)
	assert.Zero(t, dev.maxConnections)

	_, err = parseConfig([]string{"-max-handshake-input", "0"}, none, io.Discard)
	assert.ErrorContains(t, err, "-max-handshake-input")
}
