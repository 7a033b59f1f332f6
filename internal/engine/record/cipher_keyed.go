package record

import (
	"crypto/tls"
	"fmt"
)

// NewTLS13KeyCipher returns a TLS 1.3 Cipher for suiteID from a write key
// and IV already derived from a traffic secret (RFC 8446 §7.3), whose next
// record has sequence number seq. Without the secret it cannot Update: it
// suits a caller handed only what it needs to open one flight, such as the
// client handshake traffic key that protects the client's Finished. The
// Cipher copies what it needs; the caller may wipe key and iv.
func NewTLS13KeyCipher(suiteID uint16, key, iv []byte, seq uint64) (*Cipher, error) {
	s := lookupSuite(suiteID)
	if s == nil || !s.TLS13 {
		return nil, fmt.Errorf("record: cipher suite %#04x is not a supported TLS 1.3 suite", suiteID)
	}
	if len(key) != s.KeyLen || len(iv) != nonceLen {
		return nil, fmt.Errorf("record: %s needs a %d-byte key and %d-byte IV, got %d and %d",
			tls.CipherSuiteName(suiteID), s.KeyLen, nonceLen, len(key), len(iv))
	}
	aead, err := s.newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("record: %s: %w", tls.CipherSuiteName(suiteID), err)
	}
	c := &Cipher{suite: s, aead: aead, seq: seq}
	copy(c.iv[:], iv)
	return c, nil
}
