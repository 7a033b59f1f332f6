package keyvault

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
)

// BackendSoftware names the software backend, which every vault has: the
// private key is sealed as PKCS #8 in the version's material record and
// unsealed into memory when the vault opens.
const BackendSoftware = "software"

// BackendPKCS11 names the PKCS #11 backend (package keyvault/pkcs11, built
// with the pkcs11 tag): keys generated inside a token, never extractable.
const BackendPKCS11 = "pkcs11"

// KeyBackend is where the private keys of key versions live and where their
// operations happen. The vault routes each version to the backend that
// created it; the engine, the service and the API never know which.
//
// A handle is what the vault needs to find a key again: it is sealed under
// the KEK as the version's material record and erased with it. The
// software backend's handle is the private key itself; an HSM's names a key
// that never leaves the HSM (for PKCS #11, an RFC 7512 URI).
type KeyBackend interface {
	// Name is the backend's name in version records and the API.
	Name() string
	// Generate makes a private key of alg inside the backend and returns
	// its handle and the key. label names the key version for an operator
	// looking inside the backend; it is not secret and not unique.
	Generate(ctx context.Context, alg Algorithm, label string) (handle []byte, key crypto.Signer, err error)
	// Load returns the key a handle of Generate names.
	Load(ctx context.Context, alg Algorithm, handle []byte) (crypto.Signer, error)
	// Destroy destroys the key a handle of Generate names. Once it
	// returns nil the key is gone for good. A key gone already is no
	// error: another replica may have finished the same destroy.
	Destroy(ctx context.Context, handle []byte) error
}

// RawRSAKey is an RSA key of a backend that does not hand the private
// exponent out (an HSM's). For decryption the vault asks it for the raw RSA
// operation and removes the padding itself, in constant time: a token's
// own PKCS #1 v1.5 decryption reports bad padding by an error and by its
// timing, the Bleichenbacher oracle RFC 5246 §7.4.7.1 forbids, and the
// vault's OAEP decoding is the same for every token. For a TLS premaster it
// also asks for a rejection key, for the implicit rejection.
type RawRSAKey interface {
	crypto.Signer
	// DecryptRaw returns RSADP (RFC 8017 §5.1.2) of ciphertext, which is
	// as long as the modulus and below it: the padded message, as many
	// bytes as the modulus, with no check of its padding.
	DecryptRaw(ctx context.Context, ciphertext []byte) ([]byte, error)
	// RejectionKDK returns HMAC-SHA256 of ciphertext under a secret of the
	// key that never leaves the backend: the key-derivation key of the
	// implicit-rejection substitute (see rejectionSubstitute).
	RejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error)
}

// Option configures a Vault.
type Option func(*Vault)

// WithBackend adds a key backend, by its name, to those a vault routes key
// versions to. The caller keeps it open while the vault is, and closes it
// after.
func WithBackend(b KeyBackend) Option {
	return func(v *Vault) { v.backends[b.Name()] = b }
}

// backend returns the backend of that name.
func (v *Vault) backend(name string) (KeyBackend, error) {
	b, ok := v.backends[name]
	if !ok {
		return nil, fmt.Errorf("keyvault: key backend %.40q is not configured in this instance: %w", name, ErrFailedPrecondition)
	}
	return b, nil
}

// softwareBackend keeps private keys in memory; its handle is the key as
// PKCS #8 DER.
type softwareBackend struct{}

func (softwareBackend) Name() string { return BackendSoftware }

func (softwareBackend) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	key, err := generateKey(alg)
	if err != nil {
		return nil, nil, err
	}
	handle, err := softwareHandle(key)
	if err != nil {
		return nil, nil, err
	}
	signer, err := memoryKey(key)
	if err != nil {
		clear(handle)
		return nil, nil, err
	}
	return handle, signer, nil
}

// softwareHandle is the handle of a software key: PKCS #8 DER, which the
// caller clears once it is sealed.
func softwareHandle(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("keyvault: encode private key: %w", err)
	}
	return der, nil
}

func (softwareBackend) Load(ctx context.Context, alg Algorithm, handle []byte) (crypto.Signer, error) {
	key, err := x509.ParsePKCS8PrivateKey(handle)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("keyvault: a %T is no signer", key)
	}
	return memoryKey(signer)
}

// Destroy has nothing to do: the handle is the key, the material record
// the vault erases, and the vault drops it from memory.
func (softwareBackend) Destroy(ctx context.Context, handle []byte) error { return nil }

// backendField is a backend's name as a version record holds it: empty for
// the software backend, so that its records stay as they were before
// backends.
func backendField(name string) string {
	if name == BackendSoftware {
		return ""
	}
	return name
}
