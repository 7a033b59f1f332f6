package keyvault

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// importSeeds are valid PEMs of every supported kind.
func importSeeds(tb testing.TB) map[string][]byte {
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}})
	return map[string][]byte{
		"pkcs1-rsa2048":          pemOf(tb, testKey(tb, RSA2048), "pkcs1"),
		"pkcs8-rsa2048":          pemOf(tb, testKey(tb, RSA2048), "pkcs8"),
		"pkcs8-p256":             pemOf(tb, testKey(tb, ECDSAP256), "pkcs8"),
		"pkcs8-ed25519":          pemOf(tb, testKey(tb, Ed25519), "pkcs8"),
		"sec1-p256":              pemOf(tb, testKey(tb, ECDSAP256), "sec1"),
		"sec1-p384-with-params":  append(ecParams, pemOf(tb, testKey(tb, ECDSAP384), "sec1")...),
		"pkcs8-p384-with-banner": append([]byte("key for example.com\n"), pemOf(tb, testKey(tb, ECDSAP384), "pkcs8")...),
		"pkcs8-p521":             pemOf(tb, testKey(tb, ECDSAP521), "pkcs8"),
		"sec1-p521":              pemOf(tb, testKey(tb, ECDSAP521), "sec1"),
	}
}

func TestImport(t *testing.T) {
	v, _ := newTestVault(t)
	want := map[string]Algorithm{
		"pkcs1-rsa2048": RSA2048, "pkcs8-rsa2048": RSA2048, "pkcs8-p256": ECDSAP256, "pkcs8-ed25519": Ed25519,
		"sec1-p256": ECDSAP256, "sec1-p384-with-params": ECDSAP384, "pkcs8-p384-with-banner": ECDSAP384,
		"pkcs8-p521": ECDSAP521, "sec1-p521": ECDSAP521,
	}
	for name, data := range importSeeds(t) {
		t.Run(name, func(t *testing.T) {
			key, err := v.Import(ctx, name, data, map[string]string{"source": name})
			require.NoError(t, err)
			ver := key.Versions[0]
			assert.Equal(t, want[name], ver.Algorithm)
			assert.True(t, ver.Imported)
			assert.Equal(t, StateEnabled, ver.State)
			assert.Equal(t, uint32(1), key.Primary)
			assert.Equal(t, name, key.Labels["source"])
			assert.True(t, publicKeyEqual(testKey(t, ver.Algorithm).Public(), ver.PublicKey), "imported key has another public key")
		})
	}
}

func TestImportRejects(t *testing.T) {
	v, _ := newTestVault(t)
	p256 := testKey(t, ECDSAP256)
	// P-224 parses (crypto/x509 knows it) but has no TLS signature scheme.
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	good := pemOf(t, p256, "pkcs8")
	block, _ := pem.Decode(good)
	encryptedHeaders := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{
		"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,0123456789ABCDEF0123456789ABCDEF",
	}, Bytes: block.Bytes})
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t, p256)})
	truncated := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: block.Bytes[:len(block.Bytes)/2]})

	cases := map[string][]byte{
		"empty":             nil,
		"garbage":           []byte("this is not a key"),
		"no end":            good[:len(good)-20],
		"truncated DER":     truncated,
		"encrypted pkcs8":   pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: block.Bytes}),
		"encrypted headers": encryptedHeaders,
		"certificate":       cert,
		"key and cert":      append(bytes.Clone(good), cert...),
		"two keys":          append(bytes.Clone(good), good...),
		"pkcs8 in pkcs1":    pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: block.Bytes}),
		"p224":              pemOf(t, p224, "pkcs8"),
		"too large":         append(bytes.Repeat([]byte(" "), maxPEMSize), good...),
	}
	// The standard library parses RSA-1024; the vault's size check refuses it.
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	cases["rsa1024"] = pemOf(t, rsa1024, "pkcs1")
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			id := strings.ToLower(strings.ReplaceAll(name, " ", "-"))
			_, err := v.Import(ctx, id, data, nil)
			require.ErrorIs(t, err, ErrInvalidArgument)
			_, getErr := v.Get(ctx, id)
			assert.ErrorIs(t, getErr, ErrNotFound, "a failed import left key %q", id)
			// No error may quote the key.
			body := block.Bytes
			assert.NotContains(t, err.Error(), string(body[len(body)-16:]), "error quotes key bytes")
		})
	}
}

func TestImportDuplicateID(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "dup", Ed25519)
	_, err := v.Import(ctx, "dup", pemOf(t, testKey(t, ECDSAP256), "pkcs8"), nil)
	assert.ErrorIs(t, err, ErrAlreadyExists)
	key, err := v.Get(ctx, "dup")
	require.NoError(t, err)
	assert.Equal(t, Ed25519, key.Versions[0].Algorithm, "the first key must stay untouched")
}

func FuzzImport(f *testing.F) {
	for _, data := range importSeeds(f) {
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("\x00\xff garbage"))

	v, _ := newTestVault(f)
	var n atomic.Uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		id := "fuzz-" + strconv.FormatUint(n.Add(1), 10)
		key, err := v.Import(ctx, id, data, nil)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidArgument, "Import error does not wrap ErrInvalidArgument")
			_, getErr := v.Get(ctx, id)
			require.ErrorIs(t, getErr, ErrNotFound, "a failed import left key %q", id)
			return
		}
		got, err := v.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, uint32(1), got.Primary)
		require.Len(t, got.Versions, 1)
		require.Equal(t, key.Versions[0].Algorithm, got.Versions[0].Algorithm)
		ver := got.Versions[0]
		scheme := SchemesFor(ver.Algorithm)[0]
		msg := []byte("fuzz")
		sig, err := v.Sign(ctx, id, 0, scheme, msg, false)
		require.NoError(t, err, "Sign with an imported key")
		require.NoError(t, verifySignature(ver.PublicKey, scheme, msg, sig), "imported key signs wrongly")
	})
}
