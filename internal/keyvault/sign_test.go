package keyvault

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSign(t *testing.T) {
	v, _ := newTestVault(t)
	msg := []byte("the transcript hash input of a CertificateVerify")
	for alg := RSA2048; alg <= Ed25519; alg++ {
		id := strings.ToLower(strings.ReplaceAll(alg.String(), "_", "-"))
		key := importTestKey(t, v, id, alg)
		pub := key.Versions[0].PublicKey
		fits := SchemesFor(alg)
		for _, scheme := range allSchemes {
			for _, isDigest := range []bool{false, true} {
				t.Run(alg.String()+"/"+scheme.String()+map[bool]string{false: "/message", true: "/digest"}[isDigest], func(t *testing.T) {
					input := msg
					if h := testHash(scheme); isDigest && h != 0 {
						hh := h.New()
						hh.Write(msg)
						input = hh.Sum(nil)
					}
					sig, err := v.Sign(ctx, id, 0, scheme, input, isDigest)
					if !slices.Contains(fits, scheme) || (isDigest && scheme == tls.Ed25519) {
						assert.ErrorIs(t, err, ErrInvalidArgument)
						return
					}
					require.NoError(t, err)
					assert.NoError(t, verifySignature(pub, scheme, msg, sig))
				})
			}
		}
	}
}

// TestSchemesFor states RFC 8446 §4.2.3 for the vault's algorithms: every
// RSA key does the three rsa_pss_rsae and the three rsa_pkcs1 schemes, and
// an ECDSA key every ECDSA scheme, since in TLS 1.2 the scheme names only
// the hash; its own curve's comes first.
func TestSchemesFor(t *testing.T) {
	ecdsaAll := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512}
	want := map[Algorithm]int{RSA2048: 6, RSA3072: 6, RSA4096: 6, ECDSAP256: 3, ECDSAP384: 3, ECDSAP521: 3, Ed25519: 1, AlgorithmUnspecified: 0}
	own := map[Algorithm]tls.SignatureScheme{ECDSAP256: tls.ECDSAWithP256AndSHA256, ECDSAP384: tls.ECDSAWithP384AndSHA384, ECDSAP521: tls.ECDSAWithP521AndSHA512}
	for alg, n := range want {
		got := SchemesFor(alg)
		assert.Len(t, got, n, "SchemesFor(%v) = %v", alg, got)
		if s, ok := own[alg]; ok {
			assert.Equal(t, s, got[0], "%v first", alg)
			assert.ElementsMatch(t, ecdsaAll, got, "%v", alg)
		}
	}
	// The result is the caller's to modify.
	s := SchemesFor(ECDSAP256)
	s[0] = tls.Ed25519
	assert.Equal(t, tls.ECDSAWithP256AndSHA256, SchemesFor(ECDSAP256)[0], "modifying the result of SchemesFor changed the vault's table")
}

// TestSignatureSchemes: the key says what it can sign for each TLS version.
// In TLS 1.3 an ECDSA key has only its curve's scheme and an RSA key no
// rsa_pkcs1 (RFC 8446 §4.2.3); in TLS 1.2 both have more.
func TestSignatureSchemes(t *testing.T) {
	v, _ := newTestVault(t)
	for _, alg := range []Algorithm{RSA2048, ECDSAP256, ECDSAP384, ECDSAP521, Ed25519} {
		importTestKey(t, v, strings.ToLower(strings.ReplaceAll(alg.String(), "_", "-")), alg)
	}
	pss := []tls.SignatureScheme{tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512}
	want := map[string]map[uint16][]tls.SignatureScheme{
		"rsa-2048": {tls.VersionTLS13: pss, tls.VersionTLS12: append(slices.Clone(pss), tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512)},
		"ecdsa-p256": {tls.VersionTLS13: {tls.ECDSAWithP256AndSHA256},
			tls.VersionTLS12: {tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512}},
		"ecdsa-p384": {tls.VersionTLS13: {tls.ECDSAWithP384AndSHA384},
			tls.VersionTLS12: {tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP521AndSHA512}},
		"ecdsa-p521": {tls.VersionTLS13: {tls.ECDSAWithP521AndSHA512},
			tls.VersionTLS12: {tls.ECDSAWithP521AndSHA512, tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384}},
		"ed25519": {tls.VersionTLS13: {tls.Ed25519}, tls.VersionTLS12: {tls.Ed25519}},
	}
	for id, byVersion := range want {
		for vers, schemes := range byVersion {
			got, err := v.SignatureSchemes(ctx, id, 0, vers)
			require.NoError(t, err)
			assert.Equal(t, schemes, got, "%s at %#04x", id, vers)
			// Whatever the key says it can do, Sign does.
			for _, s := range got {
				_, err := v.Sign(ctx, id, 0, s, []byte("m"), false)
				assert.NoError(t, err, "%s %v", id, s)
			}
		}
	}
	for _, vers := range []uint16{0, tls.VersionTLS11, 0x0305} {
		_, err := v.SignatureSchemes(ctx, "ed25519", 0, vers)
		assert.ErrorIs(t, err, ErrInvalidArgument, "version %#04x", vers)
	}
	_, err := v.SignatureSchemes(ctx, "nope", 0, tls.VersionTLS13)
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = v.SetVersionEnabled(ctx, "ed25519", 1, false)
	require.NoError(t, err)
	_, err = v.SignatureSchemes(ctx, "ed25519", 1, tls.VersionTLS13)
	assert.ErrorIs(t, err, ErrFailedPrecondition)
}

// TestSignECDSAOtherHash is the TLS 1.2 case of issue 8 item 4: a P-384 key
// asked for ecdsa_secp256r1_sha256 signs ECDSA over SHA-256, which verifies
// with the key and that hash.
func TestSignECDSAOtherHash(t *testing.T) {
	v, _ := newTestVault(t)
	pub := importTestKey(t, v, "p384", ECDSAP384).Versions[0].PublicKey.(*ecdsa.PublicKey)
	msg := []byte("ServerKeyExchange params")
	sig, err := v.Sign(ctx, "p384", 0, tls.ECDSAWithP256AndSHA256, msg, false)
	require.NoError(t, err)
	digest := sha256.Sum256(msg)
	assert.True(t, ecdsa.VerifyASN1(pub, digest[:], sig))
	sig, err = v.Sign(ctx, "p384", 0, tls.ECDSAWithP256AndSHA256, digest[:], true)
	require.NoError(t, err)
	assert.True(t, ecdsa.VerifyASN1(pub, digest[:], sig))
}

// TestCreateP521: a P-521 key made in the vault signs ecdsa_secp521r1_sha512
// and, stored under the name ECDSA_P521, still does after a reopen.
func TestCreateP521(t *testing.T) {
	v, path := newTestVault(t)
	key, err := v.Create(ctx, "p521", ECDSAP521, nil)
	require.NoError(t, err)
	assert.Equal(t, ECDSAP521, key.Versions[0].Algorithm)
	sig, err := v.Sign(ctx, "p521", 1, tls.ECDSAWithP521AndSHA512, []byte("m"), false)
	require.NoError(t, err)
	assert.NoError(t, verifySignature(key.Versions[0].PublicKey, tls.ECDSAWithP521AndSHA512, []byte("m"), sig))

	require.NoError(t, v.Close())
	v = openTestVault(t, path, testKEK)
	got, err := v.Get(ctx, "p521")
	require.NoError(t, err)
	assert.Equal(t, ECDSAP521, got.Versions[0].Algorithm)
	sig, err = v.Sign(ctx, "p521", 1, tls.ECDSAWithP521AndSHA512, []byte("m"), false)
	require.NoError(t, err)
	assert.NoError(t, verifySignature(got.Versions[0].PublicKey, tls.ECDSAWithP521AndSHA512, []byte("m"), sig))
}

// TestSignVersion: SignVersion names the version that signed and its
// algorithm, the primary for version 0, the one asked for otherwise; a
// disabled version is named with its refusal, a missing one not at all.
func TestSignVersion(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "key", ECDSAP256)
	_, err := v.Rotate(ctx, "key")
	require.NoError(t, err)
	digest := sha256.Sum256([]byte("m"))
	for version, want := range map[uint32]uint32{0: 2, 1: 1, 2: 2} {
		sig, used, err := v.SignVersion(ctx, "key", version, tls.ECDSAWithP256AndSHA256, digest[:], true)
		require.NoError(t, err, "version %d", version)
		assert.Equal(t, UsedVersion{Number: want, Algorithm: ECDSAP256}, used, "version %d", version)
		k, err := v.Get(ctx, "key")
		require.NoError(t, err)
		assert.True(t, ecdsa.VerifyASN1(k.Versions[want-1].PublicKey.(*ecdsa.PublicKey), digest[:], sig), "version %d signed with version %d", version, want)
	}
	_, err = v.SetVersionEnabled(ctx, "key", 1, false)
	require.NoError(t, err)
	_, used, err := v.SignVersion(ctx, "key", 1, tls.ECDSAWithP256AndSHA256, digest[:], true)
	assert.ErrorIs(t, err, ErrFailedPrecondition)
	assert.Equal(t, UsedVersion{Number: 1, Algorithm: ECDSAP256}, used)
	for _, missing := range []struct {
		id      string
		version uint32
	}{{"key", 3}, {"nokey", 0}} {
		_, used, err = v.SignVersion(ctx, missing.id, missing.version, tls.ECDSAWithP256AndSHA256, digest[:], true)
		assert.ErrorIs(t, err, ErrNotFound)
		assert.Zero(t, used)
	}
}
