package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

var ctx = context.Background()

var testKEK = bytes.Repeat([]byte{0x42}, kekSize)

// Keys are generated once per package run, with the vault's own generator:
// RSA key generation under -race is slow.
var testKeys [Ed25519 + 1]struct {
	once sync.Once
	key  crypto.Signer
	err  error
}

func testKey(tb testing.TB, alg Algorithm) crypto.Signer {
	tb.Helper()
	k := &testKeys[alg]
	k.once.Do(func() { k.key, k.err = generateKey(alg) })
	require.NoError(tb, k.err, "generate %v", alg)
	return k.key
}

// pemOf encodes key as format: "pkcs1", "pkcs8" or "sec1".
func pemOf(tb testing.TB, key crypto.Signer, format string) []byte {
	tb.Helper()
	var (
		typ string
		der []byte
		err error
	)
	switch format {
	case "pkcs1":
		typ, der = "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	case "pkcs8":
		typ = "PRIVATE KEY"
		der, err = x509.MarshalPKCS8PrivateKey(key)
	case "sec1":
		typ = "EC PRIVATE KEY"
		der, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	default:
		require.FailNow(tb, "unknown PEM format", format)
	}
	require.NoError(tb, err)
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// newTestVault opens a vault on a new bolt file under testKEK.
func newTestVault(tb testing.TB) (*Vault, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "vault.db")
	return openTestVault(tb, path, testKEK), path
}

func openTestVault(tb testing.TB, path string, kek []byte, opts ...Option) *Vault {
	tb.Helper()
	v, err := openVault(path, kek, opts...)
	require.NoError(tb, err)
	tb.Cleanup(func() { v.Close() })
	return v
}

func openVault(path string, kek []byte, opts ...Option) (*Vault, error) {
	store, err := OpenBolt(path)
	if err != nil {
		return nil, err
	}
	v, err := New(ctx, store, kek, opts...)
	if err != nil {
		return nil, errors.Join(err, store.Close())
	}
	return v, nil
}

// importTestKey imports the shared test key of alg as id.
func importTestKey(tb testing.TB, v *Vault, id string, alg Algorithm) *Key {
	tb.Helper()
	k, err := v.Import(ctx, id, pemOf(tb, testKey(tb, alg), "pkcs8"), nil)
	require.NoError(tb, err, "import %v", alg)
	return k
}

// testHash is the test's own statement of each scheme's hash (RFC 8446
// §4.2.3), kept apart from the code under test.
func testHash(scheme tls.SignatureScheme) crypto.Hash {
	switch scheme {
	case tls.PKCS1WithSHA256, tls.PSSWithSHA256, tls.ECDSAWithP256AndSHA256:
		return crypto.SHA256
	case tls.PKCS1WithSHA384, tls.PSSWithSHA384, tls.ECDSAWithP384AndSHA384:
		return crypto.SHA384
	case tls.PKCS1WithSHA512, tls.PSSWithSHA512, tls.ECDSAWithP521AndSHA512:
		return crypto.SHA512
	}
	return 0
}

var allSchemes = []tls.SignatureScheme{
	tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512,
	tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512,
	tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512,
	tls.Ed25519, tls.PKCS1WithSHA1, tls.ECDSAWithSHA1,
}

// verifySignature checks sig over msg with the standard library's verifiers.
func verifySignature(pub crypto.PublicKey, scheme tls.SignatureScheme, msg, sig []byte) error {
	h := testHash(scheme)
	var digest []byte
	if h != 0 {
		hh := h.New()
		hh.Write(msg)
		digest = hh.Sum(nil)
	}
	switch scheme {
	case tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512:
		return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), h, digest, sig)
	case tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512:
		return rsa.VerifyPSS(pub.(*rsa.PublicKey), h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512:
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) {
			return errors.New("ecdsa signature does not verify")
		}
		return nil
	case tls.Ed25519:
		if !ed25519.Verify(pub.(ed25519.PublicKey), msg, sig) {
			return errors.New("ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("no verifier for %v", scheme)
}
