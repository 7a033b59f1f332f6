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

	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/testenv"
)

func guide(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestGuideCoversOpenAPI: every method and path of the OpenAPI document
// appears in the guide as "METHOD /path".
func TestGuideCoversOpenAPI(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "gen", "openapiv2", "handshaked.swagger.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
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
			if !re.MatchString(text) {
				t.Errorf("the guide does not show %s %s%s", m, path, verb)
			}
		}
	}
}

// TestRESTGuide runs the guide's walkthrough against a service.
func TestRESTGuide(t *testing.T) {
	for _, tool := range []string{"curl", "jq", "openssl", "bash"} {
		testenv.LookPath(t, tool)
	}
	text := guide(t)
	start := strings.Index(text, "<!-- rest:begin -->\n```sh\n")
	end := strings.Index(text, "```\n<!-- rest:end -->")
	if start < 0 || end < start {
		t.Fatal("no walkthrough block in the guide")
	}
	script := text[start+len("<!-- rest:begin -->\n```sh\n") : end]
	srv := servicetest.Start(t, service.Options{})
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "API="+srv.RESTURL)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough: %v\n%s", err, out)
	}
	t.Logf("walkthrough output:\n%s", out)
	for _, want := range []string{
		`{"id":"rest-ec","primaryVersion":1}`, `{"id":"rest-rsa","imported":true}`, `{"chain":1}`,
		"Verified OK", "Signature Verified Successfully",
		`["KEY_VERSION_STATE_DESTROYED","KEY_VERSION_STATE_ENABLED"]`, "\n400\n",
		`{"state":"HANDSHAKE_STATE_FAILED"`, `{"state":"HANDSHAKE_STATE_NEED_INPUT","expireTime":true}`, "\n404\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, out)
		}
	}
}
