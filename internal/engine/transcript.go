package engine

import (
	"crypto"
	"hash"
)

// transcript is the running hash of the handshake messages (RFC 8446,
// Section 4.4.1; RFC 5246, Section 7.4.9). It holds a hash state, not the
// messages, except in TLS 1.2 while a client CertificateVerify is pending:
// the client may sign the raw messages with any hash it chooses (RFC 5246,
// Section 7.4.8), so they are kept until it has been checked.
type transcript struct {
	hash  crypto.Hash
	state hash.Hash
	raw   []byte
	keep  bool
}

func newTranscript(h crypto.Hash, keepRaw bool) *transcript {
	return &transcript{hash: h, state: h.New(), keep: keepRaw}
}

func (t *transcript) write(msg []byte) {
	t.state.Write(msg)
	if t.keep {
		t.raw = append(t.raw, msg...)
	}
}

// sum returns the hash of the messages so far.
func (t *transcript) sum() []byte { return t.state.Sum(nil) }

// dropRaw releases the raw messages once nothing will need them.
func (t *transcript) dropRaw() {
	t.raw, t.keep = nil, false
}

// restartWithMessageHash replaces ClientHello1 by the synthetic message_hash
// message when a HelloRetryRequest is sent, RFC 8446, Section 4.4.1.
func (t *transcript) restartWithMessageHash(clientHello1 []byte) {
	t.state.Reset()
	t.state.Write(clientHello1)
	digest := t.state.Sum(nil)
	t.state.Reset()
	t.state.Write([]byte{typeMessageHash, 0, 0, byte(len(digest))})
	t.state.Write(digest)
}
