package authz

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEPolicyExample parses the README's example policy (Security
// model) and checks that it grants what the README's text around it says:
// use of the web-* keys to the edge, manage of the team=edge keys to every
// ops identity, use and manage of the ci-* keys to CI, everything to the
// security admin, and nothing to anyone else.
func TestREADMEPolicyExample(t *testing.T) {
	p, err := Parse([]byte(testenv.DocBlock(t, filepath.Join("..", "..", "README.md"), "policy-example")))
	require.NoError(t, err, "the README's example policy")
	edge := map[string]string{"team": "edge"}
	for _, tc := range []struct {
		identity string
		key      Key
		want     Right
	}{
		{"spiffe://example.org/edge", Key{ID: "web-1"}, Use},
		{"spiffe://example.org/edge", Key{ID: "ci-1"}, 0},
		{"spiffe://example.org/ops/alice", Key{ID: "any", Labels: edge}, Manage},
		{"spiffe://example.org/ops/alice", Key{ID: "web-1"}, 0},
		{"ci.example.org", Key{ID: "ci-1"}, Use | Manage},
		{"security-admin.example.org", Key{ID: "anything"}, Use | Manage | Admin},
		{"nobody.example.org", Key{ID: "web-1"}, 0},
	} {
		assert.Equal(t, tc.want, p.Rights(tc.identity, tc.key), "%s on %s %v", tc.identity, tc.key.ID, tc.key.Labels)
	}
}
