package engine

import (
	"crypto"
	"crypto/hmac"
)

// TLS 1.2 key derivation, RFC 5246, Sections 5, 6.3, 7.4.9 and RFC 7627.

const (
	masterSecretLength   = 48 // RFC 5246, Section 8.1
	finishedVerifyLength = 12 // RFC 5246, Section 7.4.9
)

// prf12 is PRF(secret, label, seed) = P_hash(secret, label + seed), RFC 5246,
// Section 5, with the suite's hash (SHA-256 or SHA-384).
func prf12(h crypto.Hash, secret []byte, label string, seed []byte, length int) []byte {
	labelAndSeed := make([]byte, 0, len(label)+len(seed))
	labelAndSeed = append(labelAndSeed, label...)
	labelAndSeed = append(labelAndSeed, seed...)

	out := make([]byte, 0, length+h.Size())
	mac := hmac.New(h.New, secret)
	mac.Write(labelAndSeed)
	a := mac.Sum(nil) // A(1)
	for len(out) < length {
		mac.Reset()
		mac.Write(a)
		mac.Write(labelAndSeed)
		out = mac.Sum(out)
		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
	return out[:length]
}

// masterSecret derives the master secret from the premaster secret: with the
// session hash when the client offered extended_master_secret (RFC 7627,
// Section 4), otherwise from the hello randoms (RFC 5246, Section 8.1).
func masterSecret(h crypto.Hash, preMaster []byte, ems bool, sessionHash, clientRandom, serverRandom []byte) []byte {
	if ems {
		return prf12(h, preMaster, "extended master secret", sessionHash, masterSecretLength)
	}
	seed := make([]byte, 0, len(clientRandom)+len(serverRandom))
	seed = append(seed, clientRandom...)
	seed = append(seed, serverRandom...)
	return prf12(h, preMaster, "master secret", seed, masterSecretLength)
}

// keysFromMasterSecret cuts the AEAD keys and IVs out of the key block, RFC
// 5246, Section 6.3. AEAD suites have no MAC keys.
func keysFromMasterSecret(h crypto.Hash, master, clientRandom, serverRandom []byte, keyLen, ivLen int) (clientKey, serverKey, clientIV, serverIV []byte) {
	seed := make([]byte, 0, len(serverRandom)+len(clientRandom))
	seed = append(seed, serverRandom...)
	seed = append(seed, clientRandom...)
	block := prf12(h, master, "key expansion", seed, 2*keyLen+2*ivLen)
	clientKey, block = block[:keyLen:keyLen], block[keyLen:]
	serverKey, block = block[:keyLen:keyLen], block[keyLen:]
	clientIV, block = block[:ivLen:ivLen], block[ivLen:]
	serverIV = block[:ivLen:ivLen]
	return
}

// finishedVerifyData12 is PRF(master_secret, finished_label,
// Hash(handshake_messages))[0..11], RFC 5246, Section 7.4.9.
func finishedVerifyData12(h crypto.Hash, master []byte, label string, transcriptHash []byte) []byte {
	return prf12(h, master, label, transcriptHash, finishedVerifyLength)
}
