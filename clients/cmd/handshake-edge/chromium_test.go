package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestChromium: headless Chromium loads the echo page through the edge over
// TLS 1.3 with X25519MLKEM768, the group it offers first; the page and the
// edge's log both report it.
func TestChromium(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium")
	f := newFixture(t)
	addr, log := f.start(t)
	page := dumpDOM(t, chromium, "https://"+addr+"/")
	for _, want := range []string{"handshake-edge echo", "GET / HTTP/1.1", "TLS version: TLS 1.3", "Group: X25519MLKEM768", "ALPN: http/1.1", "Chrome/"} {
		assert.Contains(t, page, want)
	}
	assert.Contains(t, log.String(), "group=X25519MLKEM768", "the edge did not log the hybrid group")
}

// TestChromiumResumes: headless Chromium loads the resumption page, which
// fetches the echo page again over new connections: they resume the
// session of the first (the page and the edge's log say so).
func TestChromiumResumes(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium")
	f := newTicketFixture(t)
	addr, log := f.start(t)
	page := dumpDOM(t, chromium, "https://"+addr+"/resumption")
	first, next, ok := strings.Cut(page, `id="next"`)
	require.True(t, ok, page)
	assert.Contains(t, first, "Resumed: no (full handshake)", page)
	assert.Contains(t, next, "connection 3:", page)
	assert.Contains(t, next, "TLS version: TLS 1.3", page)
	assert.Contains(t, next, "Resumed: yes", page)
	assert.Contains(t, log.String(), "resumed=true", log.String())
}

// dumpDOM loads url in a new headless Chromium and returns the DOM once the
// page's scripts have run.
func dumpDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=20000", "--dump-dom", url)
	cmd.Env = testenv.HomeIn(t.TempDir())
	out, err := cmd.Output()
	require.NoError(t, err, "chromium:\n%s", out)
	return string(out)
}
