package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
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
	store, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "keys.db"))
	require.NoError(t, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(t, err)
	t.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", "ed25519-pkcs8.pem"))
	require.NoError(t, err)
	k, err := vault.Import(ctx, "key-ed", pemKey, nil)
	require.NoError(t, err)
	pub := k.Versions[0].PublicKey.(ed25519.PublicKey)
	kv, err := newKeyVault(vault, func(context.Context, *keyvault.Key) bool { return true }, "", nil)
	require.NoError(t, err)
	kv.keys = newKeyMetrics(prometheus.NewRegistry())
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
