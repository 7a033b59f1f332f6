package engine

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestValidHostnameEdges pins which server_name values are host names (RFC
// 6066, Section 3: LDH labels, no trailing dot, no IP literal) at the edges
// of each character range and length limit, beside TestValidHostname's
// ordinary cases.
func TestValidHostnameEdges(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	for name, want := range map[string]bool{
		"0.example":      true, // each end of each character range
		"9.example":      true,
		"a.example":      true,
		"z.example":      true,
		"A.EXAMPLE":      true,
		"Z.example":      true,
		"a_b.example":    true,
		"xn--nxa.test":   true,
		"10.0.0.1a":      true, // not all digits
		label63:          true,
		name253:          true,
		name253 + "c":    false, // 254 bytes
		"1234":           false,
		".example.com":   false,
		"a-.example":     false,
		"a/b.example":    false, // '/' is just below '0'
		"a:b.example":    false, // ':' is just above '9'
		"a@b.example":    false, // '@' is just below 'A'
		"a[b.example":    false, // '[' is just above 'Z'
		"a`b.example":    false, // '`' is just below 'a'
		"a{b.example":    false, // '{' is just above 'z'
		"caf\xc3\xa9.fr": false,
		"[::1]":          false,
	} {
		assert.Equal(t, want, validHostname(name), "%q", name)
	}
}
