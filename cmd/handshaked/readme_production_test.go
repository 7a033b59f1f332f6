package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEProduction runs the README's production walkthrough verbatim,
// only its ports changed to free ones, in a copy of the source tree: it
// builds the binaries, issues the certificates, starts handshaked in
// production mode and handshake-edge in front of it with mutual TLS, and
// must complete a TLS handshake through the edge, a signature as the edge,
// and the refusal of a call the edge has no right to. Then, in the same
// shell, the "Running several replicas" block that continues it (see
// replicasBlock; one test, so that the tree is copied and built once). It
// logs how long the two took.
func TestREADMEProduction(t *testing.T) {
	for _, tool := range []string{"bash", "go", "openssl", "curl", "grep"} {
		testenv.LookPath(t, tool)
	}
	script := readmeBlock(t, "production")
	for _, port := range []string{":7070", ":7443", ":8443"} {
		require.Contains(t, script, port, "the walkthrough's ports")
		script = strings.ReplaceAll(script, port, ":"+strconv.Itoa(testenv.FreePort(t)))
	}
	script += "\n" + replicasBlock(t)
	start := time.Now()
	clone, got, err := testenv.RunInClone(t, filepath.Join("..", ".."), script)
	took := time.Since(start)
	logs := func() string {
		var b strings.Builder
		logs, _ := filepath.Glob(filepath.Join(clone, "fleet", "*.log"))
		for _, name := range logs {
			l, _ := os.ReadFile(name)
			b.WriteString("\n" + filepath.Base(name) + ":\n" + string(l))
		}
		return b.String()
	}
	require.NoError(t, err, "the README's production walkthrough or replicas block failed:\n%s%s", got, logs())
	t.Logf("the production walkthrough and the replicas block took %v", took.Round(100*time.Millisecond))
	for _, want := range []string{
		`"status":"SERVING"`,           // the service's health over TLS
		"TLS version: TLS 1.3",         // the echo page through handshake-edge
		"Key: web-ec version 1",        // with the key made by the admin
		"Server name: www.example.org", //
		`"signature"`,                  // the edge's REST call
		`permission denied: "spiffe://example.org/edge" needs manage on key "web-ec"`, // the refused call
		`"caller":"spiffe://example.org/edge"`,                                        // and its audit line
	} {
		assert.Contains(t, got, want, "the walkthrough's output")
	}
	audit, err := os.ReadFile(filepath.Join(clone, "fleet", "audit.log"))
	require.NoError(t, err)
	assert.Contains(t, string(audit), `"caller":"spiffe://example.org/edge","peer":"127.0.0.1:`, "the edge's handshakes are audited under its identity")
	assert.Contains(t, string(audit), `"operation":"Handshake.Multiplex"`, "the handshake through the edge ran in the service, on a shared stream")
	checkReplicasOutput(t, got)
}
