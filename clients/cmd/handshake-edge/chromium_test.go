package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestChromium: headless Chromium loads the echo page through the edge over
// TLS 1.3 with X25519MLKEM768, the group it offers first; the page and the
// edge's log both report it.
func TestChromium(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium")
	f := newFixture(t)
	addr, log := f.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
		"--user-data-dir="+t.TempDir(), "--dump-dom", "https://"+addr+"/")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	page := string(out)
	for _, want := range []string{"handshake-edge echo", "GET / HTTP/1.1", "TLS version: TLS 1.3", "Group: X25519MLKEM768", "ALPN: http/1.1", "Chrome/"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if !strings.Contains(log.String(), "group=X25519MLKEM768") {
		t.Errorf("the edge did not log the hybrid group:\n%s", log.String())
	}
}
