package record

import (
	"crypto"
	"crypto/hmac"
	"hash"
)

// TLS 1.2 key derivation (RFC 5246, Sections 5 and 6.3), here beside the
// record protection it keys so that the engine, and a test that plays a
// TLS 1.2 client from a key log's master secret, derive the key block the
// same way.

// PRF12 is PRF(secret, label, seed) = P_hash(secret, label + seed), RFC
// 5246, Section 5, with the suite's hash (SHA-256 or SHA-384).
func PRF12(h crypto.Hash, secret []byte, label string, seed []byte, length int) []byte {
	return NewSecret12(h, secret).PRF(label, seed, length)
}

// Secret12 is a TLS 1.2 secret keyed into the PRF's HMAC once, for all a
// handshake derives from it: the key block and both Finished come from the
// master secret (RFC 5246, Sections 6.3 and 7.4.9), and keying an HMAC
// (two hash states, both pads hashed and saved) cost about as much as one
// of those short outputs, so keying it for each cost every handshake two
// keyings and 13 allocations for nothing. It holds what the secret keys
// (the HMAC pads): drop it with the secret.
type Secret12 struct{ mac hash.Hash }

// NewSecret12 keys the PRF with secret, for hash h.
func NewSecret12(h crypto.Hash, secret []byte) *Secret12 {
	return &Secret12{mac: hmac.New(h.New, secret)}
}

// PRF is PRF(secret, label, seed) of length bytes (PRF12).
func (s *Secret12) PRF(label string, seed []byte, length int) []byte {
	labelAndSeed := make([]byte, 0, len(label)+len(seed))
	labelAndSeed = append(labelAndSeed, label...)
	labelAndSeed = append(labelAndSeed, seed...)

	mac := s.mac
	out := make([]byte, 0, length+mac.Size())
	mac.Reset()
	mac.Write(labelAndSeed)
	a := mac.Sum(nil) // A(1)
	for {
		mac.Reset()
		mac.Write(a)
		mac.Write(labelAndSeed)
		out = mac.Sum(out)
		if len(out) >= length {
			return out[:length]
		}
		// A(i+1) = HMAC(secret, A(i)), only when another block follows:
		// a Finished (12 bytes) is one block, a TLS 1.2 handshake's master
		// secret and key block two, so computing it after the last block
		// too cost every resumed handshake three HMACs for nothing.
		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
}

// KeyBlock cuts the AEAD keys and IVs out of the key block of the master
// secret s, RFC 5246, Section 6.3. AEAD suites have no MAC keys.
func (s *Secret12) KeyBlock(clientRandom, serverRandom []byte, keyLen, ivLen int) (clientKey, serverKey, clientIV, serverIV []byte) {
	seed := make([]byte, 0, len(serverRandom)+len(clientRandom))
	seed = append(seed, serverRandom...)
	seed = append(seed, clientRandom...)
	block := s.PRF("key expansion", seed, 2*keyLen+2*ivLen)
	clientKey, block = block[:keyLen:keyLen], block[keyLen:]
	serverKey, block = block[:keyLen:keyLen], block[keyLen:]
	clientIV, block = block[:ivLen:ivLen], block[ivLen:]
	serverIV = block[:ivLen:ivLen]
	return
}
