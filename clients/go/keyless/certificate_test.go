package keyless_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	"github.com/handshaked/handshaked/clients/go/keyless"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// swappedChain is a service that answers the certificate chain of one key
// for another, as a misrouting proxy or a faulty replica could: the vault
// itself refuses to attach such a chain, so only the client can notice.
type swappedChain struct {
	keyless.Vault
	chainOf string
}

// noChain answers an empty chain, as a Vault other than the SDK's could.
type noChain struct{ keyless.Vault }

func (noChain) CertificateChain(context.Context, string, uint32) ([][]byte, uint32, error) {
	return nil, 1, nil
}

func (s swappedChain) CertificateChain(ctx context.Context, id string, version uint32) ([][]byte, uint32, error) {
	chain, _, err := s.Vault.CertificateChain(ctx, s.chainOf, 0)
	if err != nil {
		return nil, 0, err
	}
	_, version, err = s.Vault.PublicKey(ctx, id, version)
	return chain, version, err
}

// TestCertificateLeafMatchesKey: keyless.Certificate refuses a chain whose
// leaf certifies another public key than the vault key's, for each key
// type, and accepts the right one.
func TestCertificateLeafMatchesKey(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	c := handshaked.New(srv.Conn)
	ctx := context.Background()
	keys := []servicetest.ServerKey{
		srv.ServerKey(t, "rsa", "rsa2048-pkcs1.pem", "rsa.test"),
		srv.ServerKey(t, "p256", "p256-pkcs8.pem", "p256.test"),
		srv.ServerKey(t, "ed25519", "ed25519-pkcs8.pem", "ed25519.test"),
	}
	for i, key := range keys {
		cert, err := keyless.Certificate(ctx, c, key.ID)
		require.NoError(t, err, key.ID)
		assert.Equal(t, key.Chain, cert.Certificate, key.ID)

		other := keys[(i+1)%len(keys)]
		_, err = keyless.Certificate(ctx, swappedChain{Vault: c, chainOf: other.ID}, key.ID)
		assert.ErrorContains(t, err, "does not certify", "%s with the chain of %s", key.ID, other.ID)
	}
	// The same key type, another key.
	rsa3072 := srv.ServerKey(t, "rsa3072", "rsa3072-pkcs8.pem", "rsa3072.test")
	_, err := keyless.Certificate(ctx, swappedChain{Vault: c, chainOf: rsa3072.ID}, "rsa")
	assert.ErrorContains(t, err, "does not certify", "rsa with the chain of another RSA key")

	// An empty chain is an error, not a panic.
	_, err = keyless.Certificate(ctx, noChain{c}, "rsa")
	assert.ErrorContains(t, err, "no certificate chain")
}
