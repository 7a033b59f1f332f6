package etcdstore_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

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
	// refused, FAILED_PRECONDITION (it did not land, and no retry helps),
	// saying how many operations it needs and which settings to raise.
	r, err := keyvault.New(ctx, open(t, c, "/bulk-restored"), kek)
	require.NoError(t, err)
	defer r.Close()
	_, err = r.Restore(ctx, bytes.NewReader(backup.Bytes()))
	require.ErrorIs(t, err, keyvault.ErrFailedPrecondition)
	assert.NotErrorIs(t, err, keyvault.ErrUnavailable)
	assert.Regexp(t, `refused the commit of \d+ records, \d+ operations, as more than its --max-txn-ops`, err.Error())
	assert.Regexp(t, `raise --max-txn-ops on every etcd member to \d+ or more and pass the same value as -etcd-max-txn-ops to every replica \(this one's is 128\)`, err.Error())
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
	// About 100 keys in a flat manifest (store format 1), about a thousand
	// in buckets: the store is full when its fullest bucket is.
	const limit = 32 << 10
	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit))
	ctx := t.Context()
	v := openVault(t, open(t, c, "/full", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit }))
	n, full := fill(t, v, 20000)
	t.Logf("%d KiB of etcd request hold %d keys", limit>>10, n)
	require.ErrorIs(t, full, keyvault.ErrFailedPrecondition)
	assert.NotErrorIs(t, full, keyvault.ErrUnavailable)
	assert.ErrorContains(t, full, "--max-request-bytes (32768")
	assert.ErrorContains(t, full, "-etcd-max-request-bytes")
	assert.ErrorContains(t, full, "kept for the vault's ticket key rotations")
	_, err := v.SetVersionEnabled(ctx, "k0000", 1, false)
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

// A restore too large for etcd's --max-request-bytes (one commit of every
// record of the snapshot) fails with FAILED_PRECONDITION saying what helps:
// the limit raised above the commit's size on every member and replica.
// Not the store's advice for a full store, to destroy versions: the
// instance restored into holds none, and the snapshot goes in whole.
func TestVaultRestoreTooLarge(t *testing.T) {
	const limit = 64 << 10
	ctx := t.Context()
	kek := make([]byte, 32)
	rand.Read(kek)
	bolt, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "vault.db"))
	require.NoError(t, err)
	src, err := keyvault.New(ctx, bolt, kek)
	require.NoError(t, err)
	defer src.Close()
	for i := range 300 { // about 100 KiB of records and manifest
		_, err := src.Create(ctx, fmt.Sprintf("k%03d", i), keyvault.Ed25519, nil)
		require.NoError(t, err)
	}
	var backup bytes.Buffer
	info, err := src.Backup(ctx, &backup)
	require.NoError(t, err)
	require.Greater(t, info.Bytes, int64(limit))

	c := etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(limit), etcdtest.WithMaxTxnOps(1024))
	dst, err := keyvault.New(ctx, open(t, c, "/restore", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes, cfg.MaxTxnOps = limit, 1024 }), kek)
	require.NoError(t, err)
	defer dst.Close()
	_, err = dst.Restore(ctx, bytes.NewReader(backup.Bytes()))
	require.ErrorIs(t, err, keyvault.ErrFailedPrecondition)
	assert.NotErrorIs(t, err, keyvault.ErrUnavailable)
	var tooLarge *keyvault.CommitTooLargeError
	require.ErrorAs(t, err, &tooLarge)
	assert.Greater(t, tooLarge.Bytes, int(info.Bytes), "the snapshot's records, a manifest and etcd's framing")
	assert.ErrorContains(t, err, fmt.Sprintf("the whole snapshot, %d records, in one commit", info.Records))
	assert.ErrorContains(t, err, "more than etcd's --max-request-bytes (65536, given as -etcd-max-request-bytes)")
	assert.ErrorContains(t, err, fmt.Sprintf("raise --max-request-bytes on every etcd member above %d bytes", tooLarge.Bytes))
	assert.ErrorContains(t, err, "start every replica with the same -etcd-max-request-bytes")
	assert.NotContains(t, err.Error(), "destroy versions", "advice that cannot help a restore")
	keys, _, err := dst.List(ctx, 10, "")
	require.NoError(t, err)
	assert.Empty(t, keys, "nothing restored")

	// What it says helps: a cluster and a replica whose limit is above
	// the commit's size take it.
	raised := tooLarge.Bytes + 1
	c = etcdtest.Start(t, 1, etcdtest.WithMaxRequestBytes(uint(raised)), etcdtest.WithMaxTxnOps(1024))
	dst, err = keyvault.New(ctx, open(t, c, "/restore", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes, cfg.MaxTxnOps = raised, 1024 }), kek)
	require.NoError(t, err)
	defer dst.Close()
	_, err = dst.Restore(ctx, bytes.NewReader(backup.Bytes()))
	require.NoError(t, err)
	_, err = dst.Get(ctx, "k299")
	assert.NoError(t, err)
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
		// Not 8: etcd checks the quota against its backend's size, which
		// grows when the backend commits its batch (every 100 ms), so a
		// fast run puts a few more values before the alarm.
		require.Less(t, i, 64, "4 MiB of quota holds far fewer 512 KiB values")
		ref := keyvault.RecordRef{Kind: keyvault.RecordVersion, ID: "k", Version: uint32(i + 1)}
		_, err = s.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: ref, Sealed: make([]byte, 512<<10)}}})
	}
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "is out of space")
	assert.ErrorContains(t, err, "etcdctl alarm disarm")
}

// TestRestoreOntoAStoreInUse: a restore through one replica of a fresh
// deployment whose other replicas already run (and made their ticket
// keys) is served by all of them at once, the snapshot's ticket keys in
// place of theirs; one into a deployment where a replica made a key is
// refused, and changes nothing.
func TestRestoreOntoAStoreInUse(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	src := openVault(t, open(t, c, "/source"))
	_, err := src.Create(ctx, "web", keyvault.Ed25519, nil)
	require.NoError(t, err)
	srcTickets, err := keyvault.NewTicketKeys(src, keyvault.TicketKeyOptions{})
	require.NoError(t, err)
	ticket, err := srcTickets.Seal(ctx, "scope", []byte("session"))
	require.NoError(t, err)
	var snap bytes.Buffer
	_, err = src.Backup(ctx, &snap)
	require.NoError(t, err)

	a, b := openVault(t, open(t, c, "/fresh")), openVault(t, open(t, c, "/fresh"))
	bTickets, err := keyvault.NewTicketKeys(b, keyvault.TicketKeyOptions{})
	require.NoError(t, err)
	own, err := bTickets.Seal(ctx, "scope", []byte("before the restore"))
	require.NoError(t, err)
	_, err = a.Restore(ctx, bytes.NewReader(snap.Bytes()))
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	require.NoError(t, sign(b, "web", 1), "the other replica serves the restored key")
	plain, err := bTickets.Open(ctx, "scope", ticket)
	require.NoError(t, err, "and opens the snapshot's tickets")
	assert.Equal(t, "session", string(plain))
	_, err = bTickets.Open(ctx, "scope", own)
	assert.ErrorIs(t, err, keyvault.ErrTicketRejected, "its own ticket key was replaced")

	d, e := openVault(t, open(t, c, "/used")), openVault(t, open(t, c, "/used"))
	_, err = e.Create(ctx, "theirs", keyvault.Ed25519, nil)
	require.NoError(t, err)
	_, err = d.Restore(ctx, bytes.NewReader(snap.Bytes()))
	require.ErrorIs(t, err, keyvault.ErrFailedPrecondition, "another replica holds a key")
	assert.ErrorContains(t, err, "holds keys")
	require.NoError(t, e.Sync(ctx))
	require.NoError(t, sign(e, "theirs", 1))
	_, err = e.Get(ctx, "web")
	assert.ErrorIs(t, err, keyvault.ErrNotFound)
}

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

	v := openVault(t, open(t, c, "/flat", func(cfg *etcdstore.Config) { cfg.MaxRequestBytes = limit }))
	n, full := fill(t, v, 2000)
	t.Logf("%d KiB of etcd request hold %d keys in a flat manifest", limit>>10, n)
	require.ErrorIs(t, full, keyvault.ErrFailedPrecondition)
	makeFleetTicketKeys(t, v) // the room kept for the vault's own keys, used up

	_, err = raw.Revoke(ctx, lease.ID) // the replica of format 1 is gone
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "k0000", 1, false)
	assert.NoError(t, err, "a revocation, once the replica of format 1 is gone")
	_, err = v.Create(ctx, "after", keyvault.Ed25519, nil)
	assert.NoError(t, err, "a key, in the buckets the revocation's commit converted the manifest to")
}
