package etcdstore_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// open opens a store of cluster c under prefix, closed with the test.
func open(t *testing.T, c *etcdtest.Cluster, prefix string, mod ...func(*etcdstore.Config)) *etcdstore.Store {
	t.Helper()
	cfg := etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix, RequestTimeout: 2 * time.Second, LeaseTTL: 2 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := etcdstore.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func scan(t *testing.T, s keyvault.Store) (map[keyvault.RecordRef]keyvault.Record, int64) {
	t.Helper()
	recs := make(map[keyvault.RecordRef]keyvault.Record)
	rev, err := s.Scan(t.Context(), func(r keyvault.Record) error {
		_, dup := recs[r.RecordRef]
		require.False(t, dup, "%v scanned twice", r.RecordRef)
		recs[r.RecordRef] = r
		return nil
	})
	require.NoError(t, err)
	return recs, rev
}

func sealed(t *testing.T) []byte {
	b := make([]byte, 64)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

var (
	check    = keyvault.RecordRef{Kind: keyvault.RecordCheck}
	manifest = keyvault.RecordRef{Kind: keyvault.RecordManifest}
	keyRef   = keyvault.RecordRef{Kind: keyvault.RecordKey, ID: "web"}
	version1 = keyvault.RecordRef{Kind: keyvault.RecordVersion, ID: "web", Version: 1}
	material = keyvault.RecordRef{Kind: keyvault.RecordMaterial, ID: "web", Version: 1}
	ticket   = keyvault.RecordRef{Kind: keyvault.RecordTicketKey, Version: 0xdeadbeef}
)

// TestStore runs the tests that share one three-member cluster, each under
// a prefix of its own.
func TestStore(t *testing.T) {
	c := etcdtest.Start(t, 3)
	t.Run("CommitScan", func(t *testing.T) { testCommitScan(t, c) })
	t.Run("CompareAndSwap", func(t *testing.T) { testCompareAndSwap(t, c) })
	t.Run("ConcurrentWriters", func(t *testing.T) { testConcurrentWriters(t, c) })
	t.Run("EraseCompactsHistory", func(t *testing.T) { testEraseCompactsHistory(t, c) })
	t.Run("ScanChanged", func(t *testing.T) { testScanChanged(t, c) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, c) })
	t.Run("AnnounceWaitApplied", func(t *testing.T) { testAnnounceWaitApplied(t, c) })
	t.Run("MinFormat", func(t *testing.T) { testMinFormat(t, c) })
	t.Run("Corrupted", func(t *testing.T) { testCorrupted(t, c) })
	t.Run("Vault", func(t *testing.T) { testVault(t, c) })
}

// A commit is seen by every store on the same prefix (another process's
// client), with the commit's revision on each record it wrote; another
// prefix is another store.
func testCommitScan(t *testing.T, c *etcdtest.Cluster) {
	a := open(t, c, "/commit-scan/a")
	b := open(t, c, "/commit-scan/a/") // the same prefix, spelt with its slash
	other := open(t, c, "/commit-scan/b")

	recs, rev := scan(t, a)
	assert.Empty(t, recs)
	assert.Zero(t, rev, "an empty store is at revision 0")

	in := map[keyvault.RecordRef][]byte{}
	w := keyvault.Write{}
	for _, ref := range []keyvault.RecordRef{check, manifest, keyRef, version1, material, ticket,
		{Kind: keyvault.RecordKey, ID: "a/b/../odd id"}, {Kind: keyvault.RecordKEKRotation}} {
		in[ref] = sealed(t)
		w.Create = append(w.Create, keyvault.Record{RecordRef: ref, Sealed: in[ref]})
	}
	rev1, err := a.Commit(t.Context(), w)
	require.NoError(t, err)
	require.Positive(t, rev1)

	for _, s := range []*etcdstore.Store{a, b} {
		recs, rev := scan(t, s)
		assert.Equal(t, rev1, rev)
		require.Len(t, recs, len(in))
		for ref, want := range in {
			assert.Equal(t, want, recs[ref].Sealed, "%v", ref)
			assert.Equal(t, rev1, recs[ref].Revision, "%v", ref)
		}
		got, err := s.Revision(t.Context())
		require.NoError(t, err)
		assert.Equal(t, rev1, got)
	}

	// A commit under another prefix moves neither a's records nor its
	// revision.
	_, err = other.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: check, Sealed: sealed(t)}}})
	require.NoError(t, err)
	got, err := a.Revision(t.Context())
	require.NoError(t, err)
	assert.Equal(t, rev1, got)
	recs, _ = scan(t, other)
	assert.Len(t, recs, 1)

	// Put replaces; only the records written move to the new revision.
	newKey := sealed(t)
	rev2, err := b.Commit(t.Context(), keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: newKey}}})
	require.NoError(t, err)
	assert.Greater(t, rev2, rev1)
	recs, rev = scan(t, a)
	assert.Equal(t, rev2, rev)
	assert.Equal(t, newKey, recs[keyRef].Sealed)
	assert.Equal(t, rev2, recs[keyRef].Revision)
	assert.Equal(t, rev1, recs[version1].Revision)

	// More records than one page of a Scan.
	w = keyvault.Write{}
	for i := range 300 {
		w.Put = append(w.Put, keyvault.Record{RecordRef: keyvault.RecordRef{Kind: keyvault.RecordKey, ID: fmt.Sprintf("k%03d", i)}, Sealed: []byte{byte(i)}})
	}
	for i := 0; i < len(w.Put); i += 100 { // etcd's default limit: 128 operations a transaction
		_, err := a.Commit(t.Context(), keyvault.Write{Put: w.Put[i : i+100]})
		require.NoError(t, err)
	}
	recs, _ = scan(t, b)
	assert.Len(t, recs, len(in)+300)
}

// Write.If is a compare-and-swap on record revisions, Create on absence;
// a failed one changes nothing.
func testCompareAndSwap(t *testing.T, c *etcdtest.Cluster) {
	s := open(t, c, "/cas")
	ctx := t.Context()
	rev1, err := s.Commit(ctx, keyvault.Write{Create: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("m1")}, {RecordRef: keyRef, Sealed: []byte("k1")}}})
	require.NoError(t, err)

	rev2, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("m2")}}, If: map[keyvault.RecordRef]int64{manifest: rev1, version1: 0}})
	require.NoError(t, err, "the revisions read and an absent record hold")

	before, beforeRev := scan(t, s)
	for name, w := range map[string]keyvault.Write{
		"stale revision": {Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("lost")}}, If: map[keyvault.RecordRef]int64{manifest: rev1}},
		"must not exist": {Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("lost")}}, If: map[keyvault.RecordRef]int64{manifest: rev2, keyRef: 0}},
		"missing record": {Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("lost")}}, If: map[keyvault.RecordRef]int64{version1: rev2}},
		"with an erase":  {Erase: []keyvault.RecordRef{keyRef}, If: map[keyvault.RecordRef]int64{manifest: rev1}},
	} {
		_, err := s.Commit(ctx, w)
		assert.ErrorIs(t, err, keyvault.ErrConflict, name)
		assert.NotErrorIs(t, err, keyvault.ErrAlreadyExists, name)
	}
	_, err = s.Commit(ctx, keyvault.Write{Create: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("again")}}, Put: []keyvault.Record{{RecordRef: manifest, Sealed: []byte("lost")}}})
	assert.ErrorIs(t, err, keyvault.ErrAlreadyExists)
	_, err = s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("a")}, {RecordRef: keyRef, Sealed: []byte("b")}}})
	assert.ErrorIs(t, err, keyvault.ErrInvalidArgument)

	after, afterRev := scan(t, s)
	assert.Equal(t, before, after, "failed commits change nothing")
	assert.Equal(t, beforeRev, afterRev)

	// Erase applies first: a record erased and created again in one commit.
	_, err = s.Commit(ctx, keyvault.Write{Erase: []keyvault.RecordRef{keyRef}, Create: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("k2")}}})
	require.NoError(t, err)
	after, _ = scan(t, s)
	assert.Equal(t, []byte("k2"), after[keyRef].Sealed)
}

// Two stores (two replicas) incrementing one counter record by
// compare-and-swap, retrying on conflict: no increment is lost.
func testConcurrentWriters(t *testing.T, c *etcdtest.Cluster) {
	const rounds = 40
	stores := []*etcdstore.Store{open(t, c, "/concurrent"), open(t, c, "/concurrent")}
	var wg sync.WaitGroup
	conflicts := make([]int, len(stores))
	for i, s := range stores {
		wg.Go(func() {
			for range rounds {
				for {
					recs, _ := scan(t, s)
					cur := recs[manifest]
					n := 0
					if cur.Sealed != nil {
						_, err := fmt.Sscan(string(cur.Sealed), &n)
						require.NoError(t, err)
					}
					_, err := s.Commit(t.Context(), keyvault.Write{
						Put: []keyvault.Record{{RecordRef: manifest, Sealed: fmt.Appendf(nil, "%d", n+1)}},
						If:  map[keyvault.RecordRef]int64{manifest: cur.Revision},
					})
					if err == nil {
						break
					}
					require.ErrorIs(t, err, keyvault.ErrConflict)
					conflicts[i]++
				}
			}
		})
	}
	wg.Wait()
	recs, _ := scan(t, stores[0])
	assert.Equal(t, fmt.Sprint(2*rounds), string(recs[manifest].Sealed))
	t.Logf("conflicts retried: %v", conflicts)
}

// After a commit that erases a record, no revision of the record before it
// can be read back from etcd, through any member: the history was
// compacted. A record erased and rewritten in one commit loses its old
// value's history too. The records that stay are intact.
func testEraseCompactsHistory(t *testing.T, c *etcdtest.Cluster) {
	s := open(t, c, "/erase")
	ctx := t.Context()
	secret1, secret2 := sealed(t), sealed(t)
	rev1, err := s.Commit(ctx, keyvault.Write{Create: []keyvault.Record{{RecordRef: material, Sealed: secret1}, {RecordRef: keyRef, Sealed: []byte("key")}, {RecordRef: ticket, Sealed: []byte("old ticket key")}}})
	require.NoError(t, err)
	rev2, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: material, Sealed: secret2}}})
	require.NoError(t, err)

	raw := c.Client(t, nil)
	keys := map[string][]byte{}
	resp, err := raw.Get(ctx, "/erase/", clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		keys[string(kv.Key)] = kv.Value
	}
	var materialKey, ticketKey string
	for k, v := range keys {
		switch {
		case bytes.Equal(v, secret2):
			materialKey = k
		case string(v) == "old ticket key":
			ticketKey = k
		}
	}
	require.NotEmpty(t, materialKey)
	// Before the erase, the history holds both values: what must go.
	old, err := raw.Get(ctx, materialKey, clientv3.WithRev(rev1))
	require.NoError(t, err)
	require.Equal(t, secret1, old.Kvs[0].Value)

	rev3, err := s.Commit(ctx, keyvault.Write{Erase: []keyvault.RecordRef{material}})
	require.NoError(t, err)
	rev4, err := s.Commit(ctx, keyvault.Write{Erase: []keyvault.RecordRef{ticket}, Put: []keyvault.Record{{RecordRef: ticket, Sealed: []byte("new ticket key")}}})
	require.NoError(t, err)

	for i := range c.Size() {
		member := etcdtest.ClientOf(t, nil, c.Endpoint(i))
		for rev := int64(1); rev < rev4; rev++ {
			_, err := member.Get(ctx, materialKey, clientv3.WithRev(rev))
			assert.ErrorIs(t, err, rpctypes.ErrCompacted, "member %d, revision %d", i, rev)
			_, err = member.Get(ctx, ticketKey, clientv3.WithRev(rev))
			assert.ErrorIs(t, err, rpctypes.ErrCompacted, "member %d, revision %d", i, rev)
		}
		now, err := member.Get(ctx, "/erase/", clientv3.WithPrefix())
		require.NoError(t, err)
		for _, kv := range now.Kvs {
			assert.NotEqual(t, materialKey, string(kv.Key))
			assert.NotEqual(t, secret1, kv.Value)
			assert.NotEqual(t, secret2, kv.Value)
			assert.NotEqual(t, "old ticket key", string(kv.Value))
		}
		// A watch replaying the history from its start finds it gone.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		wresp := <-member.Watch(wctx, materialKey, clientv3.WithRev(rev2))
		cancel()
		assert.ErrorIs(t, wresp.Err(), rpctypes.ErrCompacted, "member %d", i)
	}
	recs, rev := scan(t, s)
	assert.Equal(t, rev4, rev)
	assert.Greater(t, rev4, rev3)
	assert.Equal(t, []byte("key"), recs[keyRef].Sealed)
	assert.Equal(t, []byte("new ticket key"), recs[ticket].Sealed)
	assert.NotContains(t, recs, material)
}

// Watch reports every commit to the store after the revision given, by any
// store on the prefix, in order and once each, with the records it wrote
// and those it erased; nothing else in etcd.
func testWatch(t *testing.T, c *etcdtest.Cluster) {
	a, b := open(t, c, "/watch"), open(t, c, "/watch")
	other := open(t, c, "/watch-other")
	ctx := t.Context()
	rev0, err := a.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: check, Sealed: []byte("c")}}})
	require.NoError(t, err)

	wctx, cancel := context.WithCancel(ctx)
	revs := make(chan keyvault.Change, 16)
	done := make(chan error, 1)
	go func() { done <- a.Watch(wctx, rev0, func(ch keyvault.Change) { revs <- ch }) }()

	var want []keyvault.Change
	for i := range 3 {
		_, err := other.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: check, Sealed: []byte("x")}}})
		require.NoError(t, err)
		require.NoError(t, b.Announce(ctx, int64(i)))
		w := keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte{byte(i)}}, {RecordRef: version1, Sealed: []byte{byte(i)}}}}
		rev, err := b.Commit(ctx, w)
		require.NoError(t, err)
		for j := range w.Put {
			w.Put[j].Revision = rev
		}
		want = append(want, keyvault.Change{Rev: rev, Known: true, Put: w.Put})
	}
	rev, err := b.Commit(ctx, keyvault.Write{Erase: []keyvault.RecordRef{version1}})
	require.NoError(t, err)
	want = append(want, keyvault.Change{Rev: rev, Known: true, Erased: []keyvault.RecordRef{version1}})
	var got []keyvault.Change
	for range want {
		select {
		case ch := <-revs:
			slices.SortFunc(ch.Put, func(a, b keyvault.Record) int { return cmp.Compare(a.Kind, b.Kind) })
			got = append(got, ch)
		case <-time.After(30 * time.Second):
			t.Fatalf("watch reported %v of %v", got, want)
		}
	}
	assert.Equal(t, want, got)
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	assert.Empty(t, revs, "reported once each, nothing else")

	// Watching from before a compaction breaks the watch: the caller
	// rescans.
	_, err = a.Commit(ctx, keyvault.Write{Erase: []keyvault.RecordRef{material}})
	require.NoError(t, err)
	err = a.Watch(ctx, rev0, func(keyvault.Change) {})
	assert.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "compacted")

	// An empty store's watch from 0 reports its first commit.
	empty := open(t, c, "/watch-empty")
	wctx, cancel = context.WithCancel(ctx)
	defer cancel()
	go func() { done <- empty.Watch(wctx, 0, func(ch keyvault.Change) { revs <- ch }) }()
	// A failed commit ends the wait, to fail on the test's goroutine.
	require.Eventually(t, func() bool {
		if _, err = empty.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: check, Sealed: []byte("c")}}}); err != nil {
			return true
		}
		select {
		case <-revs:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}, 30*time.Second, time.Millisecond)
	require.NoError(t, err)
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled, "the watch ends with the test")
}

// WaitApplied returns once every live replica announced the revision; a
// replica that closed, or whose lease expired, no longer counts.
func testAnnounceWaitApplied(t *testing.T, c *etcdtest.Cluster) {
	ctx := t.Context()
	a, b := open(t, c, "/announce"), open(t, c, "/announce")
	d, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/announce"})
	require.NoError(t, err)
	defer d.Close()

	require.NoError(t, a.WaitApplied(ctx, 100), "no replica announced: nothing to wait for")
	require.NoError(t, a.Announce(ctx, 10))
	require.NoError(t, b.Announce(ctx, 10))
	require.NoError(t, d.Announce(ctx, 10))
	require.NoError(t, a.WaitApplied(ctx, 10))

	waited := make(chan error, 1)
	go func() { waited <- a.WaitApplied(ctx, 12) }()
	require.NoError(t, a.Announce(ctx, 12))
	require.NoError(t, b.Announce(ctx, 11))
	assertWaiting(t, waited)
	require.NoError(t, b.Announce(ctx, 13))
	assertWaiting(t, waited) // d is at 10
	require.NoError(t, d.Close())
	require.NoError(t, <-waited, "a replica that closed does not count")

	// Announcing lower changes nothing.
	require.NoError(t, b.Announce(ctx, 5))
	require.NoError(t, a.WaitApplied(ctx, 12))

	// A replica that died: its announcement stays until its lease's TTL
	// passes, without keep-alives.
	raw := c.Client(t, nil)
	lease, err := raw.Grant(ctx, 2)
	require.NoError(t, err)
	_, err = raw.Put(ctx, "/announce/replicas/dead", "1", clientv3.WithLease(lease.ID))
	require.NoError(t, err)
	go func() { waited <- a.WaitApplied(ctx, 12) }()
	assertWaiting(t, waited)
	select {
	case err := <-waited:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("WaitApplied still waits for a replica whose lease expired")
	}

	// WaitApplied ends with its context.
	require.NoError(t, raw.Close())
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	require.NoError(t, b.Announce(ctx, 20))
	assert.ErrorIs(t, a.WaitApplied(short, 21), context.DeadlineExceeded)

	// A lease that expired (the process stalled past its TTL) is replaced
	// at the next Announce.
	_, err = c.Client(t, nil).Revoke(ctx, leaseOf(t, c, "/announce/replicas/", "20"))
	require.NoError(t, err)
	require.NoError(t, b.Announce(ctx, 21))
	require.NoError(t, a.Announce(ctx, 21))
	require.NoError(t, a.WaitApplied(ctx, 21))

	// Announcing what the lease's key holds writes nothing (no history).
	head := func() int64 {
		resp, err := c.Client(t, nil).Get(ctx, "/announce/replicas/", clientv3.WithPrefix())
		require.NoError(t, err)
		return resp.Header.Revision
	}
	before := head()
	require.NoError(t, a.Announce(ctx, 21))
	require.NoError(t, a.Announce(ctx, 3))
	assert.Equal(t, before, head())
	require.NoError(t, a.Announce(ctx, 22))
	assert.Greater(t, head(), before)
}

// MinFormat is the lowest store format the live replicas announce: a
// replica of a release before formats (an announcement whose key names
// none) counts as 0, and one whose lease ended no longer counts. Such a
// replica's WaitApplied still reads this release's announcements as
// revisions.
func testMinFormat(t *testing.T, c *etcdtest.Cluster) {
	ctx := t.Context()
	a, b := open(t, c, "/formats"), open(t, c, "/formats")
	f, err := a.MinFormat(ctx)
	require.NoError(t, err)
	assert.Equal(t, keyvault.StoreFormat, f, "no replica announced")
	require.NoError(t, a.Announce(ctx, 5))
	require.NoError(t, b.Announce(ctx, 5))
	f, err = b.MinFormat(ctx)
	require.NoError(t, err)
	assert.Equal(t, keyvault.StoreFormat, f, "replicas of this release")

	// A replica of a release before formats announces under its lease's
	// key alone.
	raw := c.Client(t, nil)
	lease, err := raw.Grant(ctx, 60)
	require.NoError(t, err)
	_, err = raw.Put(ctx, fmt.Sprintf("/formats/replicas/%016x", int64(lease.ID)), "5", clientv3.WithLease(lease.ID))
	require.NoError(t, err)
	f, err = a.MinFormat(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, f, "a replica of a release before formats")

	// What that replica reads of this release's announcements: every
	// value under replicas/ is a revision.
	resp, err := raw.Get(ctx, "/formats/replicas/", clientv3.WithPrefix())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 3)
	for _, kv := range resp.Kvs {
		assert.Equal(t, "5", string(kv.Value), "%s", kv.Key)
	}

	_, err = raw.Revoke(ctx, lease.ID)
	require.NoError(t, err)
	f, err = a.MinFormat(ctx)
	require.NoError(t, err)
	assert.Equal(t, keyvault.StoreFormat, f, "the old replica is gone")
}

// leaseOf returns the lease of the announcement under prefix with value v.
func leaseOf(t *testing.T, c *etcdtest.Cluster, prefix, v string) clientv3.LeaseID {
	t.Helper()
	resp, err := c.Client(t, nil).Get(t.Context(), prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		if string(kv.Value) == v {
			return clientv3.LeaseID(kv.Lease)
		}
	}
	t.Fatalf("no announcement %q", v)
	return 0
}

func assertWaiting(t *testing.T, waited chan error) {
	t.Helper()
	select {
	case err := <-waited:
		t.Fatalf("WaitApplied returned (%v) while a replica has not applied the revision", err)
	case <-time.After(300 * time.Millisecond):
	}
}

// A key under the store's prefix that is no record is reported, not
// skipped.
// ScanChanged reads the records written after a revision, in one state
// with its revision and count, after a compaction too (an erase compacts
// etcd's history); what another prefix writes it does not see, and a key
// under the prefix that is no record it reports as corrupted, as Scan.
func testScanChanged(t *testing.T, c *etcdtest.Cluster) {
	s := open(t, c, "/scan-changed")
	other := open(t, c, "/scan-changed-other")
	ctx := t.Context()
	changed := func(after int64) (map[keyvault.RecordRef]keyvault.Record, int64, int) {
		t.Helper()
		recs := map[keyvault.RecordRef]keyvault.Record{}
		rev, total, err := s.ScanChanged(ctx, after, func(r keyvault.Record) error {
			recs[r.RecordRef] = r
			return nil
		})
		require.NoError(t, err)
		return recs, rev, total
	}
	recs, rev, total := changed(0)
	assert.Empty(t, recs)
	assert.Zero(t, rev)
	assert.Zero(t, total)

	rev1, err := s.Commit(ctx, keyvault.Write{Create: []keyvault.Record{
		{RecordRef: check, Sealed: sealed(t)}, {RecordRef: keyRef, Sealed: sealed(t)}, {RecordRef: material, Sealed: sealed(t)},
	}})
	require.NoError(t, err)
	newKey := sealed(t)
	rev2, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: newKey}}, Erase: []keyvault.RecordRef{material}})
	require.NoError(t, err)
	_, err = other.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: version1, Sealed: sealed(t)}}})
	require.NoError(t, err)

	recs, rev, total = changed(rev1)
	assert.Equal(t, rev2, rev)
	assert.Equal(t, 2, total, "the check record and the key's")
	require.Len(t, recs, 1, "only what the second commit wrote; the erased record is not reported")
	assert.Equal(t, newKey, recs[keyRef].Sealed)
	assert.Equal(t, rev2, recs[keyRef].Revision)
	recs, _, _ = changed(0)
	assert.Len(t, recs, 2)
	recs, rev, _ = changed(rev2)
	assert.Empty(t, recs)
	assert.Equal(t, rev2, rev)

	// More changed records than one page.
	for i := range 3 {
		w := keyvault.Write{}
		for j := range 100 {
			w.Put = append(w.Put, keyvault.Record{RecordRef: keyvault.RecordRef{Kind: keyvault.RecordKey, ID: fmt.Sprintf("k%d-%d", i, j)}, Sealed: sealed(t)})
		}
		_, err = s.Commit(ctx, w)
		require.NoError(t, err)
	}
	recs, _, total = changed(rev2)
	assert.Len(t, recs, 300)
	assert.Equal(t, 302, total)

	_, err = c.Client(t, nil).Put(ctx, "/scan-changed/store/r/zz", "?")
	require.NoError(t, err)
	_, _, err = s.ScanChanged(ctx, rev2, func(keyvault.Record) error { return nil })
	assert.ErrorIs(t, err, keyvault.ErrCorrupted)
}

func testCorrupted(t *testing.T, c *etcdtest.Cluster) {
	s := open(t, c, "/corrupted")
	_, err := c.Client(t, nil).Put(t.Context(), "/corrupted/store/r/zz", "?")
	require.NoError(t, err)
	_, err = s.Scan(t.Context(), func(keyvault.Record) error { return nil })
	assert.ErrorIs(t, err, keyvault.ErrCorrupted)
	assert.ErrorContains(t, err, "/corrupted/store/r/zz")
}

// A vault on the etcd store: keys created through one replica's vault are
// there for a vault opened on another replica's store, and a destroyed
// version's private key record leaves no history.
func testVault(t *testing.T, c *etcdtest.Cluster) {
	ctx := t.Context()
	kek := make([]byte, 32)
	_, err := rand.Read(kek)
	require.NoError(t, err)
	v1, err := keyvault.New(ctx, open(t, c, "/vault"), kek)
	require.NoError(t, err)
	_, err = v1.Create(ctx, "web", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v1.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v1.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = v1.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	require.NoError(t, v1.Close())

	v2, err := keyvault.Open(ctx, open(t, c, "/vault"), kek)
	require.NoError(t, err)
	defer v2.Close()
	k, err := v2.Get(ctx, "web")
	require.NoError(t, err)
	require.Len(t, k.Versions, 2)
	assert.Equal(t, keyvault.StateDestroyed, k.Versions[0].State)
	assert.Equal(t, keyvault.StateEnabled, k.Versions[1].State)

	raw := c.Client(t, nil)
	resp, err := raw.Get(ctx, "/vault/store/r/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	materialKey := fmt.Sprintf("/vault/store/r/%02x/%08x/web", uint8(keyvault.RecordMaterial), 1)
	for _, kv := range resp.Kvs {
		assert.NotEqual(t, materialKey, string(kv.Key))
	}
	// Every revision is compacted or has no such record: none holds it.
	for rev := int64(1); rev <= resp.Header.Revision; rev++ {
		old, err := raw.Get(ctx, materialKey, clientv3.WithRev(rev))
		if err != nil {
			assert.ErrorIs(t, err, rpctypes.ErrCompacted, "revision %d", rev)
		} else {
			assert.Empty(t, old.Kvs, "revision %d", rev)
		}
	}
}
