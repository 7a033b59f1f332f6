package main

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientHelloTimeoutFlag: -client-hello-timeout closes a silent
// connection long before -handshake-timeout would.
func TestClientHelloTimeoutFlag(t *testing.T) {
	f := newFixture(t)
	addr, _ := f.start(t, "-handshake-timeout", "1m", "-client-hello-timeout", "100ms", "-max-pending", "8", "-max-handshakes", "2")
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	// Less than the default ClientHello timeout (5 s).
	require.NoError(t, c.SetReadDeadline(time.Now().Add(3*time.Second)))
	b, err := io.ReadAll(c)
	assert.NoError(t, err, "the silent connection was not closed at the ClientHello timeout")
	assert.Empty(t, b)
	// The edge still serves.
	resp, err := f.httpClient().Get("https://" + addr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 200, resp.StatusCode)
}
