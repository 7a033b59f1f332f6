package service

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
