package etcdstore_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// The vault's bulk writes (a KEK rotation's batches, a restore) fit the
// transactions of an etcd with default limits (128 operations).
func TestVaultBulkWrites(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	kek, newKEK := make([]byte, 32), make([]byte, 32)
	rand.Read(kek)
	rand.Read(newKEK)
	v, err := keyvault.New(ctx, open(t, c, "/bulk"), kek)
	require.NoError(t, err)
	defer v.Close()
	for i := range 60 { // 180 records
		_, err := v.Create(ctx, fmt.Sprintf("k%02d", i), keyvault.ECDSAP256, nil)
		require.NoError(t, err)
	}
	var backup bytes.Buffer
	_, err = v.Backup(ctx, &backup)
	require.NoError(t, err)

	st, err := v.RotateKEK(ctx, newKEK)
	require.NoError(t, err, "KEK rotation")
	assert.Zero(t, st.Stale)
	assert.Equal(t, keyvault.KEKID(newKEK), st.ID)

	// A restore is one commit of every record: past --max-txn-ops it is
	// refused, saying how many operations it needs.
	r, err := keyvault.New(ctx, open(t, c, "/bulk-restored"), kek)
	require.NoError(t, err)
	defer r.Close()
	_, err = r.Restore(ctx, bytes.NewReader(backup.Bytes()))
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "--max-txn-ops")
	assert.Regexp(t, `commit of \d+ operations`, err.Error())
}

// An etcd whose --max-txn-ops is raised takes a restore of that size when
// the store is told (-etcd-max-txn-ops).
func TestVaultRestoreRaisedTxnOps(t *testing.T) {
	c := etcdtest.Start(t, 1, etcdtest.WithMaxTxnOps(1024))
	ctx := t.Context()
	kek := make([]byte, 32)
	rand.Read(kek)
	v, err := keyvault.New(ctx, open(t, c, "/bulk", func(cfg *etcdstore.Config) { cfg.MaxTxnOps = 1024 }), kek)
	require.NoError(t, err)
	defer v.Close()
	for i := range 60 {
		_, err := v.Create(ctx, fmt.Sprintf("k%02d", i), keyvault.ECDSAP256, nil)
		require.NoError(t, err)
	}
	var backup bytes.Buffer
	_, err = v.Backup(ctx, &backup)
	require.NoError(t, err)
	r, err := keyvault.New(ctx, open(t, c, "/bulk-restored"), kek)
	require.NoError(t, err)
	defer r.Close()
	_, err = r.Restore(ctx, &backup)
	require.NoError(t, err)
	k, err := r.Get(ctx, "k59")
	require.NoError(t, err)
	assert.Len(t, k.Versions, 1)
}

// A store whose manifest outgrows etcd's --max-request-bytes refuses the
// change that would pass it with FAILED_PRECONDITION, saying which limit
// and what to do (not UNAVAILABLE: it is certain not to have landed, and
// retrying does not help); a change that does not grow the store, as a
// revocation, still commits.
func TestVaultFullAtMaxRequestBytes(t *testing.T) {
	const limit = 64 << 10 // about 200 keys
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	ctx := t.Context()
	kek := make([]byte, 32)
	rand.Read(kek)
	v, err := keyvault.New(ctx, open(t, c, "/full", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit }), kek)
	require.NoError(t, err)
	defer v.Close()
	var full error
	for i := 0; full == nil; i++ {
		require.Less(t, i, 1000, "64 KiB of manifest holds fewer keys")
		_, full = v.Create(ctx, fmt.Sprintf("k%04d", i), keyvault.Ed25519, nil)
	}
	require.ErrorIs(t, full, keyvault.ErrFailedPrecondition)
	assert.NotErrorIs(t, full, keyvault.ErrUnavailable)
	assert.ErrorContains(t, full, "--max-request-bytes (65536")
	assert.ErrorContains(t, full, "-etcd-max-request-bytes")
	_, err = v.SetVersionEnabled(ctx, "k0000", 1, false)
	assert.NoError(t, err, "a revocation fits where the last key did")
}
