package sigscheme

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Keys are made once for the package: RSA key generation under -race is slow.
var testKeys = func() map[string]crypto.Signer {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	keys := map[string]crypto.Signer{"rsa": rsaKey}
	for name, c := range map[string]elliptic.Curve{"p256": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			panic(err)
		}
		keys[name] = k
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	keys["ed25519"] = ed
	return keys
}()

// TestForKey states RFC 8446 §4.2.3 for each key type and version: in TLS
// 1.3 an ECDSA scheme names the curve and rsa_pkcs1 is not for handshake
// signatures; in TLS 1.2 an ECDSA scheme names only the hash.
func TestForKey(t *testing.T) {
	ecdsaAll := func(own tls.SignatureScheme) []tls.SignatureScheme {
		out := []tls.SignatureScheme{own}
		for _, s := range []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512} {
			if s != own {
				out = append(out, s)
			}
		}
		return out
	}
	pss := []tls.SignatureScheme{tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512}
	want := map[string]map[uint16][]tls.SignatureScheme{
		"rsa": {
			tls.VersionTLS12: append(pss, tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512),
			tls.VersionTLS13: pss,
		},
		"p256":    {tls.VersionTLS12: ecdsaAll(tls.ECDSAWithP256AndSHA256), tls.VersionTLS13: {tls.ECDSAWithP256AndSHA256}},
		"p384":    {tls.VersionTLS12: ecdsaAll(tls.ECDSAWithP384AndSHA384), tls.VersionTLS13: {tls.ECDSAWithP384AndSHA384}},
		"p521":    {tls.VersionTLS12: ecdsaAll(tls.ECDSAWithP521AndSHA512), tls.VersionTLS13: {tls.ECDSAWithP521AndSHA512}},
		"ed25519": {tls.VersionTLS12: {tls.Ed25519}, tls.VersionTLS13: {tls.Ed25519}},
	}
	for name, byVersion := range want {
		for vers, fits := range byVersion {
			pub := testKeys[name].Public()
			assert.Equal(t, fits, ForKey(pub, vers), "%s at %x", name, vers)
			for _, s := range schemes {
				assert.Equal(t, slices.Contains(fits, s.ID), Fits(s.ID, pub, vers), "Fits(%v, %s, %x)", s, name, vers)
			}
		}
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	assert.Empty(t, ForKey(p224.Public(), tls.VersionTLS12), "a curve without a scheme")
	assert.False(t, Fits(tls.PKCS1WithSHA1, testKeys["rsa"].Public(), tls.VersionTLS12), "SHA-1 is not in the table")
}

// TestPSSModulus: RSASSA-PSS with a salt as long as the hash needs a
// modulus of at least 2*hLen+2 bytes (RFC 8017 §9.1.1).
func TestPSSModulus(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 1024) // 128 bytes: sha512 needs 130
	require.NoError(t, err)
	got := ForKey(k.Public(), tls.VersionTLS13)
	assert.Equal(t, []tls.SignatureScheme{tls.PSSWithSHA256, tls.PSSWithSHA384}, got)
}

// TestSignVerify signs with the standard library's signers using
// SignerOpts and checks Verify accepts the result and rejects a changed
// message, for every scheme every key can produce in TLS 1.2.
func TestSignVerify(t *testing.T) {
	msg := []byte("a CertificateVerify's signed content")
	for name, key := range testKeys {
		for _, id := range ForKey(key.Public(), tls.VersionTLS12) {
			s, ok := Lookup(id)
			require.True(t, ok)
			sig, err := key.Sign(rand.Reader, s.Digest(msg), s.SignerOpts())
			require.NoError(t, err, "%s %v", name, s)
			assert.NoError(t, s.Verify(key.Public(), msg, sig), "%s %v", name, s)
			assert.ErrorIs(t, s.Verify(key.Public(), []byte("another message"), sig), ErrVerify, "%s %v", name, s)
		}
	}
	// The salt length is part of RSASSA-PSS in TLS: a signature with
	// another salt length does not verify.
	rsaKey := testKeys["rsa"].(*rsa.PrivateKey)
	pss, _ := Lookup(tls.PSSWithSHA256)
	sig, err := rsa.SignPSS(rand.Reader, rsaKey, crypto.SHA256, pss.Digest(msg), &rsa.PSSOptions{SaltLength: 20})
	require.NoError(t, err)
	assert.ErrorIs(t, pss.Verify(rsaKey.Public(), msg, sig), ErrVerify)
	// A scheme of another algorithm than the key's is refused.
	ecdsaScheme, _ := Lookup(tls.ECDSAWithP256AndSHA256)
	assert.Error(t, ecdsaScheme.Verify(rsaKey.Public(), msg, sig))
	ed, _ := Lookup(tls.Ed25519)
	assert.Error(t, ed.VerifyDigest(testKeys["ed25519"].Public(), msg, sig))
}

// TestForSignerOpts: what crypto/tls asks a crypto.Signer for maps to the
// scheme of the same algorithm and hash, with TLS 1.2's reading of ECDSA.
func TestForSignerOpts(t *testing.T) {
	pssOpts := func(h crypto.Hash, salt int) *rsa.PSSOptions { return &rsa.PSSOptions{Hash: h, SaltLength: salt} }
	cases := []struct {
		key  string
		opts crypto.SignerOpts
		want tls.SignatureScheme // 0: refused
	}{
		{"rsa", crypto.SHA256, tls.PKCS1WithSHA256},
		{"rsa", crypto.SHA512, tls.PKCS1WithSHA512},
		{"rsa", pssOpts(crypto.SHA384, rsa.PSSSaltLengthEqualsHash), tls.PSSWithSHA384},
		{"rsa", pssOpts(crypto.SHA256, 32), tls.PSSWithSHA256},
		{"rsa", pssOpts(crypto.SHA256, rsa.PSSSaltLengthAuto), 0},
		{"rsa", crypto.SHA1, 0},
		{"p256", crypto.SHA256, tls.ECDSAWithP256AndSHA256},
		{"p384", crypto.SHA384, tls.ECDSAWithP384AndSHA384},
		{"p384", crypto.SHA256, tls.ECDSAWithP256AndSHA256},
		{"p521", crypto.SHA512, tls.ECDSAWithP521AndSHA512},
		{"p521", crypto.SHA256, tls.ECDSAWithP256AndSHA256},
		{"p256", crypto.SHA1, 0},
		{"ed25519", crypto.Hash(0), tls.Ed25519},
		{"ed25519", &ed25519.Options{Hash: crypto.Hash(0)}, tls.Ed25519},
		{"ed25519", &ed25519.Options{Hash: crypto.SHA512}, 0},
		{"ed25519", &ed25519.Options{Context: "ctx"}, 0},
	}
	for _, c := range cases {
		got, err := ForSignerOpts(testKeys[c.key].Public(), c.opts)
		if c.want == 0 {
			assert.Error(t, err, "%s %v", c.key, c.opts)
			continue
		}
		if assert.NoError(t, err, "%s %v", c.key, c.opts) {
			assert.Equal(t, c.want, got.ID, "%s %v", c.key, c.opts)
		}
	}
}

func TestNames(t *testing.T) {
	for _, s := range schemes {
		got, ok := ByName(s.Name)
		assert.True(t, ok)
		assert.Equal(t, s.ID, got.ID)
		// crypto/tls names the schemes too; the table's name is the IANA one,
		// so only the code point is compared with it.
		l, ok := Lookup(s.ID)
		assert.True(t, ok)
		assert.Equal(t, s.Name, l.Name)
	}
	s, ok := ByName("ECDSA_SECP521R1_SHA512")
	assert.True(t, ok)
	assert.Equal(t, tls.ECDSAWithP521AndSHA512, s.ID)
	_, ok = ByName("rsa_pkcs1_sha1")
	assert.False(t, ok)
}
