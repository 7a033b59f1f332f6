package authz

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const examplePolicy = `{
  "grants": [
    {"identities": ["spiffe://example.org/edge"], "rights": ["use"], "keys": ["edge-rsa", "web-*"]},
    {"identities": ["spiffe://example.org/ops/*"], "rights": ["manage"], "labels": {"team": "edge"}},
    {"identities": ["ci.example.org"], "rights": ["use", "manage"], "keys": ["ci-*"], "labels": {"env": "test"}},
    {"identities": ["root"], "rights": ["admin"]},
    {"identities": ["reader"], "rights": ["use"], "keys": ["*"]}
  ]
}`

func TestRights(t *testing.T) {
	p, err := Parse([]byte(examplePolicy))
	if err != nil {
		t.Fatal(err)
	}
	edgeLabels := map[string]string{"team": "edge"}
	for _, tc := range []struct {
		identity string
		key      Key
		want     Right
	}{
		{"spiffe://example.org/edge", Key{ID: "edge-rsa"}, Use},
		{"spiffe://example.org/edge", Key{ID: "web-1"}, Use},
		{"spiffe://example.org/edge", Key{ID: "web"}, 0},        // prefix "web-" needs the dash
		{"spiffe://example.org/edge", Key{ID: "edge-rsa-2"}, 0}, // a literal is not a prefix
		{"spiffe://example.org/edge/x", Key{ID: "edge-rsa"}, 0}, // neither is a literal identity
		{"spiffe://example.org/ops/alice", Key{ID: "k", Labels: edgeLabels}, Manage},
		{"spiffe://example.org/ops/alice", Key{ID: "k", Labels: map[string]string{"team": "core"}}, 0},
		{"spiffe://example.org/ops/alice", Key{ID: "k"}, 0},
		{"spiffe://example.org/opsx", Key{ID: "k", Labels: edgeLabels}, 0},
		{"ci.example.org", Key{ID: "ci-1", Labels: map[string]string{"env": "test"}}, Use | Manage},
		{"ci.example.org", Key{ID: "ci-1", Labels: map[string]string{"env": "prod"}}, 0}, // keys AND labels
		{"ci.example.org", Key{ID: "cd-1", Labels: map[string]string{"env": "test"}}, 0},
		{"root", Key{ID: "anything"}, Use | Manage | Admin},
		{"root", Key{}, Use | Manage | Admin},
		{"reader", Key{ID: "anything"}, Use},
		{"nobody", Key{ID: "edge-rsa"}, 0}, // default deny
		{"", Key{ID: "edge-rsa"}, 0},       // unauthenticated has nothing
	} {
		if got := p.Rights(tc.identity, tc.key); got != tc.want {
			t.Errorf("Rights(%q, %q %v) = %v, want %v", tc.identity, tc.key.ID, tc.key.Labels, got, tc.want)
		}
	}
	if !p.Allows("reader", Key{ID: "x"}, Use|Manage) || p.Allows("reader", Key{ID: "x"}, Manage) {
		t.Error("Allows must mean: at least one of the wanted rights")
	}
	if p.Allows("ci.example.org", Key{ID: "ci-1", Labels: map[string]string{"env": "test"}}, Admin) {
		t.Error("use+manage is not admin")
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ policy, want string }{
		{`{"grants":[{"identities":["a"],"rights":["use"]}]}`, "name keys or labels"},
		{`{"grants":[{"identities":["a"],"rights":["admin"],"keys":["k"]}]}`, "admin"},
		{`{"grants":[{"identities":["a"],"rights":["admin","use"]}]}`, "admin"},
		{`{"grants":[{"identities":["a"],"rights":["sudo"],"keys":["k"]}]}`, "unknown right"},
		{`{"grants":[{"identities":["a"],"rights":[],"keys":["k"]}]}`, "no rights"},
		{`{"grants":[{"identities":[],"rights":["use"],"keys":["k"]}]}`, "no identities"},
		{`{"grants":[{"identities":[""],"rights":["use"],"keys":["k"]}]}`, "identity"},
		{`{"grants":[{"identities":["a*b"],"rights":["use"],"keys":["k"]}]}`, "identity"},
		{`{"grants":[{"identities":["a"],"rights":["use"],"keys":["K_1"]}]}`, "key"},
		{`{"grants":[{"identities":["a"],"rights":["use"],"keys":["a*b"]}]}`, "key"},
		{`{"grants":[{"identities":["a"],"right":["use"],"keys":["k"]}]}`, "unknown field"},
		{`{"grants":[]} {}`, "trailing"},
		{`[]`, "policy"},
	} {
		if _, err := Parse([]byte(tc.policy)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error with %q", tc.policy, err, tc.want)
		}
	}
	if _, err := Parse([]byte(strings.Repeat(" ", maxPolicyBytes+1))); err == nil {
		t.Error("oversized policy accepted")
	}
}

func TestStoreReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"grants":[{"identities":["a"],"rights":["use"],"keys":["k"]}]}`)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := s.Policy()
	if !old.Allows("a", Key{ID: "k"}, Use) {
		t.Fatal("grant not loaded")
	}
	write(`{"grants":[{"identities":["b"],"rights":["use"],"keys":["k"]}]}`)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if s.Policy().Allows("a", Key{ID: "k"}, Use) || !s.Policy().Allows("b", Key{ID: "k"}, Use) {
		t.Fatal("reload did not take effect")
	}
	if !old.Allows("a", Key{ID: "k"}, Use) {
		t.Fatal("a policy already handed out changed")
	}
	// A broken file keeps the policy in force.
	write(`{"grants":[{"identities":["c"],`)
	if err := s.Reload(); err == nil {
		t.Fatal("broken policy accepted")
	}
	if !s.Policy().Allows("b", Key{ID: "k"}, Use) {
		t.Fatal("broken reload dropped the policy in force")
	}
	// So does a world-writable one: whoever can write it owns every key.
	write(`{"grants":[{"identities":["c"],"rights":["admin"]}]}`)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("world-writable policy: %v", err)
	}
	if s.Policy().Allows("c", Key{ID: "k"}, Use) {
		t.Fatal("world-writable policy took effect")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("missing policy file accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(examplePolicy))
	f.Add([]byte(`{"grants":[{"identities":["*"],"rights":["use"],"keys":["*"]}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses evaluates without panicking, and never grants
		// the unauthenticated caller anything.
		if r := p.Rights("", Key{ID: "k"}); r != 0 {
			t.Fatalf("unauthenticated caller got %v", r)
		}
		p.Rights("spiffe://x/y", Key{ID: "k", Labels: map[string]string{"a": "b"}})
	})
}
