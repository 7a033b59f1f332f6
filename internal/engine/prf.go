package engine

import (
	"crypto"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// TLS 1.2 key derivation, RFC 5246, Sections 7.4.9 and 8.1 and RFC 7627;
// the PRF and the key block are record.PRF12 and record.Secret12.

const (
	masterSecretLength   = 48 // RFC 5246, Section 8.1
	finishedVerifyLength = 12 // RFC 5246, Section 7.4.9
)

// masterSecret derives the master secret from the premaster secret: with the
// session hash when the client offered extended_master_secret (RFC 7627,
// Section 4), otherwise from the hello randoms (RFC 5246, Section 8.1).
func masterSecret(h crypto.Hash, preMaster []byte, ems bool, sessionHash, clientRandom, serverRandom []byte) []byte {
	if ems {
		return record.PRF12(h, preMaster, "extended master secret", sessionHash, masterSecretLength)
	}
	seed := make([]byte, 0, len(clientRandom)+len(serverRandom))
	seed = append(seed, clientRandom...)
	seed = append(seed, serverRandom...)
	return record.PRF12(h, preMaster, "master secret", seed, masterSecretLength)
}

// finishedVerifyData12 is PRF(master_secret, finished_label,
// Hash(handshake_messages))[0..11], RFC 5246, Section 7.4.9.
func finishedVerifyData12(master *record.Secret12, label string, transcriptHash []byte) []byte {
	return master.PRF(label, transcriptHash, finishedVerifyLength)
}

// masterPRF is the master secret keyed into the PRF, once for the key
// block and both Finished (record.Secret12); a restored handshake keys it
// again.
func (h *Handshake) masterPRF() *record.Secret12 {
	if h.master12 == nil {
		h.master12 = record.NewSecret12(h.suite.Hash, h.masterSecret)
	}
	return h.master12
}
