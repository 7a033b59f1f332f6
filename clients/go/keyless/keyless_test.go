package keyless_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// vaultKeys starts a service holding one key of each type.
func vaultKeys(t *testing.T) (*handshaked.Client, map[string]crypto.Signer) {
	t.Helper()
	srv := servicetest.Start(t, service.Options{})
	c := handshaked.New(srv.Conn)
	keys := map[string]crypto.Signer{}
	for id, fixture := range map[string]string{"rsa": "rsa2048-pkcs1.pem", "p256": "p256-pkcs8.pem", "p384": "p384-sec1.pem", "p521": "p521-pkcs8.pem", "ed25519": "ed25519-pkcs8.pem"} {
		_, err := c.ImportKey(context.Background(), id, servicetest.Fixture(t, fixture), nil)
		require.NoError(t, err)
		k, err := keyless.New(context.Background(), c, id, 0)
		require.NoError(t, err)
		keys[id] = k
	}
	return c, keys
}

func TestSign(t *testing.T) {
	_, keys := vaultKeys(t)
	msg := []byte("the vault signs this")
	d256, d384, d512 := sha256.Sum256(msg), sha512.Sum384(msg), sha512.Sum512(msg)
	digest := map[crypto.Hash][]byte{crypto.SHA256: d256[:], crypto.SHA384: d384[:], crypto.SHA512: d512[:]}
	hashes := []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}
	for _, h := range hashes {
		k := keys["rsa"]
		sig, err := k.Sign(rand.Reader, digest[h], h)
		require.NoError(t, err, "PKCS1 %v", h)
		assert.NoError(t, rsa.VerifyPKCS1v15(k.Public().(*rsa.PublicKey), h, digest[h], sig), "PKCS1 %v", h)
		for _, salt := range []int{rsa.PSSSaltLengthEqualsHash, h.Size()} {
			sig, err := k.Sign(rand.Reader, digest[h], &rsa.PSSOptions{SaltLength: salt, Hash: h})
			require.NoError(t, err, "PSS %v", h)
			// Verifying with the exact salt length proves the vault used
			// the hash length, as TLS requires.
			assert.NoError(t, rsa.VerifyPSS(k.Public().(*rsa.PublicKey), h, digest[h], sig, &rsa.PSSOptions{SaltLength: h.Size()}), "PSS %v", h)
		}
	}
	// An ECDSA key signs with any of the three hashes, as crypto/tls asks in
	// TLS 1.2, where ecdsa_secp256r1_sha256 means ECDSA with SHA-256 on any
	// curve (RFC 8446 §4.2.3).
	for _, id := range []string{"p256", "p384", "p521"} {
		for _, h := range hashes {
			sig, err := keys[id].Sign(rand.Reader, digest[h], h)
			require.NoError(t, err, "%s %v", id, h)
			assert.True(t, ecdsa.VerifyASN1(keys[id].Public().(*ecdsa.PublicKey), digest[h], sig), "%s %v signature does not verify", id, h)
		}
	}
	sig, err := keys["ed25519"].Sign(rand.Reader, msg, crypto.Hash(0))
	require.NoError(t, err)
	assert.True(t, ed25519.Verify(keys["ed25519"].Public().(ed25519.PublicKey), msg, sig), "Ed25519 signature over the message does not verify")
	_, err = keys["ed25519"].Sign(rand.Reader, msg, &ed25519.Options{})
	assert.NoError(t, err, "Ed25519 with empty options")

	refused := []struct {
		name   string
		key    string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"PSS with an arbitrary salt", "rsa", digest[crypto.SHA256], &rsa.PSSOptions{SaltLength: 5, Hash: crypto.SHA256}},
		{"PSS with automatic salt", "rsa", digest[crypto.SHA256], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}},
		{"RSA with MD5+SHA1", "rsa", make([]byte, 36), crypto.MD5SHA1},
		{"RSA without a hash", "rsa", digest[crypto.SHA256], crypto.Hash(0)},
		{"digest of the wrong length", "rsa", digest[crypto.SHA384], crypto.SHA256},
		{"ECDSA digest of the wrong length", "p384", digest[crypto.SHA384], crypto.SHA256},
		{"ECDSA with SHA-1", "p256", make([]byte, 20), crypto.SHA1},
		{"Ed25519ph", "ed25519", digest[crypto.SHA512], crypto.SHA512},
		{"Ed25519 with a context", "ed25519", msg, &ed25519.Options{Context: "ctx"}},
	}
	for _, tc := range refused {
		_, err := keys[tc.key].Sign(rand.Reader, tc.digest, tc.opts)
		assert.Error(t, err, "%s: signed, want an error", tc.name)
	}
}

func TestDecrypt(t *testing.T) {
	_, keys := vaultKeys(t)
	k := keys["rsa"].(crypto.Decrypter)
	pub := k.Public().(*rsa.PublicKey)
	premaster := make([]byte, 48)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	require.NoError(t, err)
	tlsOpts := &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 48}
	got, err := k.Decrypt(rand.Reader, ct, tlsOpts)
	require.NoError(t, err)
	require.Equal(t, premaster, got, "premaster")
	// A corrupted ciphertext is 48 other bytes and no error, like
	// crypto/rsa with SessionKeyLen: no padding oracle.
	ct[len(ct)/2] ^= 1
	other, err := k.Decrypt(rand.Reader, ct, tlsOpts)
	require.NoError(t, err, "corrupted premaster")
	require.Len(t, other, 48, "corrupted premaster")
	require.NotEqual(t, premaster, other, "corrupted premaster")

	oaep, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("sealed"), nil)
	require.NoError(t, err)
	got, err = k.Decrypt(rand.Reader, oaep, &rsa.OAEPOptions{Hash: crypto.SHA256})
	require.NoError(t, err, "OAEP")
	require.Equal(t, "sealed", string(got), "OAEP")

	for name, opts := range map[string]crypto.DecrypterOpts{
		"plain PKCS1v15": &rsa.PKCS1v15DecryptOptions{},
		"nil options":    nil,
		"OAEP SHA-1":     &rsa.OAEPOptions{Hash: crypto.SHA1},
		"OAEP label":     &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("l")},
	} {
		_, err := k.Decrypt(rand.Reader, oaep, opts)
		assert.Error(t, err, "%s: decrypted, want an error", name)
	}
	_, ok := keys["p256"].(crypto.Decrypter)
	assert.False(t, ok, "an ECDSA key is a crypto.Decrypter: crypto/tls would refuse its certificate")
}
