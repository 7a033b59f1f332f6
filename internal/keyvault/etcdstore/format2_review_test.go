package etcdstore_test

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// A store filled with keys while a replica of store format 1 followed it
// (a flat manifest, full at etcd's --max-request-bytes) still takes a
// revocation once that replica is gone, the room kept for the vault's
// ticket keys used up: the change that converts the
// manifest to buckets first must not stop it.
func TestVaultFullFlatStoreStillRevokes(t *testing.T) {
	const limit = 64 << 10
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	ctx := t.Context()
	raw := c.Client(t, nil)
	lease, err := raw.Grant(ctx, 600)
	require.NoError(t, err)
	_, err = raw.Put(ctx, fmt.Sprintf("/flat/replicas/%016x/format-1", int64(lease.ID)), "0", clientv3.WithLease(lease.ID))
	require.NoError(t, err)

	kek := make([]byte, 32)
	rand.Read(kek)
	v, err := keyvault.New(ctx, open(t, c, "/flat", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit }), kek)
	require.NoError(t, err)
	defer v.Close()
	n, full := fill(t, v, 2000)
	t.Logf("%d KiB of etcd request hold %d keys in a flat manifest", limit>>10, n)
	require.ErrorIs(t, full, keyvault.ErrFailedPrecondition)
	makeFleetTicketKeys(t, v) // the room kept for the vault's own keys, used up

	_, err = raw.Revoke(ctx, lease.ID) // the replica of format 1 is gone
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "k0000", 1, false)
	assert.NoError(t, err, "a revocation, once the replica of format 1 is gone")
	_, err = v.Create(ctx, "after", keyvault.Ed25519, nil)
	t.Logf("a key created after: %v", err)
}
