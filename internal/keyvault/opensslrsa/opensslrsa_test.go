//go:build openssl

package opensslrsa_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault/opensslrsa"
)

// testKey reads an RSA key of testdata/keys (gen.sh).
func testKey(t testing.TB, name string) *rsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "keys", name))
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block, name)
	if block.Type == "RSA PRIVATE KEY" {
		priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		require.NoError(t, err)
		return priv
	}
	priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	return priv.(*rsa.PrivateKey)
}

var keyFiles = []string{"rsa2048-pkcs1.pem", "rsa3072-pkcs8.pem", "rsa4096-pkcs1.pem"}

var hashes = []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}

func digestOf(h crypto.Hash, msg string) []byte {
	d := h.New()
	d.Write([]byte(msg))
	return d.Sum(nil)
}

// PKCS #1 v1.5 signatures are deterministic (RFC 8017 §8.2.1), so
// OpenSSL's must be crypto/rsa's byte for byte.
func TestSignPKCS1v15IsCryptoRSAs(t *testing.T) {
	for _, file := range keyFiles {
		priv := testKey(t, file)
		key, err := opensslrsa.New(priv)
		require.NoError(t, err)
		assert.True(t, priv.PublicKey.Equal(key.Public()), "%s: public key", file)
		for _, h := range hashes {
			digest := digestOf(h, "transcript")
			got, err := key.Sign(nil, digest, h)
			require.NoError(t, err, "%s %v", file, h)
			want, err := rsa.SignPKCS1v15(nil, priv, h, digest)
			require.NoError(t, err)
			assert.Equal(t, want, got, "%s %v", file, h)
		}
	}
}

// TLS signs RSA-PSS with MGF1 over the message hash and a salt as long as
// the hash (RFC 8446 §4.2.3); crypto/rsa's verification with that exact
// salt length fails any other.
func TestSignPSS(t *testing.T) {
	priv := testKey(t, "rsa2048-pkcs1.pem")
	key, err := opensslrsa.New(priv)
	require.NoError(t, err)
	for _, h := range hashes {
		digest := digestOf(h, "transcript")
		sig, err := key.Sign(nil, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h})
		require.NoError(t, err, "%v", h)
		assert.NoError(t, rsa.VerifyPSS(&priv.PublicKey, h, digest, sig, &rsa.PSSOptions{SaltLength: h.Size()}), "%v salt = hash", h)
		again, err := key.Sign(nil, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h})
		require.NoError(t, err)
		assert.NotEqual(t, sig, again, "%v: two PSS signatures with the same salt", h)

		// crypto/rsa's PSSSaltLengthAuto signs with the longest salt.
		sig, err = key.Sign(nil, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: h})
		require.NoError(t, err)
		longest := priv.Size() - h.Size() - 2
		assert.NoError(t, rsa.VerifyPSS(&priv.PublicKey, h, digest, sig, &rsa.PSSOptions{SaltLength: longest}), "%v longest salt", h)

		sig, err = key.Sign(nil, digest, &rsa.PSSOptions{SaltLength: 20, Hash: h})
		require.NoError(t, err)
		assert.NoError(t, rsa.VerifyPSS(&priv.PublicKey, h, digest, sig, &rsa.PSSOptions{SaltLength: 20}), "%v 20-byte salt", h)
	}
}

func TestSignRejects(t *testing.T) {
	key, err := opensslrsa.New(testKey(t, "rsa2048-pkcs1.pem"))
	require.NoError(t, err)
	_, err = key.Sign(nil, make([]byte, 31), crypto.SHA256)
	assert.ErrorContains(t, err, "digest is 32 bytes", "short digest")
	_, err = key.Sign(nil, make([]byte, 16), crypto.MD5)
	assert.ErrorContains(t, err, "unsupported hash", "MD5")
	_, err = key.Sign(nil, make([]byte, 32), crypto.Hash(0))
	assert.ErrorContains(t, err, "unsupported hash", "no hash")
	_, err = key.Sign(nil, make([]byte, 64), &rsa.PSSOptions{SaltLength: 1000, Hash: crypto.SHA512})
	assert.ErrorContains(t, err, "opensslrsa: sign:", "a salt longer than the modulus allows")
}

// DecryptRaw is RSADP: m = c^d mod n, padded to the modulus' length,
// whatever m holds.
func TestDecryptRaw(t *testing.T) {
	for _, file := range keyFiles {
		priv := testKey(t, file)
		key, err := opensslrsa.New(priv)
		require.NoError(t, err)
		for range 4 {
			c, err := rand.Int(rand.Reader, priv.N)
			require.NoError(t, err)
			ct := c.FillBytes(make([]byte, priv.Size()))
			got, err := key.DecryptRaw(ct)
			require.NoError(t, err, file)
			want := new(big.Int).Exp(c, priv.D, priv.N).FillBytes(make([]byte, priv.Size()))
			assert.Equal(t, want, got, file)
		}
		_, err = key.DecryptRaw(bytes.Repeat([]byte{0xff}, priv.Size()))
		assert.Error(t, err, "%s: a ciphertext not below the modulus", file)
		_, err = key.DecryptRaw(make([]byte, priv.Size()-1))
		assert.ErrorContains(t, err, "ciphertext is", "%s: short ciphertext", file)
	}
}

// One key serves many goroutines at once, as the vault's does; each
// operation leaves its thread's error queue empty, so a failure does not
// show in another goroutine's operation.
func TestConcurrentUse(t *testing.T) {
	priv := testKey(t, "rsa2048-pkcs1.pem")
	key, err := opensslrsa.New(priv)
	require.NoError(t, err)
	digest := digestOf(crypto.SHA256, "transcript")
	want, err := rsa.SignPKCS1v15(nil, priv, crypto.SHA256, digest)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 10 {
				if g%2 == 0 {
					_, err := key.Sign(nil, make([]byte, 64), &rsa.PSSOptions{SaltLength: 1000, Hash: crypto.SHA512})
					assert.Error(t, err)
					continue
				}
				sig, err := key.Sign(nil, digest, crypto.SHA256)
				assert.NoError(t, err)
				assert.Equal(t, want, sig)
			}
		})
	}
	wg.Wait()
}

func TestVersion(t *testing.T) {
	assert.Regexp(t, `^OpenSSL [3-9]\.`, opensslrsa.Version())
	assert.NoError(t, opensslrsa.CheckVersion(0x30000080, "OpenSSL 3.0.8"))
	assert.NoError(t, opensslrsa.CheckVersion(0x30200000, "OpenSSL 3.2.0"))
	assert.ErrorContains(t, opensslrsa.CheckVersion(0x30000070, "OpenSSL 3.0.7"), "OpenSSL 3.0.7 is older than 3.0.8")
}

// FuzzDecryptRaw checks OpenSSL's RSADP of any 256 bytes (the input,
// left-padded or cut): below the
// modulus a block m with m^e mod n = c (RSA is a permutation of Z_n, so
// that m is c^d mod n, and checking it costs 17 multiplications instead of
// an exponentiation), an error at or above it (a public fact), whatever the
// bytes are.
func FuzzDecryptRaw(f *testing.F) {
	priv := testKey(f, "rsa2048-pkcs1.pem")
	key, err := opensslrsa.New(priv)
	require.NoError(f, err)
	f.Add(make([]byte, priv.Size()))
	f.Add(bytes.Repeat([]byte{0xff}, priv.Size()))
	f.Add(priv.N.Bytes())
	f.Add(new(big.Int).Sub(priv.N, big.NewInt(1)).Bytes())
	f.Add(append(make([]byte, priv.Size()-1), 1))
	f.Fuzz(func(t *testing.T, in []byte) {
		// Every input is a ciphertext of the modulus' length: TestDecryptRaw
		// covers other lengths.
		ct := make([]byte, priv.Size())
		copy(ct[max(0, len(ct)-len(in)):], in)
		got, err := key.DecryptRaw(ct)
		c := new(big.Int).SetBytes(ct)
		if c.Cmp(priv.N) >= 0 {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Len(t, got, priv.Size())
		m := new(big.Int).SetBytes(got)
		assert.Equal(t, -1, m.Cmp(priv.N), "the block is below the modulus")
		assert.Equal(t, 0, new(big.Int).Exp(m, big.NewInt(int64(priv.E)), priv.N).Cmp(c), "m^e mod n = c")
	})
}
