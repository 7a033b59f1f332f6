package engine

import (
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The TLS 1.3 key schedule, RFC 8446, Section 7.1, in typed stages. Each
// stage is one secret; it derives its own traffic secrets and, by
// HKDF-Extract over Derive-Secret(., "derived", ""), the next stage:
//
//	PSK or 0   -> HKDF-Extract = Early Secret     (earlySecret13)     -> res binder
//	(EC)DHE    -> HKDF-Extract = Handshake Secret (handshakeSecret13) -> {c,s} hs traffic
//	0          -> HKDF-Extract = Master Secret    (masterSecret13)    -> {c,s} ap traffic, exp master, res master
//
// A PSK enters at the early secret (its binder key and early traffic secret
// are derived there), the resumption master secret at the master secret:
// resumption adds derivations to a stage, never a branch in the handlers.

// secret13 is one stage of the key schedule under the suite's hash.
type secret13 struct {
	hash   crypto.Hash
	secret []byte
}

// derive is Derive-Secret(Secret, Label, Messages) with the transcript hash
// already computed.
func (s secret13) derive(label string, transcriptHash []byte) []byte {
	return record.ExpandLabel(s.hash, s.secret, label, transcriptHash, s.hash.Size())
}

// next is HKDF-Extract(Derive-Secret(Secret, "derived", ""), ikm): the secret
// of the next stage.
func (s secret13) next(ikm []byte) secret13 {
	salt := s.derive("derived", s.hash.New().Sum(nil))
	defer clear(salt)
	return secret13{s.hash, extract(s.hash, ikm, salt)}
}

// wipe clears the stage's secret once the next stage and its traffic
// secrets are derived.
func (s secret13) wipe() { clear(s.secret) }

func extract(h crypto.Hash, ikm, salt []byte) []byte {
	out, err := hkdf.Extract(h.New, ikm, salt)
	if err != nil {
		panic("engine: HKDF-Extract: " + err.Error()) // only fails for unavailable hashes
	}
	return out
}

// earlySecret13 is HKDF-Extract(0, PSK).
type earlySecret13 struct{ secret13 }

// newEarlySecret13 starts the key schedule. Without a PSK (psk nil) the
// input is a string of Hash.length zeros.
func newEarlySecret13(h crypto.Hash, psk []byte) earlySecret13 {
	if psk == nil {
		psk = make([]byte, h.Size())
	}
	return earlySecret13{secret13{h, extract(h, psk, nil)}}
}

// binderKey is the resumption binder_key, Derive-Secret(., "res binder",
// ""), RFC 8446, Section 7.1: the base key of the PSK binders (Section
// 4.2.11.2).
func (s earlySecret13) binderKey() []byte {
	return s.derive("res binder", s.hash.New().Sum(nil))
}

// handshakeSecret13 is HKDF-Extract(Derive-Secret(Early Secret, "derived", ""), (EC)DHE).
type handshakeSecret13 struct{ secret13 }

func (s earlySecret13) handshakeSecret(sharedSecret []byte) handshakeSecret13 {
	return handshakeSecret13{s.next(sharedSecret)}
}

// trafficSecrets are the client and server handshake traffic secrets, over
// ClientHello...ServerHello.
func (s handshakeSecret13) trafficSecrets(transcriptHash []byte) (client, server []byte) {
	return s.derive("c hs traffic", transcriptHash), s.derive("s hs traffic", transcriptHash)
}

// masterSecret13 is HKDF-Extract(Derive-Secret(Handshake Secret, "derived", ""), 0).
type masterSecret13 struct{ secret13 }

func (s handshakeSecret13) masterSecret() masterSecret13 {
	return masterSecret13{s.next(make([]byte, s.hash.Size()))}
}

// trafficSecrets are the client and server application traffic secrets,
// over ClientHello...server Finished.
func (s masterSecret13) trafficSecrets(transcriptHash []byte) (client, server []byte) {
	return s.derive("c ap traffic", transcriptHash), s.derive("s ap traffic", transcriptHash)
}

// exporterMasterSecret is the exporter_master_secret (RFC 8446, Section 7.5),
// over ClientHello...server Finished.
func (s masterSecret13) exporterMasterSecret(transcriptHash []byte) []byte {
	return s.derive("exp master", transcriptHash)
}

// resumptionMasterSecret is the resumption_master_secret, over
// ClientHello...client Finished (RFC 8446, Section 7.1).
func (s masterSecret13) resumptionMasterSecret(transcriptHash []byte) []byte {
	return s.derive("res master", transcriptHash)
}

// ticketPSK is the PSK of the ticket with ticket_nonce nonce,
// HKDF-Expand-Label(resumption_master_secret, "resumption", ticket_nonce,
// Hash.length), RFC 8446, Section 4.6.1.
func ticketPSK(h crypto.Hash, resumptionMasterSecret, nonce []byte) []byte {
	return record.ExpandLabel(h, resumptionMasterSecret, "resumption", nonce, h.Size())
}

// finishedVerifyData13 is HMAC(finished_key, Transcript-Hash), RFC 8446,
// Section 4.4.4, with finished_key = HKDF-Expand-Label(BaseKey, "finished", "", Hash.length).
func finishedVerifyData13(h crypto.Hash, baseKey, transcriptHash []byte) []byte {
	finishedKey := record.ExpandLabel(h, baseKey, "finished", nil, h.Size())
	mac := hmac.New(h.New, finishedKey)
	mac.Write(transcriptHash)
	return mac.Sum(nil)
}

// signatureContext values for CertificateVerify, RFC 8446, Section 4.4.3.
const (
	serverSignatureContext = "TLS 1.3, server CertificateVerify\x00"
	clientSignatureContext = "TLS 1.3, client CertificateVerify\x00"
)

// signedMessage13 is the content a TLS 1.3 CertificateVerify signs: 64 spaces,
// the context string with its zero separator, and the transcript hash.
func signedMessage13(context string, transcriptHash []byte) []byte {
	const pad = "                                                                "
	out := make([]byte, 0, len(pad)+len(context)+len(transcriptHash))
	out = append(out, pad...)
	out = append(out, context...)
	return append(out, transcriptHash...)
}
