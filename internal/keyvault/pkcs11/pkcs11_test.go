//go:build pkcs11

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11"
	"github.com/handshaked/handshaked/internal/keyvault/pkcs11/softhsmtest"
	"github.com/handshaked/handshaked/internal/testenv"
)

var allAlgorithms = []keyvault.Algorithm{
	keyvault.RSA2048, keyvault.RSA3072, keyvault.RSA4096,
	keyvault.ECDSAP256, keyvault.ECDSAP384, keyvault.ECDSAP521, keyvault.Ed25519,
}

// newVault opens a vault on a new bolt file with b as its PKCS #11 backend.
func newVault(t testing.TB, b keyvault.KeyBackend) (*keyvault.Vault, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.db")
	return openVault(t, path, b), path
}

var testKEK = bytes.Repeat([]byte{7}, 32)

func openVault(t testing.TB, path string, b keyvault.KeyBackend) *keyvault.Vault {
	t.Helper()
	store, err := keyvault.OpenBolt(path)
	require.NoError(t, err)
	v, err := keyvault.New(t.Context(), store, testKEK, keyvault.WithBackend(b))
	if err != nil {
		store.Close()
		require.NoError(t, err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// hashOf is the test's own statement of each scheme's hash (RFC 8446
// §4.2.3), apart from the code under test; 0 for Ed25519.
func hashOf(scheme tls.SignatureScheme) crypto.Hash {
	switch scheme {
	case tls.PKCS1WithSHA256, tls.PSSWithSHA256, tls.ECDSAWithP256AndSHA256:
		return crypto.SHA256
	case tls.PKCS1WithSHA384, tls.PSSWithSHA384, tls.ECDSAWithP384AndSHA384:
		return crypto.SHA384
	case tls.PKCS1WithSHA512, tls.PSSWithSHA512, tls.ECDSAWithP521AndSHA512:
		return crypto.SHA512
	case tls.PKCS1WithSHA1, tls.ECDSAWithSHA1:
		return crypto.SHA1
	}
	return 0
}

// digestFor is msg hashed with scheme's hash.
func digestFor(scheme tls.SignatureScheme, msg []byte) []byte {
	hh := hashOf(scheme).New()
	hh.Write(msg)
	return hh.Sum(nil)
}

// verify checks sig over msg with the standard library.
func verify(pub crypto.PublicKey, scheme tls.SignatureScheme, msg, sig []byte) error {
	h := hashOf(scheme)
	var digest []byte
	if h != 0 {
		digest = digestFor(scheme, msg)
	}
	switch scheme {
	case tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512, tls.PKCS1WithSHA1:
		return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), h, digest, sig)
	case tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512:
		return rsa.VerifyPSS(pub.(*rsa.PublicKey), h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512, tls.ECDSAWithSHA1:
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case tls.Ed25519:
		if !ed25519.Verify(pub.(ed25519.PublicKey), msg, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("no verifier for %v", scheme)
}

// TestTokenKeysSignEveryScheme creates a key of every type in the token
// through the vault and checks every scheme it offers with the standard
// library, over the message and over the digest, before and after the
// vault is reopened on a new session of the token; the private keys are
// sensitive, non-extractable token objects, and the store holds only their
// URI.
func TestTokenKeysSignEveryScheme(t *testing.T) {
	b := softhsmtest.Open(t)
	v, path := newVault(t, b)
	msg := []byte("signed inside the token")
	check := func(t *testing.T, v *keyvault.Vault, id string, alg keyvault.Algorithm) {
		k, err := v.Get(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, keyvault.BackendPKCS11, k.Versions[0].Backend)
		pub := k.Versions[0].PublicKey
		schemes := keyvault.SchemesFor(alg)
		require.NotEmpty(t, schemes)
		for _, scheme := range schemes {
			sig, err := v.Sign(t.Context(), id, 0, scheme, msg, false)
			require.NoError(t, err, "%v", scheme)
			assert.NoError(t, verify(pub, scheme, msg, sig), "%v over the message", scheme)
			if scheme == tls.Ed25519 {
				continue
			}
			sig, err = v.Sign(t.Context(), id, 0, scheme, digestFor(scheme, msg), true)
			require.NoError(t, err, "%v", scheme)
			assert.NoError(t, verify(pub, scheme, msg, sig), "%v over the digest", scheme)
		}
	}
	for _, alg := range allAlgorithms {
		t.Run(alg.String(), func(t *testing.T) {
			id := keyID(alg)
			_, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, id, alg, nil)
			require.NoError(t, err)
			check(t, v, id, alg)
		})
	}
	require.NoError(t, v.Close())

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(raw), "pkcs11:", "the URIs are sealed in the store, like any record")

	b2 := softhsmtest.Open(t)
	v2 := openVault(t, path, b2)
	for _, alg := range allAlgorithms {
		t.Run("reopened/"+alg.String(), func(t *testing.T) { check(t, v2, keyID(alg), alg) })
	}
}

// keyID is the id of the test's key of alg: "hsm-rsa-2048", ...
func keyID(alg keyvault.Algorithm) string {
	return "hsm-" + strings.ToLower(strings.ReplaceAll(alg.String(), "_", "-"))
}

// TestTokenKeysStayInTheToken checks what the token says of a generated
// key: a sensitive, non-extractable token object whose private value it
// refuses to read; and that destroying the version destroys its objects.
func TestTokenKeysStayInTheToken(t *testing.T) {
	b := softhsmtest.Open(t)
	for _, alg := range []keyvault.Algorithm{keyvault.RSA2048, keyvault.ECDSAP256, keyvault.Ed25519} {
		t.Run(alg.String(), func(t *testing.T) {
			handle, key, err := b.Generate(t.Context(), alg, "flags test")
			require.NoError(t, err)
			uri, err := pkcs11.ParseObjectURI(string(handle))
			require.NoError(t, err)
			assert.Equal(t, softhsmtest.TokenLabel, uri.Token)
			assert.Equal(t, "private", uri.Type)
			sensitive, extractable, token, valueRead, err := pkcs11.KeyFlags(b, key)
			require.NoError(t, err)
			assert.True(t, sensitive, "CKA_SENSITIVE")
			assert.False(t, extractable, "CKA_EXTRACTABLE")
			assert.True(t, token, "CKA_TOKEN")
			assert.False(t, valueRead, "the token must not hand out the private value")

			n, err := pkcs11.ObjectsWithID(b, key)
			require.NoError(t, err)
			want := 2
			if alg == keyvault.RSA2048 {
				want = 3 // and the rejection key
			}
			assert.Equal(t, want, n)
			require.NoError(t, b.Destroy(t.Context(), handle))
			n, err = pkcs11.ObjectsWithID(b, key)
			require.NoError(t, err)
			assert.Zero(t, n, "destroyed")
			_, err = b.Load(t.Context(), alg, handle)
			assert.Error(t, err, "a destroyed key does not load")
		})
	}
}

// TestDestroyVersionDestroysTokenKey goes through the vault's lifecycle.
func TestDestroyVersionDestroysTokenKey(t *testing.T) {
	b := softhsmtest.Open(t)
	v, _ := newVault(t, b)
	_, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "doomed", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	k, err := v.Rotate(t.Context(), "doomed")
	require.NoError(t, err)
	require.Equal(t, keyvault.BackendPKCS11, k.Versions[1].Backend, "rotated inside the token")
	_, err = v.SetVersionEnabled(t.Context(), "doomed", 1, false)
	require.NoError(t, err)
	_, err = v.DestroyVersion(t.Context(), "doomed", 1)
	require.NoError(t, err)
	_, err = v.Sign(t.Context(), "doomed", 1, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	assert.ErrorIs(t, err, keyvault.ErrFailedPrecondition)
	_, err = v.Sign(t.Context(), "doomed", 2, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	assert.NoError(t, err)
}

// TestSessionsPooled signs from many goroutines: the backend opens more
// than one session, at most Config.Sessions, and every signature verifies.
func TestSessionsPooled(t *testing.T) {
	b := softhsmtest.Open(t)
	v, _ := newVault(t, b)
	k, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "pooled", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 16*20)
	for range 16 {
		wg.Go(func() {
			for range 20 {
				msg := make([]byte, 16)
				rand.Read(msg)
				sig, err := v.Sign(context.Background(), "pooled", 0, tls.ECDSAWithP256AndSHA256, msg, false)
				if err == nil {
					err = verify(k.Versions[0].PublicKey, tls.ECDSAWithP256AndSHA256, msg, sig)
				}
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	n := pkcs11.OpenedSessions(b)
	assert.Greater(t, n, 1, "concurrent signatures use several sessions")
	assert.LessOrEqual(t, n, softhsmtest.Config(t).Sessions)
}

// TestSessionsLost: when the token ends every session (and the login with
// them), a signature and a decryption still work: the lost sessions leave
// the pool and a new one logs in again, instead of each later call failing
// on a dead session.
func TestSessionsLost(t *testing.T) {
	b := softhsmtest.Open(t)
	v, _ := newVault(t, b)
	ec, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "lost-ec", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "lost-rsa", keyvault.RSA2048, nil)
	require.NoError(t, err)
	sign := func() error {
		msg := []byte("after the sessions ended")
		sig, err := v.Sign(t.Context(), "lost-ec", 0, tls.ECDSAWithP256AndSHA256, msg, false)
		if err == nil {
			err = verify(ec.Versions[0].PublicKey, tls.ECDSAWithP256AndSHA256, msg, sig)
		}
		return err
	}
	require.NoError(t, sign())
	for round := range 2 {
		require.NoError(t, pkcs11.CloseAllSessions(b))
		assert.NoError(t, sign(), "round %d: sign after every session ended", round)
		_, err := v.Decrypt(t.Context(), "lost-rsa", 0, keyvault.DecryptRSAPKCS1TLSPremaster, make([]byte, 256), tls.VersionTLS12)
		assert.NoError(t, err, "round %d: decrypt after every session ended", round)
		assert.Equal(t, 1, pkcs11.OpenedSessions(b), "round %d: the lost sessions left the pool", round)
	}
	// Destroying finds the objects again too.
	handle, key, err := b.Generate(t.Context(), keyvault.RSA2048, "lost and destroyed")
	require.NoError(t, err)
	require.NoError(t, pkcs11.CloseAllSessions(b))
	require.NoError(t, b.Destroy(t.Context(), handle))
	n, err := pkcs11.ObjectsWithID(b, key)
	require.NoError(t, err)
	assert.Zero(t, n, "the destroyed key's objects")
}

// TestSessionsLostFromFullPool: when the token ends every session while
// several are idle in the pool, the next call does not fail on the second
// dead one it takes: every lost session leaves the pool and the call runs
// on a new one.
func TestSessionsLostFromFullPool(t *testing.T) {
	b := softhsmtest.Open(t)
	v, _ := newVault(t, b)
	k, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "lost-pool", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	msg := []byte("after the pool's sessions ended")
	// Concurrent signatures open several sessions, all idle after.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				_, err := v.Sign(context.Background(), "lost-pool", 0, tls.ECDSAWithP256AndSHA256, msg, false)
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	require.GreaterOrEqual(t, pkcs11.OpenedSessions(b), 2, "idle sessions in the pool")
	require.NoError(t, pkcs11.CloseAllSessions(b))
	sig, err := v.Sign(t.Context(), "lost-pool", 0, tls.ECDSAWithP256AndSHA256, msg, false)
	require.NoError(t, err, "the first signature after every session ended")
	assert.NoError(t, verify(k.Versions[0].PublicKey, tls.ECDSAWithP256AndSHA256, msg, sig))
	assert.Equal(t, 1, pkcs11.OpenedSessions(b), "the lost sessions left the pool")
}

// TestPremasterWithTokenKey is the RFC 5246 §7.4.7.1 behaviour with a token
// key: a ciphertext openssl made decrypts to its 48 bytes; bad padding, a
// wrong client version and a message that is not 48 bytes each yield 48
// other bytes and no error, the same on every query and with the same
// calls into the token; only a ciphertext not of the modulus' length is
// refused.
func TestPremasterWithTokenKey(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	rb := &recordingBackend{Backend: softhsmtest.Open(t)}
	v, _ := newVault(t, rb)
	k, err := v.CreateInBackend(t.Context(), keyvault.BackendPKCS11, "premaster", keyvault.RSA2048, nil)
	require.NoError(t, err)
	pub := k.Versions[0].PublicKey.(*rsa.PublicKey)

	dir := t.TempDir()
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pub.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600))
	premaster := make([]byte, 48)
	rand.Read(premaster)
	premaster[0], premaster[1] = 3, 3
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pm"), premaster, 0o600))
	out, err := exec.Command(openssl, "pkeyutl", "-encrypt", "-pubin", "-inkey", filepath.Join(dir, "pub.pem"),
		"-pkeyopt", "rsa_padding_mode:pkcs1", "-in", filepath.Join(dir, "pm"), "-out", filepath.Join(dir, "ct")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	good, err := os.ReadFile(filepath.Join(dir, "ct"))
	require.NoError(t, err)

	decrypt := func(ct []byte) ([]byte, []string) {
		t.Helper()
		rb.take()
		got, err := v.Decrypt(t.Context(), "premaster", 0, keyvault.DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12)
		require.NoError(t, err, "status OK for every ciphertext of the modulus' length")
		require.Len(t, got, 48)
		return got, rb.take()
	}
	got, goodOps := decrypt(good)
	assert.Equal(t, premaster, got, "the openssl-made premaster")
	assert.Equal(t, []string{"kdk", "raw"}, goodOps)

	k256 := pub.Size()
	block := func(msg []byte) []byte { // 00 02 PS 00 msg
		em := make([]byte, k256)
		em[1] = 2
		ps := em[2 : k256-len(msg)-1]
		rand.Read(ps)
		for i := range ps {
			ps[i] |= 1
		}
		copy(em[k256-len(msg):], msg)
		return em
	}
	encrypt := func(em []byte) []byte {
		c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
		return c.FillBytes(make([]byte, k256))
	}
	wrongVersion := bytes.Clone(premaster)
	wrongVersion[1] = 1
	badType := block(premaster)
	badType[1] = 1
	bad := map[string][]byte{
		"bad padding":        encrypt(badType),
		"wrong version":      encrypt(block(wrongVersion)),
		"47-byte message":    encrypt(block(premaster[:47])),
		"49-byte message":    encrypt(block(append(bytes.Clone(premaster), 0))),
		"not below modulus":  pub.N.FillBytes(make([]byte, k256)),
		"flipped ciphertext": func() []byte { c := bytes.Clone(good); c[100] ^= 0x40; return c }(),
	}
	seen := map[string]string{}
	for name, ct := range bad {
		t.Run(name, func(t *testing.T) {
			got, ops := decrypt(ct)
			assert.NotEqual(t, premaster, got)
			again, _ := decrypt(ct)
			assert.Equal(t, got, again, "the same substitute on every query")
			if name != "not below modulus" { // refused before the token: the modulus is public
				assert.Equal(t, goodOps, ops, "the same token calls as a good ciphertext")
			}
			if other, dup := seen[string(got)]; dup {
				t.Errorf("%s and %s got the same bytes", name, other)
			}
			seen[string(got)] = name
		})
	}
	_, err = v.Decrypt(t.Context(), "premaster", 0, keyvault.DecryptRSAPKCS1TLSPremaster, good[1:], tls.VersionTLS12)
	assert.ErrorIs(t, err, keyvault.ErrInvalidArgument, "a ciphertext not of the modulus' length")

	// RSA-OAEP: raw RSA in the token, decoded by the vault (SoftHSM 2.6
	// does OAEP with SHA-1 only).
	msg := []byte("oaep through the token")
	oct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
	require.NoError(t, err)
	plain, err := v.Decrypt(t.Context(), "premaster", 0, keyvault.DecryptRSAOAEPSHA256, oct, 0)
	require.NoError(t, err)
	assert.Equal(t, msg, plain)
	oct[7] ^= 1
	_, err = v.Decrypt(t.Context(), "premaster", 0, keyvault.DecryptRSAOAEPSHA256, oct, 0)
	assert.ErrorIs(t, err, keyvault.ErrInvalidArgument)
}

// recordingBackend is the real backend, recording which token operations
// the vault asks of its RSA keys.
type recordingBackend struct {
	*pkcs11.Backend
	mu  sync.Mutex
	ops []string
}

func (r *recordingBackend) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

func (r *recordingBackend) add(op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
}

func (r *recordingBackend) Generate(ctx context.Context, alg keyvault.Algorithm, label string) ([]byte, crypto.Signer, error) {
	h, k, err := r.Backend.Generate(ctx, alg, label)
	if raw, ok := k.(keyvault.RawRSAKey); ok {
		k = recordingKey{raw, r}
	}
	return h, k, err
}

type recordingKey struct {
	keyvault.RawRSAKey
	r *recordingBackend
}

func (k recordingKey) DecryptRaw(ctx context.Context, c []byte) ([]byte, error) {
	k.r.add("raw")
	return k.RawRSAKey.DecryptRaw(ctx, c)
}

func (k recordingKey) RejectionKDK(ctx context.Context, c []byte) ([]byte, error) {
	k.r.add("kdk")
	return k.RawRSAKey.RejectionKDK(ctx, c)
}

// TestKEKWrappedInToken: a KEK wrapped by the token opens a vault after a
// restart with a new session, the wrapped form does not hold the KEK, and a
// changed one is refused.
func TestKEKWrappedInToken(t *testing.T) {
	b := softhsmtest.Open(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	wrapped, err := b.WrapKEK(t.Context(), kek)
	require.NoError(t, err)
	assert.NotContains(t, string(wrapped), string(kek))
	assert.NotContains(t, string(wrapped), fmt.Sprintf("%x", kek))
	wrapped2, err := b.WrapKEK(t.Context(), kek)
	require.NoError(t, err)
	assert.NotEqual(t, wrapped, wrapped2, "a fresh IV each time")

	b2 := softhsmtest.Open(t)
	got, err := b2.UnwrapKEK(t.Context(), wrapped)
	require.NoError(t, err)
	assert.Equal(t, kek, got)
	got, err = b2.UnwrapKEK(t.Context(), wrapped2)
	require.NoError(t, err)
	assert.Equal(t, kek, got, "the same wrapping key both times")

	tampered := bytes.Replace(wrapped, []byte(`"ciphertext": "`), []byte(`"ciphertext": "A`), 1)
	_, err = b2.UnwrapKEK(t.Context(), tampered)
	assert.Error(t, err)
	_, err = b2.UnwrapKEK(t.Context(), []byte(`{"format":"something else"}`))
	assert.ErrorContains(t, err, "not a wrapped key-encryption key")
}

// TestOpenSelectsToken finds the token by label or slot ID, and fails
// clearly on a wrong label, slot or module, or no PIN. (A wrong PIN is
// refused in a process of its own, TestPKCS11Instance: here the token is
// already logged in, which PKCS #11 keeps per application.)
func TestOpenSelectsToken(t *testing.T) {
	cfg := softhsmtest.Config(t)
	b := softhsmtest.Open(t)
	bySlot := cfg
	bySlot.TokenLabel, bySlot.Slot = "", pkcs11.SlotOf(b)
	b2, err := pkcs11.Open(bySlot)
	require.NoError(t, err, "by slot")
	handle, _, err := b2.Generate(t.Context(), keyvault.ECDSAP256, "by slot")
	require.NoError(t, err)
	require.NoError(t, b2.Destroy(t.Context(), handle))
	require.NoError(t, b2.Close())

	for name, change := range map[string]func(*pkcs11.Config){
		"no token labelled":  func(c *pkcs11.Config) { c.TokenLabel = "other" },
		"no token in slot":   func(c *pkcs11.Config) { c.TokenLabel, c.Slot = "", pkcs11.SlotOf(b)+1000 },
		"cannot load module": func(c *pkcs11.Config) { c.Module = filepath.Join(t.TempDir(), "missing.so") },
		"no user PIN":        func(c *pkcs11.Config) { c.PIN = "" },
	} {
		c := cfg
		change(&c)
		_, err := pkcs11.Open(c)
		assert.ErrorContains(t, err, name)
		if err != nil {
			assert.NotContains(t, err.Error(), cfg.PIN)
		}
	}
}

func TestObjectURI(t *testing.T) {
	u := pkcs11.ObjectURI{Token: "my token;1", Object: "handshaked/k/1", ID: []byte{0, 0xff, ';', '='}, Type: "private"}
	s := u.String()
	assert.Equal(t, "pkcs11:token=my%20token%3B1;object=handshaked%2Fk%2F1;id=%00%FF%3B%3D;type=private", s)
	back, err := pkcs11.ParseObjectURI(s)
	require.NoError(t, err)
	assert.Equal(t, u, back)
	for _, bad := range []string{
		"pkcs12:token=t;id=%01;type=private",
		"pkcs11:token=t;id=%01",
		"pkcs11:token=t;id=%01;type=private;token=u",
		"pkcs11:token=t;id=%01;type=private?pin-value=1",
		"pkcs11:token=t;id=%zz;type=private",
		"pkcs11:token=t;slot-id=1;id=%01;type=private",
	} {
		_, err := pkcs11.ParseObjectURI(bad)
		assert.Error(t, err, bad)
	}
}

// TestConfigDoesNotPrintPIN: a Config printed by fmt or logged by slog names
// its token but never shows the PIN.
func TestConfigDoesNotPrintPIN(t *testing.T) {
	const pin = "pin-4711-secret"
	cfg := pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "handshaked", PIN: pin}
	var log bytes.Buffer
	slog.New(slog.NewJSONHandler(&log, nil)).Info("token", "config", cfg)
	slog.New(slog.NewTextHandler(&log, nil)).Info("token", "config", cfg)
	for _, out := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%v", &cfg), log.String()} {
		assert.NotContains(t, out, pin)
		assert.Contains(t, out, "handshaked", "the configuration is still described")
	}
}

// TestBackendDoesNotPrintPIN: the backend keeps the PIN (to log in again
// after the token ended its sessions) and prints its token, never the PIN.
func TestBackendDoesNotPrintPIN(t *testing.T) {
	cfg := softhsmtest.Config(t)
	b := softhsmtest.Open(t)
	var log bytes.Buffer
	slog.New(slog.NewJSONHandler(&log, nil)).Info("token", "backend", b)
	slog.New(slog.NewTextHandler(&log, nil)).Info("token", "backend", b)
	for _, out := range []string{fmt.Sprint(b), fmt.Sprintf("%+v", b), fmt.Sprintf("%#v", b), log.String()} {
		assert.NotContains(t, out, cfg.PIN)
		assert.Contains(t, out, softhsmtest.TokenLabel, "the backend is still described")
	}
}
