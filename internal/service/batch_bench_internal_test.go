package service

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// BenchmarkBatchItems measures, in process and in one run, what the
// Batch handler adds to each operation beyond the vault's own signing:
// the guard's per-item admission, the handler's checks, the key metrics,
// the results. Ed25519 is the cheapest signature, so the overhead shows
// most; compare batch8 (per operation) with vault:
//
//	go test -run '^$' -bench BatchItems -benchmem -count 5 ./internal/service/
func BenchmarkBatchItems(b *testing.B) {
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(b.TempDir(), "keys.db"))
	require.NoError(b, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(b, err)
	b.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "ed25519-pkcs8.pem"))
	require.NoError(b, err)
	_, err = vault.Import(ctx, "key-ed", pemKey, nil)
	require.NoError(b, err)
	kv, err := newKeyVault(vault, func(context.Context, *keyvault.Key) bool { return true }, "", nil)
	require.NoError(b, err)
	kv.keys = newKeyMetrics(prometheus.NewRegistry())
	kv.batchItem = newGuard(vault, Options{}, prometheus.NewRegistry()).batchItem
	message := make([]byte, 100)

	b.Run("vault", func(b *testing.B) {
		cpu(b, func() error {
			_, err := vault.Sign(ctx, "key-ed", 0, tls.Ed25519, message, false)
			return err
		})
	})
	b.Run("batch8", func(b *testing.B) {
		const size = 8
		req := &pb.BatchRequest{Reference: "bench"}
		for range size {
			req.Operations = append(req.Operations, &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{
				Key: "key-ed", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: message}}}})
		}
		// One iteration is one operation: a batch every size of them.
		n := 0
		cpu(b, func() error {
			if n++; n%size != 0 {
				return nil
			}
			resp, err := kv.Batch(ctx, req)
			if err == nil && resp.GetResults()[size-1].GetSign() == nil {
				err = errors.New(resp.GetResults()[size-1].GetError().GetMessage())
			}
			return err
		})
	})
}
