package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rawTestKey is an RSA key that offers the vault only what an HSM's does:
// the raw RSA operation and a rejection KDK, never the key for
// softwareRSA. Its KDK is the software one, so that both paths must
// give the same 48 bytes for every ciphertext.
type rawTestKey struct {
	priv *rsa.PrivateKey
	mu   *sync.Mutex
	ops  *[]string // the backend calls the vault made, in order
}

func (k rawTestKey) Public() crypto.PublicKey { return k.priv.Public() }

func (k rawTestKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.priv.Sign(r, digest, opts)
}

func (k rawTestKey) record(op string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	*k.ops = append(*k.ops, op)
}

// DecryptRaw is RSADP by the textbook (not in constant time: a test's).
func (k rawTestKey) DecryptRaw(ctx context.Context, ct []byte) ([]byte, error) {
	k.record("raw")
	m := new(big.Int).Exp(new(big.Int).SetBytes(ct), k.priv.D, k.priv.N)
	return m.FillBytes(make([]byte, k.priv.Size())), nil
}

func (k rawTestKey) RejectionKDK(ctx context.Context, ct []byte) ([]byte, error) {
	k.record("kdk")
	return softwareRSA{k.priv}.rejectionKDK(ctx, ct)
}

// rawTestBackend holds rawTestKeys in memory under the name "raw-test".
type rawTestBackend struct {
	mu        sync.Mutex
	ops       []string
	destroyed int
}

func (b *rawTestBackend) Name() string { return "raw-test" }

func (b *rawTestBackend) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	handle, _, err := softwareBackend{}.Generate(ctx, alg, label)
	if err != nil {
		return nil, nil, err
	}
	key, err := b.Load(ctx, alg, handle)
	return handle, key, err
}

func (b *rawTestBackend) Load(ctx context.Context, alg Algorithm, handle []byte) (crypto.Signer, error) {
	// The handle is the software backend's, parsed here: the software
	// backend's own key may be OpenSSL's (the openssl build tag).
	key, err := x509.ParsePKCS8PrivateKey(handle)
	if err != nil {
		return nil, err
	}
	return rawTestKey{priv: key.(*rsa.PrivateKey), mu: &b.mu, ops: &b.ops}, nil
}

func (b *rawTestBackend) Destroy(ctx context.Context, handle []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.destroyed++
	return nil
}

func (b *rawTestBackend) takeOps() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ops := b.ops
	b.ops = nil
	return ops
}

// encryptBlock is RSAEP of em, a block as long as the modulus: what a
// client with any padding of its choice sends.
func encryptBlock(pub *rsa.PublicKey, em []byte) []byte {
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, pub.Size()))
}

// pkcs1Block returns 0x00 0x02 PS 0x00 M for a k-byte modulus, PS nonzero.
func pkcs1Block(k int, msg []byte) []byte {
	em := make([]byte, k)
	em[1] = 2
	ps := em[2 : k-len(msg)-1]
	rand.Read(ps)
	for i := range ps {
		ps[i] |= 1
	}
	copy(em[k-len(msg):], msg)
	return em
}

// TestUnpadSessionKeyMatchesCryptoRSA decrypts well- and ill-formed PKCS #1
// v1.5 blocks through crypto/rsa, through the raw RSA operation and the
// vault's own unpadding (a backend's key), and as the software backend's
// key does (OpenSSL's raw RSA with the openssl build tag): every
// ciphertext must give the same 48 bytes, the premaster where crypto/rsa
// finds it and the same substitute where it does not.
func TestUnpadSessionKeyMatchesCryptoRSA(t *testing.T) {
	priv := testKey(t, RSA2048).(*rsa.PrivateKey)
	pub := &priv.PublicKey
	k := pub.Size()
	raw := rawTestKey{priv: priv, mu: new(sync.Mutex), ops: new([]string)}
	inMemory, err := memoryKey(priv)
	require.NoError(t, err)
	software, ok := rsaPrivateOf(inMemory)
	require.True(t, ok)
	premaster := make([]byte, premasterLen)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3

	cases := map[string]func() []byte{
		"valid":                func() []byte { return pkcs1Block(k, premaster) },
		"first byte not zero":  func() []byte { em := pkcs1Block(k, premaster); em[0] = 1; return em },
		"block type 1":         func() []byte { em := pkcs1Block(k, premaster); em[1] = 1; return em },
		"no separator":         func() []byte { em := pkcs1Block(k, premaster); em[k-premasterLen-1] = 7; return em },
		"47-byte message":      func() []byte { return pkcs1Block(k, premaster[:47]) },
		"49-byte message":      func() []byte { return pkcs1Block(k, append(bytes.Clone(premaster), 9)) },
		"zero in padding":      func() []byte { em := pkcs1Block(k, premaster); em[5] = 0; return em },
		"all zero":             func() []byte { return make([]byte, k) },
		"separator at the end": func() []byte { return pkcs1Block(k, nil) },
		"valid, other version": func() []byte { p := bytes.Clone(premaster); p[1] = 1; return pkcs1Block(k, p) },
	}
	for name, block := range cases {
		t.Run(name, func(t *testing.T) {
			ct := encryptBlock(pub, block())
			want, err := decryptPremaster(ctx, pub, softwareRSA{priv}, ct, tls.VersionTLS12)
			require.NoError(t, err)
			got, err := decryptPremaster(ctx, pub, rawRSA{raw}, ct, tls.VersionTLS12)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			fromBackend, err := decryptPremaster(ctx, pub, software, ct, tls.VersionTLS12)
			require.NoError(t, err)
			assert.Equal(t, want, fromBackend, "the software backend's key")
			assert.Len(t, got, premasterLen)
			if name == "valid" {
				assert.Equal(t, premaster, got, "a valid block yields its premaster")
			} else {
				assert.NotEqual(t, premaster, got, "a bad block yields the substitute")
			}
		})
	}
}

// TestBackendRouting creates keys in a second backend and checks that the
// vault records it, routes operations and destruction to it, and refuses
// to open a store whose keys need a backend it was not given.
func TestBackendRouting(t *testing.T) {
	b := &rawTestBackend{}
	path := filepath.Join(t.TempDir(), "vault.db")
	store, err := OpenBolt(path)
	require.NoError(t, err)
	v, err := New(ctx, store, testKEK, WithBackend(b))
	require.NoError(t, err)

	_, err = v.CreateInBackend(ctx, "pkcs11", "nowhere", RSA2048, nil)
	require.ErrorIs(t, err, ErrFailedPrecondition, "a backend the vault was not given")
	soft, err := v.Create(ctx, "soft", ECDSAP256, nil)
	require.NoError(t, err)
	assert.Equal(t, BackendSoftware, soft.Versions[0].Backend)
	imported := importTestKey(t, v, "imported", RSA2048)
	assert.Equal(t, BackendSoftware, imported.Versions[0].Backend)

	key, err := v.CreateInBackend(ctx, "raw-test", "in-backend", RSA2048, nil)
	require.NoError(t, err)
	assert.Equal(t, "raw-test", key.Versions[0].Backend)
	rotated, err := v.Rotate(ctx, "in-backend")
	require.NoError(t, err)
	assert.Equal(t, "raw-test", rotated.Versions[1].Backend, "a rotation stays in the key's backend")

	pub := key.Versions[0].PublicKey.(*rsa.PublicKey)
	b.takeOps()
	premaster, ct := encryptPremaster(t, pub, tls.VersionTLS12)
	got, err := v.Decrypt(ctx, "in-backend", 1, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12)
	require.NoError(t, err)
	assert.Equal(t, premaster, got)
	bad := bytes.Clone(ct)
	bad[10] ^= 1
	got, err = v.Decrypt(ctx, "in-backend", 1, DecryptRSAPKCS1TLSPremaster, bad, tls.VersionTLS12)
	require.NoError(t, err)
	assert.Len(t, got, premasterLen)
	assert.NotEqual(t, premaster, got)
	assert.Equal(t, []string{"kdk", "raw", "kdk", "raw"}, b.takeOps(), "a good and a bad ciphertext make the same backend calls")
	oaep, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("oaep"), nil)
	require.NoError(t, err)
	got, err = v.Decrypt(ctx, "in-backend", 1, DecryptRSAOAEPSHA256, oaep, 0)
	require.NoError(t, err)
	assert.Equal(t, []byte("oaep"), got)
	assert.Equal(t, []string{"raw"}, b.takeOps(), "OAEP by raw RSA and the vault's decoding")
	oaep[3] ^= 1
	_, err = v.Decrypt(ctx, "in-backend", 1, DecryptRSAOAEPSHA256, oaep, 0)
	assert.ErrorIs(t, err, ErrInvalidArgument)

	_, err = v.SetVersionEnabled(ctx, "in-backend", 1, false)
	require.NoError(t, err)
	_, err = v.DestroyVersion(ctx, "in-backend", 1)
	require.NoError(t, err)
	assert.Equal(t, 1, b.destroyed, "destroying a version destroys its key in the backend")
	require.NoError(t, v.Close())

	store, err = OpenBolt(path)
	require.NoError(t, err)
	_, err = New(ctx, store, testKEK)
	require.ErrorIs(t, err, ErrFailedPrecondition, "keys of a backend the vault was not given")
	assert.ErrorContains(t, err, "raw-test")
	require.NoError(t, store.Close())

	v = openTestVault(t, path, testKEK, WithBackend(b))
	reopened, err := v.Get(ctx, "in-backend")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, reopened.Versions[0].State)
	assert.Equal(t, "raw-test", reopened.Versions[1].Backend)
	msg := []byte("routed")
	sig, err := v.Sign(ctx, "in-backend", 2, tls.PSSWithSHA256, msg, false)
	require.NoError(t, err)
	require.NoError(t, verifySignature(reopened.Versions[1].PublicKey, tls.PSSWithSHA256, msg, sig))
	s, err := v.Get(ctx, "soft")
	require.NoError(t, err)
	assert.Equal(t, BackendSoftware, s.Versions[0].Backend, "after reopening")
}

// FuzzUnpadSessionKey compares the vault's constant-time unpadding of a
// decrypted block with the test's plain statement of RFC 8017 §7.2.2 step
// 3 for a 48-byte message: 0x00 0x02, at least 8 nonzero bytes, 0x00, then
// the message.
func FuzzUnpadSessionKey(f *testing.F) {
	premaster := bytes.Repeat([]byte{3}, premasterLen)
	f.Add(pkcs1Block(256, premaster))
	f.Add(pkcs1Block(64, premaster))
	f.Add(pkcs1Block(256, premaster[:47]))
	f.Add(make([]byte, 256))
	f.Add(pkcs1Block(59, premaster))
	f.Fuzz(func(t *testing.T, em []byte) {
		key := bytes.Repeat([]byte{0xaa}, premasterLen)
		err := unpadSessionKey(em, key)
		if len(em) < premasterLen+11 {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		want := bytes.Repeat([]byte{0xaa}, premasterLen)
		if em[0] == 0 && em[1] == 2 {
			if sep := bytes.IndexByte(em[2:], 0) + 2; sep >= 10 && len(em)-sep-1 == premasterLen {
				want = em[sep+1:]
			}
		}
		assert.Equal(t, want, key)
	})
}

// oaepBlock is the test's own EME-OAEP encoding (RFC 8017 §7.1.1 step 2)
// with SHA-256 and an empty label, with each part given: lead (0x00 when
// valid), the label hash, PS, the separator (0x01) and the message.
func oaepBlock(k int, lead byte, lHash []byte, sep byte, msg []byte) []byte {
	db := make([]byte, k-sha256.Size-1)
	copy(db, lHash)
	db[len(db)-len(msg)-1] = sep
	copy(db[len(db)-len(msg):], msg)
	seed := make([]byte, sha256.Size)
	rand.Read(seed)
	xorMGF1 := func(out, seed []byte) {
		for i, done := uint32(0), 0; done < len(out); i++ {
			block := sha256.Sum256(append(bytes.Clone(seed), byte(i>>24), byte(i>>16), byte(i>>8), byte(i)))
			for j := 0; j < len(block) && done < len(out); j++ {
				out[done] ^= block[j]
				done++
			}
		}
	}
	xorMGF1(db, seed)
	xorMGF1(seed, db)
	return append(append([]byte{lead}, seed...), db...)
}

// TestUnpadOAEPMatchesCryptoRSA decrypts well- and ill-formed OAEP blocks
// through crypto/rsa and through raw RSA and the vault's own decoding: the
// same message where crypto/rsa finds one, an error where it does not.
func TestUnpadOAEPMatchesCryptoRSA(t *testing.T) {
	priv := testKey(t, RSA2048).(*rsa.PrivateKey)
	pub := &priv.PublicKey
	k := pub.Size()
	raw := rawRSA{rawTestKey{priv: priv, mu: new(sync.Mutex), ops: new([]string)}}
	lHash := sha256.Sum256(nil)
	otherHash := sha256.Sum256([]byte("label"))
	msg := []byte("oaep message")
	cases := map[string]struct {
		em    []byte
		valid bool
	}{
		"valid":                 {oaepBlock(k, 0, lHash[:], 1, msg), true},
		"valid, empty message":  {oaepBlock(k, 0, lHash[:], 1, nil), true},
		"valid, longest":        {oaepBlock(k, 0, lHash[:], 1, make([]byte, k-2*sha256.Size-2)), true},
		"leading byte":          {oaepBlock(k, 1, lHash[:], 1, msg), false},
		"other label":           {oaepBlock(k, 0, otherHash[:], 1, msg), false},
		"separator 2":           {oaepBlock(k, 0, lHash[:], 2, msg), false},
		"no separator":          {oaepBlock(k, 0, lHash[:], 0, msg), false},
		"byte before separator": {oaepBlock(k, 0, lHash[:], 5, append([]byte{1}, msg...)), false},
		"random":                {func() []byte { b := make([]byte, k); rand.Read(b[1:]); return b }(), false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ct := encryptBlock(pub, tc.em)
			want, wantErr := rsa.DecryptOAEP(sha256.New(), nil, priv, ct, nil)
			got, err := raw.decryptOAEP(ctx, ct)
			require.Equal(t, wantErr == nil, err == nil, "crypto/rsa: %v, vault: %v", wantErr, err)
			assert.Equal(t, tc.valid, err == nil, "%v", err)
			assert.Equal(t, want, got)
			if err != nil {
				assert.Equal(t, errOAEP, err, "one error for every failure")
			}
		})
	}
}

// FuzzUnpadOAEP compares the vault's OAEP decoding with crypto/rsa's on
// any block, encrypted with the test key's public key.
func FuzzUnpadOAEP(f *testing.F) {
	lHash := sha256.Sum256(nil)
	f.Add(oaepBlock(256, 0, lHash[:], 1, []byte("m")))
	f.Add(oaepBlock(256, 0, lHash[:], 0, []byte("m")))
	f.Add(make([]byte, 256))
	f.Fuzz(func(t *testing.T, em []byte) {
		priv := testKey(t, RSA2048).(*rsa.PrivateKey)
		if len(em) != priv.Size() || new(big.Int).SetBytes(em).Cmp(priv.N) >= 0 {
			return
		}
		ct := encryptBlock(&priv.PublicKey, em)
		want, wantErr := rsa.DecryptOAEP(sha256.New(), nil, priv, ct, nil)
		got, err := unpadOAEP(bytes.Clone(em))
		require.Equal(t, wantErr == nil, err == nil)
		assert.Equal(t, want, got)
	})
}
