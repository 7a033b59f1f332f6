package engine

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sync"
	"sync/atomic"
)

// aeadTicketKeys is a real TicketKeys for the tests: AES-256-GCM under a
// random key, a random nonce per ticket, the key id as additional data. The
// vault's implementation lives in internal/keyvault; the engine tests need
// one that really seals, so that a tampered or foreign ticket really fails
// to open.
type aeadTicketKeys struct {
	id   byte
	aead cipher.AEAD

	mu      sync.Mutex
	sealErr error // when set, Seal fails (a vault outage)

	sealed, opened atomic.Int64
}

func newAEADTicketKeys(id byte) *aeadTicketKeys {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &aeadTicketKeys{id: id, aead: aead}
}

func (k *aeadTicketKeys) Seal(_ context.Context, plaintext []byte) ([]byte, error) {
	k.mu.Lock()
	err := k.sealErr
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	out[0] = k.id
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	k.sealed.Add(1)
	return k.aead.Seal(out, out[1:], plaintext, out[:1]), nil
}

var errTicketUnknown = errors.New("ticket not sealed by these keys")

func (k *aeadTicketKeys) Open(_ context.Context, ticket []byte) ([]byte, error) {
	n := 1 + k.aead.NonceSize()
	if len(ticket) < n+k.aead.Overhead() || ticket[0] != k.id {
		return nil, errTicketUnknown
	}
	plaintext, err := k.aead.Open(nil, ticket[1:n], ticket[n:], ticket[:1])
	if err != nil {
		return nil, errTicketUnknown
	}
	k.opened.Add(1)
	return plaintext, nil
}

func (k *aeadTicketKeys) failSeal(err error) {
	k.mu.Lock()
	k.sealErr = err
	k.mu.Unlock()
}
