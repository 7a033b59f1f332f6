package record

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	_ "crypto/sha256" // registers crypto.SHA256 for Suite.Hash
	_ "crypto/sha512" // registers crypto.SHA384 for Suite.Hash
	"crypto/tls"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// Suite describes the record-protection half of a supported cipher suite:
// the AEAD, its key and IV sizes, and the hash of the PRF (TLS 1.2) or HKDF
// (TLS 1.3). The handshake engine adds the key-exchange half.
type Suite struct {
	// ID is the IANA cipher suite number, as in crypto/tls.
	ID uint16
	// KeyLen is the AEAD key length in bytes.
	KeyLen int
	// FixedIVLen is the length of the IV derived along with the key: the
	// 4-byte salt of TLS 1.2 AES-GCM (RFC 5288 §3), otherwise the 12-byte
	// mask XORed with the sequence number (RFC 7905 §2, RFC 8446 §5.3).
	FixedIVLen int
	// ExplicitNonceLen is the per-record nonce sent in front of each TLS 1.2
	// AES-GCM record body (RFC 5288 §3); 0 for the other suites.
	ExplicitNonceLen int
	// Hash is the PRF hash (TLS 1.2, RFC 5246 §5) or the HKDF and transcript
	// hash (TLS 1.3, RFC 8446 §7.1).
	Hash crypto.Hash
	// TLS13 reports a TLS 1.3 suite.
	TLS13 bool

	newAEAD func(key []byte) (cipher.AEAD, error)
}

func newAESGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// suites lists the supported suites; the engine decides preference order.
var suites = []Suite{
	// TLS 1.3 (RFC 8446 §B.4).
	{ID: tls.TLS_AES_128_GCM_SHA256, KeyLen: 16, FixedIVLen: 12, Hash: crypto.SHA256, TLS13: true, newAEAD: newAESGCM},
	{ID: tls.TLS_AES_256_GCM_SHA384, KeyLen: 32, FixedIVLen: 12, Hash: crypto.SHA384, TLS13: true, newAEAD: newAESGCM},
	{ID: tls.TLS_CHACHA20_POLY1305_SHA256, KeyLen: 32, FixedIVLen: 12, Hash: crypto.SHA256, TLS13: true, newAEAD: chacha20poly1305.New},

	// TLS 1.2 AES-GCM (RFC 5288, RFC 5289).
	{ID: tls.TLS_RSA_WITH_AES_128_GCM_SHA256, KeyLen: 16, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA256, newAEAD: newAESGCM},
	{ID: tls.TLS_RSA_WITH_AES_256_GCM_SHA384, KeyLen: 32, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA384, newAEAD: newAESGCM},
	{ID: tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, KeyLen: 16, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA256, newAEAD: newAESGCM},
	{ID: tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, KeyLen: 32, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA384, newAEAD: newAESGCM},
	{ID: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, KeyLen: 16, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA256, newAEAD: newAESGCM},
	{ID: tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, KeyLen: 32, FixedIVLen: 4, ExplicitNonceLen: 8, Hash: crypto.SHA384, newAEAD: newAESGCM},

	// TLS 1.2 ChaCha20-Poly1305 (RFC 7905).
	{ID: tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, KeyLen: 32, FixedIVLen: 12, Hash: crypto.SHA256, newAEAD: chacha20poly1305.New},
	{ID: tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, KeyLen: 32, FixedIVLen: 12, Hash: crypto.SHA256, newAEAD: chacha20poly1305.New},
}

func lookupSuite(id uint16) *Suite {
	for i := range suites {
		if suites[i].ID == id {
			return &suites[i]
		}
	}
	return nil
}

// SuiteByID returns the supported suite with the given ID. The result is a
// copy: changing it does not affect this package.
func SuiteByID(id uint16) (*Suite, bool) {
	s := lookupSuite(id)
	if s == nil {
		return nil, false
	}
	c := *s
	return &c, true
}

// suiteNames holds crypto/tls's names of every cipher suite it knows,
// secure and insecure.
var suiteNames = sync.OnceValue(func() map[uint16]string {
	names := make(map[uint16]string)
	for _, list := range [][]*tls.CipherSuite{tls.CipherSuites(), tls.InsecureCipherSuites()} {
		for _, s := range list {
			names[s.ID] = s.Name
		}
	}
	return names
})

// SuiteName is tls.CipherSuiteName(id) without its cost: that builds
// crypto/tls's lists of suites again on every call, and the trace of every
// ClientHello names each suite the client offers.
func SuiteName(id uint16) string {
	if name, ok := suiteNames()[id]; ok {
		return name
	}
	return tls.CipherSuiteName(id)
}
