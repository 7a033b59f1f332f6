// Package rest_test checks the REST guide in README.md: it covers every
// operation of the OpenAPI document, and its curl walkthrough runs against
// a real service.
package rest_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

// TestMain fails the run when a test leaves files outside its t.TempDir().
func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func guide(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	return string(b)
}

// TestGuideCoversOpenAPI: every method and path of the OpenAPI document
// appears in the guide as "METHOD /path".
func TestGuideCoversOpenAPI(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "gen", "openapiv2", "handshaked.swagger.json"))
	require.NoError(t, err)
	var doc struct {
		Paths map[string]map[string]json.RawMessage
	}
	require.NoError(t, json.Unmarshal(b, &doc))
	text := guide(t)
	for path, methods := range doc.Paths {
		for method := range methods {
			m := strings.ToUpper(method)
			// The guide may group sibling verbs: ":disable|:enable|:destroy".
			verb := ""
			if i := strings.LastIndex(path, ":"); i > 0 && !strings.Contains(path[i:], "/") {
				verb = path[i:]
				path = path[:i]
			}
			re := regexp.MustCompile(regexp.QuoteMeta(m+" "+path) + `(` + regexp.QuoteMeta(verb) + `|[^\s]*` + regexp.QuoteMeta(verb) + `)`)
			if verb == "" {
				re = regexp.MustCompile(regexp.QuoteMeta(m+" "+path) + `[\s(?]`)
			}
			assert.Regexp(t, re, text, "the guide does not show %s %s%s", m, path, verb)
		}
	}
}

// TestRESTGuide runs the guide's walkthrough against a service. Its
// mktemp -d lands in the test's own temporary directory.
func TestRESTGuide(t *testing.T) {
	for _, tool := range []string{"curl", "jq", "openssl", "bash"} {
		testenv.LookPath(t, tool)
	}
	text := guide(t)
	start := strings.Index(text, "<!-- rest:begin -->\n```sh\n")
	end := strings.Index(text, "```\n<!-- rest:end -->")
	require.True(t, start >= 0 && end > start, "no walkthrough block in the guide")
	script := text[start+len("<!-- rest:begin -->\n```sh\n") : end]
	srv := servicetest.Start(t, service.Options{Tickets: &service.TicketOptions{Deployment: "rest"}})
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "API="+srv.RESTURL, "TMPDIR="+t.TempDir())
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "walkthrough:\n%s", out)
	t.Logf("walkthrough output:\n%s", out)
	for _, want := range []string{
		`{"id":"rest-ec","primaryVersion":1}`, `{"id":"rest-rsa","imported":true}`, `{"chain":1}`,
		"Verified OK", "Signature Verified Successfully", "\nbatch-1\n",
		`["KEY_VERSION_STATE_DESTROYED","KEY_VERSION_STATE_ENABLED"]`, "\n400\n",
		`{"accepted":false}`, `{"state":"HANDSHAKE_STATE_FAILED"`, `{"state":"HANDSHAKE_STATE_NEED_INPUT","expireTime":true}`, "\n404\n",
		`{"kekId":16,"retiringKekId":""}`, `{"staleRecords":0,"retiringKekId":""}`, "the snapshot was altered or truncated",
	} {
		assert.Contains(t, string(out), want, "walkthrough output")
	}
}
