package engine

import (
	"crypto/tls"
	"slices"
)

// keyExchange is the key-exchange half of a TLS 1.2 cipher suite; the record
// package holds the AEAD half.
type keyExchange uint8

const (
	kexRSA        keyExchange = iota + 1 // RSA-encrypted premaster, RFC 5246, Section 7.4.7.1
	kexECDHERSA                          // RFC 8422 ECDHE with an RSA signature
	kexECDHEECDSA                        // RFC 8422 ECDHE with an ECDSA or Ed25519 signature
)

// cipherSuite12 pairs a TLS 1.2 suite with its key exchange.
type cipherSuite12 struct {
	id  uint16
	kex keyExchange
}

// cipherSuites12 lists the TLS 1.2 suites the engine implements. The order
// is the default server preference: forward secrecy first, AES-GCM before
// ChaCha20-Poly1305 (see preferChaCha), RSA key exchange last so that it is
// only chosen for clients that offer nothing else.
var cipherSuites12 = []cipherSuite12{
	{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, kexECDHEECDSA},
	{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, kexECDHERSA},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, kexECDHEECDSA},
	{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, kexECDHERSA},
	{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, kexECDHEECDSA},
	{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, kexECDHERSA},
	{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, kexRSA},
	{tls.TLS_RSA_WITH_AES_256_GCM_SHA384, kexRSA},
}

// defaultCipherSuitesTLS13 is the default TLS 1.3 preference (RFC 8446,
// Section 9.1 makes AES-128-GCM mandatory).
var defaultCipherSuitesTLS13 = []uint16{
	tls.TLS_AES_128_GCM_SHA256,
	tls.TLS_AES_256_GCM_SHA384,
	tls.TLS_CHACHA20_POLY1305_SHA256,
}

var defaultCipherSuites12 = func() []uint16 {
	ids := make([]uint16, len(cipherSuites12))
	for i, s := range cipherSuites12 {
		ids[i] = s.id
	}
	return ids
}()

func suite12ByID(id uint16) (cipherSuite12, bool) {
	i := slices.IndexFunc(cipherSuites12, func(s cipherSuite12) bool { return s.id == id })
	if i < 0 {
		return cipherSuite12{}, false
	}
	return cipherSuites12[i], true
}

func isChaCha(id uint16) bool {
	return id == tls.TLS_CHACHA20_POLY1305_SHA256 ||
		id == tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 ||
		id == tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
}

// preferChaCha reports whether the client lists ChaCha20-Poly1305 before
// any AES-GCM suite, which clients without AES hardware do to say it is much
// faster for them; the server's order otherwise wins.
func preferChaCha(clientSuites []uint16) bool {
	for _, id := range clientSuites {
		if isChaCha(id) {
			return true
		}
		if _, ok := suite12ByID(id); ok || slices.Contains(defaultCipherSuitesTLS13, id) {
			return false
		}
	}
	return false
}

// serverPreference orders the configured suites for one client: the server's
// order, with the ChaCha20-Poly1305 suites moved first if the client prefers
// them.
func serverPreference(configured, clientSuites []uint16) []uint16 {
	if !preferChaCha(clientSuites) {
		return configured
	}
	ordered := make([]uint16, 0, len(configured))
	for _, id := range configured {
		if isChaCha(id) {
			ordered = append(ordered, id)
		}
	}
	for _, id := range configured {
		if !isChaCha(id) {
			ordered = append(ordered, id)
		}
	}
	return ordered
}
