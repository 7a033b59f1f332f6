package keyvault

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCreateSelfSignedCertificate: the vault issues a certificate signed by
// the version asked for, and only by an enabled one; a template the
// standard library refuses is the caller's mistake.
func TestCreateSelfSignedCertificate(t *testing.T) {
	v, _ := newTestVault(t)
	key := importTestKey(t, v, "web", ECDSAP256)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "web.example"},
		DNSNames:     []string{"web.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}

	der, err := v.CreateSelfSignedCertificate(ctx, "web", 1, tmpl)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	assert.NoError(t, cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature), "signed by its own key")
	assert.True(t, cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Versions[0].PublicKey), "the certificate is for version 1's key")

	wrongAlg := *tmpl
	wrongAlg.SignatureAlgorithm = x509.PureEd25519
	_, err = v.CreateSelfSignedCertificate(ctx, "web", 1, &wrongAlg)
	assert.ErrorIs(t, err, ErrInvalidArgument, "an Ed25519 signature asked of a P-256 key")

	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = v.CreateSelfSignedCertificate(ctx, "web", 1, tmpl)
	assert.ErrorIs(t, err, ErrFailedPrecondition, "a disabled version signs nothing")
	_, err = v.CreateSelfSignedCertificate(ctx, "web", 2, tmpl)
	assert.ErrorIs(t, err, ErrNotFound, "no version 2")
	_, err = v.CreateSelfSignedCertificate(ctx, "nope", 0, tmpl)
	assert.ErrorIs(t, err, ErrNotFound, "no such key")
}
