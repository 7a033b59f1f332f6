// Package keyless offloads the private-key operations of an ordinary TLS
// stack to handshaked. A Key implements crypto.Signer and crypto.Decrypter
// by calling the vault, so a Go server can put it in a tls.Certificate
// without ever holding the private key:
//
//	cert, err := keyless.Certificate(ctx, client, "web-rsa")
//	srv := &http.Server{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
//
// It works for TLS 1.2 with RSA key exchange (the premaster secret is
// decrypted by the vault) and ECDHE, and for TLS 1.3.
package keyless

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/sigscheme"
)

// Vault is what a Key needs from the service; *handshaked.Client has it.
type Vault interface {
	PublicKey(ctx context.Context, id string, version uint32) (crypto.PublicKey, uint32, error)
	CertificateChain(ctx context.Context, id string, version uint32) ([][]byte, uint32, error)
	Sign(ctx context.Context, id string, version uint32, scheme pb.SignatureScheme, message, digest []byte) ([]byte, uint32, error)
	Decrypt(ctx context.Context, id string, version uint32, mode pb.DecryptMode, ciphertext []byte) ([]byte, error)
}

// Key is a vault key version used through crypto.Signer. The interface
// carries no context, so every operation is bounded by Timeout instead.
type Key struct {
	vault   Vault
	id      string
	version uint32
	pub     crypto.PublicKey
	// Timeout bounds each vault call (default 10 s).
	Timeout time.Duration
}

// RSAKey is a Key that also implements crypto.Decrypter, for TLS 1.2 RSA
// key exchange.
type RSAKey struct{ *Key }

// New returns the signer for version of key id (0: the current primary,
// pinned now, so a later rotation does not change the key under a
// certificate): a *RSAKey for an RSA key, a *Key otherwise. Only RSA keys
// implement crypto.Decrypter, because crypto/tls refuses a certificate
// whose private key is a Decrypter of any other type.
func New(ctx context.Context, v Vault, id string, version uint32) (crypto.Signer, error) {
	pub, version, err := v.PublicKey(ctx, id, version)
	if err != nil {
		return nil, fmt.Errorf("keyless: %w", err)
	}
	k := &Key{vault: v, id: id, version: version, pub: pub, Timeout: 10 * time.Second}
	if _, ok := pub.(*rsa.PublicKey); ok {
		return &RSAKey{k}, nil
	}
	return k, nil
}

// Certificate builds a tls.Certificate for the primary version of key id
// from the chain attached to it in the vault, with a Key as PrivateKey.
func Certificate(ctx context.Context, v Vault, id string) (tls.Certificate, error) {
	chain, version, err := v.CertificateChain(ctx, id, 0)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("keyless: %w", err)
	}
	if len(chain) == 0 {
		return tls.Certificate{}, fmt.Errorf("keyless: key %s version %d has no certificate chain", id, version)
	}
	key, err := New(ctx, v, id, version)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("keyless: leaf certificate of %s: %w", id, err)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return tls.Certificate{}, fmt.Errorf("keyless: leaf certificate of %s version %d does not certify its public key", id, version)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// ID returns the key id and version.
func (k *Key) ID() (string, uint32) { return k.id, k.version }

// Public returns the public key.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest as crypto.Signer specifies: for RSA and ECDSA, digest
// is the hash named by opts.HashFunc() (with *rsa.PSSOptions selecting
// RSA-PSS, whose salt is the hash length as TLS requires, RFC 8446
// §4.2.3); for Ed25519, opts.HashFunc() is 0 and digest is the whole
// message (pure Ed25519, RFC 8032; Ed25519ph and contexts are refused).
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	scheme, err := k.scheme(opts)
	if err != nil {
		return nil, fmt.Errorf("keyless: sign with %s: %w", k.id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.Timeout)
	defer cancel()
	var sig []byte
	if scheme == pb.SignatureScheme_SIGNATURE_SCHEME_ED25519 {
		sig, _, err = k.vault.Sign(ctx, k.id, k.version, scheme, digest, nil)
	} else {
		if len(digest) != opts.HashFunc().Size() {
			return nil, fmt.Errorf("keyless: sign with %s: %d-byte digest for %v", k.id, len(digest), opts.HashFunc())
		}
		sig, _, err = k.vault.Sign(ctx, k.id, k.version, scheme, nil, digest)
	}
	if err != nil {
		return nil, fmt.Errorf("keyless: %w", err)
	}
	return sig, nil
}

// scheme maps the key type and opts to the TLS signature scheme the vault
// signs with. A crypto.Signer learns only the hash (and, for RSA, whether
// PSS is wanted), which is what a scheme means in TLS 1.2: crypto/tls asks a
// P-384 key for SHA-256 when a TLS 1.2 client prefers
// ecdsa_secp256r1_sha256, and the vault signs that scheme with any ECDSA key
// (RFC 8446 §4.2.3). The one table of schemes is internal/sigscheme.
func (k *Key) scheme(opts crypto.SignerOpts) (pb.SignatureScheme, error) {
	s, err := sigscheme.ForSignerOpts(k.pub, opts)
	if err != nil {
		return 0, err
	}
	return pb.SignatureScheme(s.ID), nil
}

// Decrypt decrypts an RSA ciphertext in the vault. crypto/tls passes
// *rsa.PKCS1v15DecryptOptions{SessionKeyLen: 48} for a TLS 1.2 premaster
// secret: that maps to the vault's premaster mode, which answers a bad
// ciphertext with 48 unpredictable bytes instead of an error (RFC 5246
// §7.4.7.1), exactly what SessionKeyLen asks of crypto/rsa. *rsa.OAEPOptions
// with SHA-256 and no label maps to RSA-OAEP. Plain PKCS #1 v1.5 decryption,
// whose errors are a padding oracle, is refused.
func (k *RSAKey) Decrypt(_ io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	var mode pb.DecryptMode
	switch o := opts.(type) {
	case *rsa.PKCS1v15DecryptOptions:
		if o.SessionKeyLen != 48 {
			return nil, fmt.Errorf("keyless: decrypt with %s: PKCS #1 v1.5 only for a 48-byte TLS premaster secret, not SessionKeyLen %d", k.id, o.SessionKeyLen)
		}
		mode = pb.DecryptMode_DECRYPT_MODE_RSA_PKCS1_TLS_PREMASTER
	case *rsa.OAEPOptions:
		if o.Hash != crypto.SHA256 || (o.MGFHash != 0 && o.MGFHash != crypto.SHA256) || len(o.Label) > 0 {
			return nil, fmt.Errorf("keyless: decrypt with %s: only RSA-OAEP with SHA-256 and no label is supported", k.id)
		}
		mode = pb.DecryptMode_DECRYPT_MODE_RSA_OAEP_SHA256
	default:
		return nil, fmt.Errorf("keyless: decrypt with %s: unsupported options %T", k.id, opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.Timeout)
	defer cancel()
	pt, err := k.vault.Decrypt(ctx, k.id, k.version, mode, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("keyless: %w", err)
	}
	return pt, nil
}
