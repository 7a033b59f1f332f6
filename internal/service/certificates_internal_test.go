package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// selfSignedDER is a certificate for name, under a new key.
func selfSignedDER(t *testing.T, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}, &x509.Certificate{Subject: pkix.Name{CommonName: name}}, &key.PublicKey, key)
	require.NoError(t, err)
	return der
}

// TestCertificatesFollowTheChain: the parsed certificate of a key version
// is reused only while its chain is the same bytes; a new chain attached to
// the version is served at once, and a chain the engine refuses is refused
// every time.
func TestCertificatesFollowTheChain(t *testing.T) {
	var certs certificates
	a, b := selfSignedDER(t, "a.test"), selfSignedDER(t, "b.test")

	first, err := certs.get("k/1", [][]byte{a})
	require.NoError(t, err)
	assert.Equal(t, "a.test", first.Leaf().Subject.CommonName)
	again, err := certs.get("k/1", [][]byte{append([]byte(nil), a...)})
	require.NoError(t, err)
	assert.Same(t, first.Leaf(), again.Leaf(), "the same chain was parsed again")

	next, err := certs.get("k/1", [][]byte{b})
	require.NoError(t, err)
	assert.Equal(t, "b.test", next.Leaf().Subject.CommonName, "a new chain of the version was not served")
	assert.Equal(t, "k/1", next.KeyRef)
	longer, err := certs.get("k/1", [][]byte{b, a})
	require.NoError(t, err)
	assert.Len(t, longer.Chain, 2, "a chain grown by an intermediate was not served")

	other, err := certs.get("k/2", [][]byte{a})
	require.NoError(t, err)
	assert.Equal(t, "k/2", other.KeyRef)

	_, err = certs.get("k/3", [][]byte{[]byte("not a certificate")})
	require.Error(t, err)
	_, err = certs.get("k/3", [][]byte{[]byte("not a certificate")})
	require.Error(t, err, "a refused chain was cached")
}

// TestCertificatesBounded: the cache never holds more than
// maxCertificates entries.
func TestCertificatesBounded(t *testing.T) {
	var certs certificates
	der := selfSignedDER(t, "a.test")
	for i := range maxCertificates + 10 {
		_, err := certs.get(keyRef("k", uint32(i)), [][]byte{der})
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, len(certs.certs), maxCertificates)
}

// TestCertificatesForgottenOnChange: a change of a key in the vault's view
// drops the parsed certificates of that key, and of no other.
func TestCertificatesForgottenOnChange(t *testing.T) {
	ctx := context.Background()
	h, _ := goldenHandshake(t, nil)
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p384-sec1.pem"))
	require.NoError(t, err)
	_, err = h.vault.Import(ctx, "other", pemKey, nil)
	require.NoError(t, err)
	AttachSelfSigned(t, h.vault, "other")
	cached := func() []string {
		h.certs.mu.Lock()
		defer h.certs.mu.Unlock()
		return slices.Sorted(maps.Keys(h.certs.certs))
	}
	for _, id := range []string{"golden", "other"} {
		_, err := handshakeCertificate(ctx, h.vault, &h.certs, &pb.KeyRef{Key: id})
		require.NoError(t, err)
	}
	require.Equal(t, []string{"golden/1", "other/1"}, cached())

	_, err = h.vault.Rotate(ctx, "golden")
	require.NoError(t, err)
	assert.Equal(t, []string{"other/1"}, cached(), "a rotation kept the key's parsed certificates")
	_, err = handshakeCertificate(ctx, h.vault, &h.certs, &pb.KeyRef{Key: "golden", Version: 1})
	require.NoError(t, err)
	der, err := h.vault.CreateSelfSignedCertificate(ctx, "golden", 2, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "golden.test"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
	})
	require.NoError(t, err)
	_, err = h.vault.AttachChain(ctx, "golden", 2, [][]byte{der})
	require.NoError(t, err)
	assert.Equal(t, []string{"other/1"}, cached(), "a new chain kept the key's parsed certificates")
	_, err = h.vault.SetVersionEnabled(ctx, "other", 1, false)
	require.NoError(t, err)
	assert.Empty(t, cached(), "a disabled version's parsed certificate was kept")
}
