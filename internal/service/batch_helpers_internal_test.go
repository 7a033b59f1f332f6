package service

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
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

// TestStreamBatchHelpers: a stream's batch is worked on by its worker
// beside as many helpers as make batchParallelism with it, never more
// (each one woken is a hand-off): none for a batch of one operation. The
// helpers here take whatever is offered, as idle helpers do.
func TestStreamBatchHelpers(t *testing.T) {
	ctx := context.Background()
	vault, k := vaultWithKey(t, "key-ed", "ed25519-pkcs8.pem")
	pub := k.Versions[0].PublicKey.(ed25519.PublicKey)
	kv := batchKeyVault(t, vault)
	kv.helpers = &helpers{work: make(chan func()), stop: make(chan struct{})}
	var took atomic.Int64
	var running sync.WaitGroup
	defer running.Wait()
	defer close(kv.helpers.stop)
	for range batchParallelism() + 2 {
		running.Go(func() {
			for {
				select {
				case f := <-kv.helpers.work:
					took.Add(1)
					f()
				case <-kv.helpers.stop:
					return
				}
			}
		})
	}
	for _, n := range []int{1, 2, 7} {
		req := &pb.BatchRequest{}
		for i := range n {
			req.Operations = append(req.Operations, &pb.BatchOperation{Operation: &pb.BatchOperation_Sign{Sign: &pb.SignRequest{
				Key: "key-ed", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: fmt.Appendf(nil, "message %d", i)}}}})
		}
		for range 20 {
			took.Store(0)
			resp := kv.runBatch(ctx, req, true)
			require.Len(t, resp.GetResults(), n)
			for i, r := range resp.GetResults() {
				require.True(t, ed25519.Verify(pub, req.GetOperations()[i].GetSign().GetMessage(), r.GetSign().GetSignature()), "result %d", i)
			}
			require.LessOrEqual(t, took.Load(), int64(min(batchParallelism(), n)-1), "helpers woken for a batch of %d", n)
		}
	}
}
