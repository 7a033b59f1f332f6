package engine

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TestEarlyDataRecordLimit: early data the server skips unread is still
// framed under TLS 1.3's limit (RFC 8446, Section 5.2: 2^14 + 256 bytes of
// protected record), before any key is in place (after a
// HelloRetryRequest, Section 4.2.10) and after: a record at the limit is
// skipped, one byte more is record_overflow.
func TestEarlyDataRecordLimit(t *testing.T) {
	p := getPKI(t)
	cfg := serverConfig(p.p256)
	real13 := parseHello(t, captureClientHello(t, clientConfig(p, "p256.example.com")))
	// One record each (record.Append would split them at 2^14).
	oneRecord := func(n int) []byte {
		return append([]byte{byte(record.ApplicationData), 3, 3, byte(n >> 8), byte(n)}, bytes.Repeat([]byte{0xee}, n)...)
	}
	for name, retry := range map[string]bool{"after HelloRetryRequest": true, "after ServerHello": false} {
		t.Run(name, func(t *testing.T) {
			m := *real13
			m.extensions = append(slices.Clone(m.extensions), extensionEarlyData, extensionPSKModes, extensionPreSharedKey)
			m.pskModes = []uint8{1}
			if retry {
				m.keyShares = nil // no share: the server asks for one
			}
			h, err := NewHandshake(&cfg)
			require.NoError(t, err)
			ctx := context.Background()
			res := h.Step(ctx, p.keys, append(helloRecord(&m), 20, 3, 3, 0, 1, 1))
			require.Equal(t, NeedInput, res.State, "%v %s", res.AlertDescription, res.Reason)
			require.True(t, h.skipEarlyData, "the server skips the early data")
			require.Equal(t, retry, h.readCipher == nil, "keys in place")

			res = h.Step(ctx, p.keys, oneRecord(record.MaxCiphertextTLS13))
			require.Equal(t, NeedInput, res.State, "a record at the limit: %v %s", res.AlertDescription, res.Reason)
			require.Equal(t, record.MaxCiphertextTLS13, h.skippedEarlyData, "the record at the limit was skipped")
			expectAlert(t, h.Step(ctx, p.keys, oneRecord(record.MaxCiphertextTLS13+1)), alertRecordOverflow)
		})
	}
}
