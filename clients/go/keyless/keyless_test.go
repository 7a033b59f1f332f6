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
	for id, fixture := range map[string]string{"rsa": "rsa2048-pkcs1.pem", "p256": "p256-pkcs8.pem", "p384": "p384-sec1.pem", "ed25519": "ed25519-pkcs8.pem"} {
		if _, err := c.ImportKey(context.Background(), id, servicetest.Fixture(t, fixture), nil); err != nil {
			t.Fatal(err)
		}
		k, err := keyless.New(context.Background(), c, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = k
	}
	return c, keys
}

func TestSign(t *testing.T) {
	_, keys := vaultKeys(t)
	msg := []byte("the vault signs this")
	d256, d384, d512 := sha256.Sum256(msg), sha512.Sum384(msg), sha512.Sum512(msg)
	digest := map[crypto.Hash][]byte{crypto.SHA256: d256[:], crypto.SHA384: d384[:], crypto.SHA512: d512[:]}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		k := keys["rsa"]
		sig, err := k.Sign(rand.Reader, digest[h], h)
		if err != nil {
			t.Fatalf("PKCS1 %v: %v", h, err)
		}
		if err := rsa.VerifyPKCS1v15(k.Public().(*rsa.PublicKey), h, digest[h], sig); err != nil {
			t.Errorf("PKCS1 %v does not verify: %v", h, err)
		}
		for _, salt := range []int{rsa.PSSSaltLengthEqualsHash, h.Size()} {
			sig, err := k.Sign(rand.Reader, digest[h], &rsa.PSSOptions{SaltLength: salt, Hash: h})
			if err != nil {
				t.Fatalf("PSS %v: %v", h, err)
			}
			// Verifying with the exact salt length proves the vault used
			// the hash length, as TLS requires.
			if err := rsa.VerifyPSS(k.Public().(*rsa.PublicKey), h, digest[h], sig, &rsa.PSSOptions{SaltLength: h.Size()}); err != nil {
				t.Errorf("PSS %v does not verify: %v", h, err)
			}
		}
	}
	for id, h := range map[string]crypto.Hash{"p256": crypto.SHA256, "p384": crypto.SHA384} {
		sig, err := keys[id].Sign(rand.Reader, digest[h], h)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if !ecdsa.VerifyASN1(keys[id].Public().(*ecdsa.PublicKey), digest[h], sig) {
			t.Errorf("%s signature does not verify", id)
		}
	}
	sig, err := keys["ed25519"].Sign(rand.Reader, msg, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(keys["ed25519"].Public().(ed25519.PublicKey), msg, sig) {
		t.Error("Ed25519 signature over the message does not verify")
	}
	if _, err := keys["ed25519"].Sign(rand.Reader, msg, &ed25519.Options{}); err != nil {
		t.Errorf("Ed25519 with empty options: %v", err)
	}

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
		{"P-256 with SHA-384", "p256", digest[crypto.SHA384], crypto.SHA384},
		{"Ed25519ph", "ed25519", digest[crypto.SHA512], crypto.SHA512},
		{"Ed25519 with a context", "ed25519", msg, &ed25519.Options{Context: "ctx"}},
	}
	for _, tc := range refused {
		if _, err := keys[tc.key].Sign(rand.Reader, tc.digest, tc.opts); err == nil {
			t.Errorf("%s: signed, want an error", tc.name)
		}
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
	if err != nil {
		t.Fatal(err)
	}
	tlsOpts := &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 48}
	got, err := k.Decrypt(rand.Reader, ct, tlsOpts)
	if err != nil || string(got) != string(premaster) {
		t.Fatalf("premaster: got %x, %v", got, err)
	}
	// A corrupted ciphertext is 48 other bytes and no error, like
	// crypto/rsa with SessionKeyLen: no padding oracle.
	ct[len(ct)/2] ^= 1
	other, err := k.Decrypt(rand.Reader, ct, tlsOpts)
	if err != nil || len(other) != 48 || string(other) == string(premaster) {
		t.Fatalf("corrupted premaster: got %d bytes, %v", len(other), err)
	}

	oaep, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("sealed"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err = k.Decrypt(rand.Reader, oaep, &rsa.OAEPOptions{Hash: crypto.SHA256})
	if err != nil || string(got) != "sealed" {
		t.Fatalf("OAEP: got %q, %v", got, err)
	}

	for name, opts := range map[string]crypto.DecrypterOpts{
		"plain PKCS1v15": &rsa.PKCS1v15DecryptOptions{},
		"nil options":    nil,
		"OAEP SHA-1":     &rsa.OAEPOptions{Hash: crypto.SHA1},
		"OAEP label":     &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("l")},
	} {
		if _, err := k.Decrypt(rand.Reader, oaep, opts); err == nil {
			t.Errorf("%s: decrypted, want an error", name)
		}
	}
	if _, ok := keys["p256"].(crypto.Decrypter); ok {
		t.Error("an ECDSA key is a crypto.Decrypter: crypto/tls would refuse its certificate")
	}
}
