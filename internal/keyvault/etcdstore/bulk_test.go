package etcdstore_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

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
// revocation, still commits. A store full of keys still has room for the
// vault's own keys: the ticket, step-token and page-token keys of a fleet
// that has run past a whole ticket lifetime (eight keys a purpose) are made
// after the last key that fits.
func TestVaultFullAtMaxRequestBytes(t *testing.T) {
	const limit = 64 << 10 // about 200 keys in a flat manifest, thousands in buckets
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	ctx := t.Context()
	kek := make([]byte, 32)
	rand.Read(kek)
	v, err := keyvault.New(ctx, open(t, c, "/full", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit }), kek)
	require.NoError(t, err)
	defer v.Close()
	n, full := fill(t, v, 20000)
	t.Logf("%d KiB of etcd request hold %d keys", limit>>10, n)
	require.ErrorIs(t, full, keyvault.ErrFailedPrecondition)
	assert.NotErrorIs(t, full, keyvault.ErrUnavailable)
	assert.ErrorContains(t, full, "--max-request-bytes (65536")
	assert.ErrorContains(t, full, "-etcd-max-request-bytes")
	assert.ErrorContains(t, full, "kept for the vault's ticket key rotations")
	_, err = v.SetVersionEnabled(ctx, "k0000", 1, false)
	assert.NoError(t, err, "a revocation fits where the last key did")

	makeFleetTicketKeys(t, v)
	assert.Len(t, v.TicketKeys(), 24, "eight keys a purpose: the first retired by the ninth")
}

// fill creates keys in v until one fails (at most limit), and returns how
// many it created and the error of the one that failed.
func fill(t *testing.T, v *keyvault.Vault, limit int) (int, error) {
	t.Helper()
	for n := 0; ; n++ {
		require.Less(t, n, limit, "the store holds fewer keys")
		if _, err := v.Create(t.Context(), fmt.Sprintf("k%04d", n), keyvault.Ed25519, nil); err != nil {
			return n, err
		}
	}
}

// makeFleetTicketKeys makes in v the ticket, step-token and page-token keys
// of a fleet that has run past a whole ticket lifetime.
func makeFleetTicketKeys(t *testing.T, v *keyvault.Vault) {
	t.Helper()
	now := time.Now()
	for _, purpose := range []keyvault.TicketKeyPurpose{keyvault.PurposeTickets, keyvault.PurposeStepTokens, keyvault.PurposePageTokens} {
		day := 0
		tk, err := keyvault.NewTicketKeys(v, keyvault.TicketKeyOptions{Purpose: purpose, Now: func() time.Time { return now.Add(time.Duration(day) * 24 * time.Hour) }})
		require.NoError(t, err)
		for ; day < 9; day++ { // a key a day, each accepted for 8 days
			_, err := tk.Seal(t.Context(), "scope", []byte("state"))
			require.NoError(t, err, "%v key of day %d in a store full of keys", purpose, day)
		}
	}
}

// The store's own bound on a commit's size (requestBytes) is never below
// what etcd checks: a commit one byte past the largest one etcd takes is
// refused by the store, as the store being full (etcd's refusal would say
// the replica's -etcd-max-request-bytes is above the cluster's), and it
// refuses at most a few hundred bytes short of etcd. A put of one record
// with nothing else is the commit whose framing is least.
func TestCommitSizeBound(t *testing.T) {
	const limit = 64 << 10
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	ctx := t.Context()
	// largest is the largest value of a put s commits, between lo and hi.
	largest := func(s *etcdstore.Store, lo, hi int) int {
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			if _, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: manifest, Sealed: make([]byte, mid)}}}); err != nil {
				require.ErrorIs(t, err, keyvault.ErrFailedPrecondition)
				hi = mid
			} else {
				lo = mid
			}
		}
		return lo
	}
	unchecked := open(t, c, "/size", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = 1 << 20 })
	etcdTakes := largest(unchecked, 0, limit)
	s := open(t, c, "/size", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit })
	_, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: manifest, Sealed: make([]byte, etcdTakes+1)}}})
	require.ErrorIs(t, err, keyvault.ErrFailedPrecondition)
	assert.ErrorContains(t, err, "so the store is full", "refused by the store, not by etcd")
	storeTakes := largest(s, 0, etcdTakes+1)
	t.Logf("largest value etcd takes: %d bytes, the store: %d", etcdTakes, storeTakes)
	assert.Greater(t, storeTakes, etcdTakes-512, "the store refuses what etcd takes only within its bound's excess")
}

// A replica told a larger -etcd-max-request-bytes than the cluster's gets
// etcd's refusals: under the cluster's limit + 512 KiB etcd's check of the
// raft request, past it gRPC's of the message. Both are certain failures
// (FAILED_PRECONDITION, not UNAVAILABLE: a PKCS#11 creation would keep its
// key for a commit that may have landed) and say which setting is wrong.
func TestCommitPastTheClusterLimit(t *testing.T) {
	const limit = 64 << 10
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	s := open(t, c, "/past", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = 8 << 20 })
	for _, size := range []int{limit, limit + 1<<20} {
		_, err := s.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: manifest, Sealed: make([]byte, size)}}})
		require.ErrorIs(t, err, keyvault.ErrFailedPrecondition, "a value of %d bytes", size)
		assert.NotErrorIs(t, err, keyvault.ErrUnavailable)
		assert.ErrorContains(t, err, "less than this replica's -etcd-max-request-bytes (8388608)")
	}
	_, err := s.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("m")}}})
	assert.NoError(t, err, "the store goes on")
}

// An etcd past its --quota-backend-bytes (every commit writes the manifest
// of every record, which etcd keeps until compaction) refuses writes: the
// error says so and what to do, and stays UNAVAILABLE, as the write that
// crosses the quota is applied, then refused.
func TestCommitPastTheQuota(t *testing.T) {
	c := etcdtest.Start(t, 1, etcdtest.WithQuotaBackendBytes(4<<20))
	s := open(t, c, "/quota")
	var err error
	for i := 0; err == nil; i++ {
		require.Less(t, i, 16, "4 MiB of quota holds fewer 512 KiB values")
		ref := keyvault.RecordRef{Kind: keyvault.RecordVersion, ID: "k", Version: uint32(i + 1)}
		_, err = s.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: ref, Sealed: make([]byte, 512<<10)}}})
	}
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "is out of space")
	assert.ErrorContains(t, err, "etcdctl alarm disarm")
}
