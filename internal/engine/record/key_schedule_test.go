package record

import (
	"bytes"
	"crypto"
	"crypto/hkdf"
	"crypto/tls"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExpandLabelAgreesWithHKDF: ExpandLabel equals crypto/hkdf's
// HKDF-Expand over the HkdfLabel for every length up to several hash
// blocks (one HMAC block and beyond), with SHA-256 and SHA-384, and
// TrafficKeys equals two ExpandLabel calls.
func TestExpandLabelAgreesWithHKDF(t *testing.T) {
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		secret := bytes.Repeat([]byte{0x5a}, h.Size())
		for length := 0; length <= 3*h.Size(); length++ {
			info := binary.BigEndian.AppendUint16(nil, uint16(length))
			info = append(info, byte(len("tls13 c hs traffic")))
			info = append(info, "tls13 c hs traffic"...)
			info = append(info, 3, 1, 2, 3)
			want, err := hkdf.Expand(h.New, secret, string(info), length)
			require.NoError(t, err)
			assert.Equal(t, want, ExpandLabel(h, secret, "c hs traffic", []byte{1, 2, 3}, length), "%v, %d bytes", h, length)
		}
	}
	for _, id := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		s := lookupSuite(id)
		secret := bytes.Repeat([]byte{7}, s.Hash.Size())
		key, iv := TrafficKeys(s, secret)
		assert.Equal(t, ExpandLabel(s.Hash, secret, "key", nil, s.KeyLen), key)
		assert.Equal(t, ExpandLabel(s.Hash, secret, "iv", nil, s.FixedIVLen), iv)
		assert.Equal(t, s.KeyLen, cap(key), "no output past the key")
	}
}
