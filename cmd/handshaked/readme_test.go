package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEWalkthrough runs the README's curl walkthrough verbatim against a
// fresh development instance (only the port differs), so the documentation
// cannot drift from what the service does.
func TestREADMEWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "openssl"} {
		testenv.LookPath(t, tool)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- walkthrough:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- walkthrough:end -->")
	if !ok || !ok2 {
		t.Fatal("README has no walkthrough block")
	}
	script := strings.TrimSpace(block)
	script = strings.TrimPrefix(script, "```sh")
	script = strings.TrimSuffix(script, "```")

	p := startProcess(t, t.TempDir())
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	const documented = "http://127.0.0.1:7080"
	if !strings.Contains(script, documented) {
		t.Fatalf("walkthrough does not use %s", documented)
	}
	script = strings.ReplaceAll(script, documented, p.restURL)
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s\nserver:\n%s", err, out, p.out())
	}
	for _, want := range []string{"Verified OK", "premaster decrypted: same 48 bytes", "corrupted: 48 other bytes", "404", `"code":3`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, out)
		}
	}
}
