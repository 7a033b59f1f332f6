package engine

import (
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"
	"sync"

	"github.com/handshaked/handshaked/internal/engine/record"
)

// The TLS 1.3 key schedule, RFC 8446, Section 7.1, for full (non-PSK)
// handshakes:
//
//	0 -> HKDF-Extract = Early Secret -> Derive-Secret(., "derived", "")
//	(EC)DHE -> HKDF-Extract = Handshake Secret -> {c,s} hs traffic, Derive-Secret(., "derived", "")
//	0 -> HKDF-Extract = Master Secret -> {c,s} ap traffic, exp master

// deriveSecret is Derive-Secret(Secret, Label, Messages) with the transcript
// hash already computed.
func deriveSecret(h crypto.Hash, secret []byte, label string, transcriptHash []byte) []byte {
	return record.ExpandLabel(h, secret, label, transcriptHash, h.Size())
}

func extract(h crypto.Hash, ikm, salt []byte) []byte {
	out, err := hkdf.Extract(h.New, ikm, salt)
	if err != nil {
		panic("engine: HKDF-Extract: " + err.Error()) // only fails for unavailable hashes
	}
	return out
}

// emptyDerived holds Derive-Secret(Early Secret, "derived", "") per hash.
// Without a PSK the early secret is a constant, and so is this value.
var emptyDerived = sync.OnceValue(func() map[crypto.Hash][]byte {
	m := make(map[crypto.Hash][]byte)
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		early := extract(h, make([]byte, h.Size()), nil)
		m[h] = deriveSecret(h, early, "derived", h.New().Sum(nil))
	}
	return m
})

// handshakeSecret13 is HKDF-Extract(Derive-Secret(early, "derived", ""), (EC)DHE).
func handshakeSecret13(h crypto.Hash, shared []byte) []byte {
	return extract(h, shared, emptyDerived()[h])
}

// masterSecret13 is HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0).
func masterSecret13(h crypto.Hash, handshakeSecret []byte) []byte {
	salt := deriveSecret(h, handshakeSecret, "derived", h.New().Sum(nil))
	return extract(h, make([]byte, h.Size()), salt)
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
