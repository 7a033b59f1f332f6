package record

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSuiteName: every code point gets crypto/tls's name for it, known
// suites (secure or not) and unknown ones alike.
func TestSuiteName(t *testing.T) {
	for id := range 1 << 16 {
		require.Equal(t, tls.CipherSuiteName(uint16(id)), SuiteName(uint16(id)), "suite %#04x", id)
	}
}
