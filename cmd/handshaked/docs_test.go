package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// apache2SHA256 is the SHA-256 of the standard text of the Apache License
// 2.0 (https://www.apache.org/licenses/LICENSE-2.0.txt).
const apache2SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

// TestLicense: the repository's LICENSE is the Apache License 2.0, word for
// word.
func TestLicense(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "LICENSE"))
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	assert.Equal(t, apache2SHA256, hex.EncodeToString(sum[:]), "LICENSE is not the standard Apache-2.0 text")
}

// TestSecurityPolicy: SECURITY.md says how to report privately, what is in
// scope and which versions are supported, and its link to the README's
// Security model lands on a heading that exists.
func TestSecurityPolicy(t *testing.T) {
	policy, err := os.ReadFile(filepath.Join("..", "..", "SECURITY.md"))
	require.NoError(t, err)
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	for _, heading := range []string{"## Reporting a vulnerability", "## Supported versions", "## In scope", "## What handshaked promises about secrets"} {
		assert.Contains(t, string(policy), heading)
	}
	assert.Contains(t, string(policy), "https://github.com/handshaked/handshaked/security/advisories/new")
	for _, area := range []string{"**Key handling**", "**The TLS engine**", "**Authorization**"} {
		assert.Contains(t, string(policy), area, "scope")
	}
	require.Contains(t, string(policy), "(README.md#security-model)")
	assert.Regexp(t, regexp.MustCompile(`(?m)^## Security model$`), string(readme), "the README has no Security model heading for SECURITY.md's link")
}
