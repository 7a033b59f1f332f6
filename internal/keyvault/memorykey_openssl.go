//go:build openssl

package keyvault

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/handshaked/handshaked/internal/keyvault/opensslrsa"
)

// memoryKey returns what does the private-key operations of a software
// key, one the vault holds in memory. In a build with the openssl tag an
// RSA key's are OpenSSL's (package opensslrsa), about twice as fast as
// crypto/rsa's on x86-64; other keys keep the standard library's.
func memoryKey(key crypto.Signer) (crypto.Signer, error) {
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return key, nil
	}
	k, err := opensslrsa.New(priv)
	if err != nil {
		// Not the key's fault (a libcrypto too old): the instance's.
		return nil, fmt.Errorf("keyvault: RSA key into OpenSSL: %w: %w", err, ErrFailedPrecondition)
	}
	return &opensslRSA{key: k, rejection: rejectionSecret(priv)}, nil
}

// RSAImplementation names what does the private-key operations of software
// RSA keys in this build, for the operator: the libcrypto it runs with.
func RSAImplementation() string { return opensslrsa.Version() }

// opensslRSA is an in-memory RSA key held by libcrypto. For decryption it
// is a RawRSAKey: OpenSSL does the raw RSA operation and the vault removes
// the padding in constant time and substitutes for a bad premaster, the
// same code as for an HSM's key (rawRSA). OpenSSL 3.0's own
// RSA_PKCS1_WITH_TLS_PADDING would check the padding and the version in
// constant time too, but substitutes random bytes (RFC 5246 §7.4.7.1),
// which differ on every query of the same bad ciphertext: a caller of
// Decrypt, who sees the result, would tell a bad padding from a good one by
// asking twice. The implicit rejection keeps the substitute a function of
// the ciphertext and the key.
type opensslRSA struct {
	key *opensslrsa.Key
	// rejection is the KDK key softwareRSA derives from the private
	// exponent (rejectionSecret), so that a key yields the same
	// substitutes with and without the openssl tag.
	rejection [sha256.Size]byte
}

func (k *opensslRSA) Public() crypto.PublicKey { return k.key.Public() }

// Sign signs with RSASSA-PSS or RSASSA-PKCS1-v1_5 as crypto/rsa does;
// OpenSSL draws the PSS salt itself, so random is not read.
func (k *opensslRSA) Sign(random io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.key.Sign(random, digest, opts)
}

func (k *opensslRSA) DecryptRaw(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return k.key.DecryptRaw(ciphertext)
}

func (k *opensslRSA) RejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return rejectionKDKUnder(k.rejection[:], ciphertext), nil
}
