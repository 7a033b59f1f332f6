package service

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// BenchmarkHandshakeCertificate is what every handshake start pays per key
// it names, for a key rotated a few times: the allocations it reports are
// the ones to compare.
func BenchmarkHandshakeCertificate(b *testing.B) {
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(b.TempDir(), "keys.db"))
	require.NoError(b, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(b, err)
	b.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "p256-pkcs8.pem"))
	require.NoError(b, err)
	_, err = vault.Import(ctx, "key-a", pemKey, map[string]string{"team": "a"})
	require.NoError(b, err)
	for n := uint32(1); n <= 5; n++ {
		if n > 1 {
			_, err = vault.Rotate(ctx, "key-a")
			require.NoError(b, err)
		}
		der, err := vault.CreateSelfSignedCertificate(ctx, "key-a", n, &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		})
		require.NoError(b, err)
		_, err = vault.AttachChain(ctx, "key-a", n, [][]byte{der, der})
		require.NoError(b, err)
	}
	var certs certificates
	ref := &pb.KeyRef{Key: "key-a"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := handshakeCertificate(ctx, vault, &certs, ref); err != nil {
			b.Fatal(err)
		}
	}
}
