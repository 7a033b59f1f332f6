package service

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
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
	vault, _ := vaultWithKey(b, "key-ed", "ed25519-pkcs8.pem")
	kv := batchKeyVault(b, vault)
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
