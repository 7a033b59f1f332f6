package record

import (
	"crypto"
	"crypto/tls"
	"testing"
)

// benchSuites covers each AEAD construction: the three TLS 1.3 suites and
// the two TLS 1.2 nonce schemes (the key exchange does not matter here).
var benchSuites = []uint16{
	tls.TLS_AES_128_GCM_SHA256,
	tls.TLS_AES_256_GCM_SHA384,
	tls.TLS_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

const benchSize = 16 << 10 // one full record

func BenchmarkSeal(b *testing.B) {
	for _, id := range benchSuites {
		b.Run(tls.CipherSuiteName(id), func(b *testing.B) {
			c := newTestCipher(b, id, 0)
			plaintext := make([]byte, benchSize)
			dst := make([]byte, 0, benchSize+c.Overhead())
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if dst, err = c.Seal(dst[:0], ApplicationData, plaintext, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen includes restoring the ciphertext (a 16 KiB copy) before
// each in-place Open.
func BenchmarkOpen(b *testing.B) {
	for _, id := range benchSuites {
		b.Run(tls.CipherSuiteName(id), func(b *testing.B) {
			c := newTestCipher(b, id, 0)
			record, err := newTestCipher(b, id, 0).Seal(nil, ApplicationData, make([]byte, benchSize), 0)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, len(record))
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, record)
				c.seq = 0
				typ, version, body, _, err := Parse(buf, MaxCiphertextTLS13)
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := c.Open(typ, version, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkKeySchedule: what deriving record protection from TLS 1.3
// traffic secrets costs: one HKDF-Expand-Label, and a whole Cipher (key,
// IV, AES-GCM), as an edge builds two per connection.
func BenchmarkKeySchedule(b *testing.B) {
	secret := make([]byte, 32)
	b.Run("ExpandLabel", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ExpandLabel(crypto.SHA256, secret, "c ap traffic", secret, 32)
		}
	})
	b.Run("NewTLS13Cipher", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := NewTLS13Cipher(tls.TLS_AES_128_GCM_SHA256, secret, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPRF12 derives what a resumed TLS 1.2 handshake derives with
// the PRF: a key block (AES-128-GCM: 40 bytes) and two Finished (12 bytes
// each).
func BenchmarkPRF12(b *testing.B) {
	master, seed := make([]byte, 48), make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		PRF12(crypto.SHA256, master, "key expansion", seed, 40)
		PRF12(crypto.SHA256, master, "server finished", seed[:32], 12)
		PRF12(crypto.SHA256, master, "client finished", seed[:32], 12)
	}
}
