package record

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestOpenLengthLimit: a protected record body may be exactly as long as
// RFC 8446 §5.2 (2^14 + 256) or RFC 5246 §6.2.3 (2^14 + 2048) allows; one
// byte more is record_overflow, and whatever is not over the limit goes on
// to authentication.
func TestOpenLengthLimit(t *testing.T) {
	forEachSuite(t, func(t *testing.T, s *Suite) {
		limit := MaxCiphertextTLS12
		if s.TLS13 {
			limit = MaxCiphertextTLS13
		}
		c := newTestCipher(t, s.ID, 0)
		_, _, err := c.Open(ApplicationData, 0x0303, make([]byte, limit))
		assert.ErrorIs(t, err, ErrBadRecordMAC, "a %d-byte body is within the limit", limit)
		_, _, err = c.Open(ApplicationData, 0x0303, make([]byte, limit+1))
		assert.ErrorIs(t, err, ErrRecordOverflow, "a %d-byte body is over the limit", limit+1)
	})
}
