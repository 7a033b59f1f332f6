package service

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
)

// TestHelpersOffer: an idle helper takes a job; with every helper busy an
// offer is refused at once (the caller then works itself); nil helpers
// take nothing.
func TestHelpersOffer(t *testing.T) {
	h := startHelpers(2)
	defer h.close()
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	for range 2 {
		// A helper may be between jobs for a moment: offer until one takes it.
		for !h.offer(func() { started <- struct{}{}; <-release }) {
		}
	}
	<-started
	<-started
	assert.False(t, h.offer(func() {}), "both helpers are busy")
	close(release)
	ran := make(chan struct{})
	for !h.offer(func() { close(ran) }) {
	}
	<-ran
	var none *helpers
	assert.False(t, none.offer(func() {}))
	none.close()
}

// TestBatchHelpers: a batch is answered in its request's order with each
// operation's own result whether the helpers are idle, all busy with
// other work (the call does the work itself) or absent.
func TestBatchHelpers(t *testing.T) {
	ctx := context.Background()
	vault, k := vaultWithKey(t, "key-ed", "ed25519-pkcs8.pem")
	pub := k.Versions[0].PublicKey.(ed25519.PublicKey)
	kv := batchKeyVault(t, vault)
	req := &pb.BatchRequest{}
	for i := range 20 {
		req.Operations = append(req.Operations, &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{
			Key: "key-ed", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: fmt.Appendf(nil, "message %d", i)}}}})
	}
	check := func(t *testing.T) {
		resp, err := kv.Batch(ctx, req)
		require.NoError(t, err)
		require.Len(t, resp.GetResults(), len(req.GetOperations()))
		for i, r := range resp.GetResults() {
			assert.True(t, ed25519.Verify(pub, req.GetOperations()[i].GetSign().GetMessage(), r.GetSign().GetSignature()), "result %d is the signature of operation %d", i, i)
		}
	}
	t.Run("idle", func(t *testing.T) {
		kv.helpers = startHelpers(2)
		defer kv.helpers.close()
		// The helpers are idle between batches, save for the moment after
		// one ends: most of these run on them.
		for range 10 {
			check(t)
		}
	})
	t.Run("busy", func(t *testing.T) {
		kv.helpers = startHelpers(1)
		defer kv.helpers.close()
		release := make(chan struct{})
		defer close(release)
		for !kv.helpers.offer(func() { <-release }) {
		}
		check(t)
	})
	t.Run("none", func(t *testing.T) {
		kv.helpers = nil
		check(t)
	})
}

// batchKeyVault is the KeyVault API over vault, outside a Server: its key
// metrics on a registry of their own, no guard, no helpers.
func batchKeyVault(tb testing.TB, vault *keyvault.Vault) *KeyVault {
	tb.Helper()
	kv, err := newKeyVault(vault, func(context.Context, *keyvault.Key) bool { return true }, "", nil)
	require.NoError(tb, err)
	kv.keys = newKeyMetrics(prometheus.NewRegistry())
	return kv
}
