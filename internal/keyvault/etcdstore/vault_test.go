package etcdstore_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// The key vault's replica logic (keyvault/follow.go) on a real etcd
// cluster: vaults on one prefix are replicas of one deployment.

var vaultKEK = bytes.Repeat([]byte{0x42}, 32)

// openVault opens a replica on store s, closed with the test.
func openVault(t testing.TB, s keyvault.SharedStore, opts ...keyvault.Option) *keyvault.Vault {
	t.Helper()
	v, err := keyvault.New(t.Context(), s, vaultKEK, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	return v
}

// slowScan reads the store late: a replica that follows slowly.
type slowScan struct {
	*etcdstore.Store
	delay time.Duration
}

func (s slowScan) Scan(ctx context.Context, fn func(keyvault.Record) error) (int64, error) {
	time.Sleep(s.delay)
	return s.Store.Scan(ctx, fn)
}

func (s slowScan) ScanChanged(ctx context.Context, after int64, fn func(keyvault.Record) error) (int64, int, error) {
	time.Sleep(s.delay)
	return s.Store.ScanChanged(ctx, after, fn)
}

func sign(v *keyvault.Vault, id string, n uint32) error {
	_, err := v.Sign(context.Background(), id, n, tls.Ed25519, []byte("m"), false)
	return err
}

// waitChange returns a function that waits, woken by v's Subscribe, until
// done holds.
func waitChange(t testing.TB, v *keyvault.Vault) func(done func() bool) {
	ch := make(chan string, 1024)
	t.Cleanup(v.Subscribe(func(id string) { ch <- id }))
	return func(done func() bool) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for !done() {
			select {
			case <-ch:
			case <-timeout:
				require.FailNow(t, "the change was not followed")
			}
		}
	}
}

// replicasWithKey opens two replicas on prefix, the first creates key id
// and the second has synced it.
func replicasWithKey(t *testing.T, c *etcdtest.Cluster, prefix, id string) (a, b *keyvault.Vault) {
	t.Helper()
	a, b = openVault(t, open(t, c, prefix)), openVault(t, open(t, c, prefix))
	_, err := a.Create(t.Context(), id, keyvault.Ed25519, nil)
	require.NoError(t, err)
	require.NoError(t, b.Sync(t.Context()))
	return a, b
}

func TestVaultReplicasOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 3)

	// A key created, rotated or given a chain on one replica serves on the
	// other: after Sync at once, and by the watch alone soon after.
	t.Run("follow", func(t *testing.T) {
		a := openVault(t, open(t, c, "/follow"))
		b := openVault(t, open(t, c, "/follow"))
		changed := waitChange(t, b)
		_, err := a.Create(t.Context(), "web", keyvault.Ed25519, nil)
		require.NoError(t, err)
		require.NoError(t, b.Sync(t.Context()))
		require.NoError(t, sign(b, "web", 1))
		_, err = a.Rotate(t.Context(), "web")
		require.NoError(t, err)
		changed(func() bool { return sign(b, "web", 2) == nil })
	})

	// A follower reads only what changed, and still refuses a store whose
	// records are not those its manifest lists: one deleted behind the
	// replicas' backs is found at the next change.
	t.Run("record deleted behind the replicas", func(t *testing.T) {
		a, b := replicasWithKey(t, c, "/tampered", "web")
		require.NoError(t, sign(b, "web", 1))
		raw := c.Client(t, nil)
		resp, err := raw.Get(t.Context(), "/tampered/store/r/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		require.NoError(t, err)
		var versionKey string
		for _, kv := range resp.Kvs {
			if strings.HasPrefix(string(kv.Key), fmt.Sprintf("/tampered/store/r/%02x/", keyvault.RecordVersion)) {
				versionKey = string(kv.Key)
			}
		}
		require.NotEmpty(t, versionKey)
		_, err = raw.Delete(t.Context(), versionKey)
		require.NoError(t, err)
		_, err = a.Create(t.Context(), "api", keyvault.Ed25519, nil)
		require.NoError(t, err)
		assert.ErrorIs(t, b.Sync(t.Context()), keyvault.ErrCorrupted)
	})

	// Two replicas rotating one key at once, many rounds: each rotation
	// makes one version or aborts; none is lost or made twice; a third
	// replica opening the store (every record checked against the
	// manifest) finds exactly those.
	t.Run("rotate concurrently", func(t *testing.T) {
		a, b := replicasWithKey(t, c, "/rotate", "k")
		const rounds = 25
		var mu sync.Mutex
		made := map[uint32][]byte{}
		var aborted atomic.Int64
		var wg sync.WaitGroup
		for _, v := range []*keyvault.Vault{a, b} {
			wg.Go(func() {
				for range rounds {
					key, err := v.Rotate(t.Context(), "k")
					if errors.Is(err, keyvault.ErrAborted) {
						aborted.Add(1)
						continue
					}
					if !assert.NoError(t, err) {
						return
					}
					pub, err := x509.MarshalPKIXPublicKey(key.Versions[key.Primary-1].PublicKey)
					if !assert.NoError(t, err) { // not require: this is not the test's goroutine
						return
					}
					mu.Lock()
					_, dup := made[key.Primary]
					assert.False(t, dup, "version %d made twice", key.Primary)
					made[key.Primary] = pub
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		t.Logf("%d rotations made a version, %d aborted", len(made), aborted.Load())
		assert.Equal(t, int64(2*rounds), int64(len(made))+aborted.Load())
		third := openVault(t, open(t, c, "/rotate"))
		require.NoError(t, a.Sync(t.Context()))
		require.NoError(t, b.Sync(t.Context()))
		for _, v := range []*keyvault.Vault{a, b, third} {
			key, err := v.Get(t.Context(), "k")
			require.NoError(t, err)
			require.Len(t, key.Versions, 1+len(made))
			for _, ver := range key.Versions[1:] {
				pub, err := x509.MarshalPKIXPublicKey(ver.PublicKey)
				require.NoError(t, err)
				assert.Equal(t, made[ver.Number], pub, "version %d", ver.Number)
				assert.NoError(t, sign(v, "k", ver.Number))
			}
		}
	})

	// A disable returns only once the other replica, which reads the
	// store late, refuses the version; so does a destroy.
	t.Run("revocation", func(t *testing.T) {
		a := openVault(t, open(t, c, "/revoke"))
		b := openVault(t, slowScan{Store: open(t, c, "/revoke"), delay: 300 * time.Millisecond})
		_, err := a.Create(t.Context(), "web", keyvault.Ed25519, nil)
		require.NoError(t, err)
		_, err = a.Rotate(t.Context(), "web")
		require.NoError(t, err)
		require.NoError(t, b.Sync(t.Context()))
		require.NoError(t, sign(b, "web", 1))

		_, err = a.SetVersionEnabled(t.Context(), "web", 1, false)
		require.NoError(t, err)
		assert.ErrorIs(t, sign(b, "web", 1), keyvault.ErrFailedPrecondition)
		assert.NoError(t, sign(b, "web", 2))
		_, err = a.DestroyVersion(t.Context(), "web", 1)
		require.NoError(t, err)
		key, err := b.Get(t.Context(), "web")
		require.NoError(t, err)
		assert.Equal(t, keyvault.StateDestroyed, key.Versions[0].State)
	})

	// A replica whose lease ended (revoked here; expired when its
	// keep-alives did not reach etcd for the TTL) and that still reaches
	// etcd announces itself again under a new lease before it confirms its
	// view again: a revocation then waits for it, rather than return while
	// it still signs with the version.
	t.Run("revocation after the lease ended", func(t *testing.T) {
		raw := c.Client(t, nil)
		announcements := func() []*mvccpb.KeyValue {
			resp, err := raw.Get(t.Context(), "/relet/replicas/", clientv3.WithPrefix())
			require.NoError(t, err)
			return resp.Kvs
		}
		b := openVault(t, slowScan{Store: open(t, c, "/relet"), delay: 300 * time.Millisecond})
		require.Len(t, announcements(), 1)
		lease := clientv3.LeaseID(announcements()[0].Lease)
		a := openVault(t, open(t, c, "/relet"))
		_, err := a.Create(t.Context(), "web", keyvault.Ed25519, nil)
		require.NoError(t, err)
		_, err = a.Rotate(t.Context(), "web")
		require.NoError(t, err)
		require.NoError(t, b.Sync(t.Context()))
		require.NoError(t, sign(b, "web", 1))
		// Both announced the last change: B's view does not move after.
		require.Eventually(t, func() bool {
			kvs := announcements()
			return len(kvs) == 2 && bytes.Equal(kvs[0].Value, kvs[1].Value)
		}, 30*time.Second, 10*time.Millisecond)

		_, err = raw.Revoke(t.Context(), lease)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			for _, kv := range announcements() {
				if clientv3.LeaseID(kv.Lease) == lease {
					return false
				}
			}
			return len(announcements()) == 2
		}, 10*time.Second, 10*time.Millisecond, "B announced again under a new lease")
		require.NoError(t, sign(b, "web", 1))

		_, err = a.SetVersionEnabled(t.Context(), "web", 1, false)
		require.NoError(t, err)
		assert.ErrorIs(t, sign(b, "web", 1), keyvault.ErrFailedPrecondition)
	})

	// Without quorum no replica can confirm its view: key changes fail
	// with UNAVAILABLE at once, key use once the staleness bound passed;
	// with quorum back both serve again by themselves.
	t.Run("quorum loss", func(t *testing.T) {
		const bound = time.Second
		a := openVault(t, open(t, c, "/quorum-vault"), keyvault.WithStalenessBound(bound))
		b := openVault(t, open(t, c, "/quorum-vault"), keyvault.WithStalenessBound(bound))
		_, err := a.Create(t.Context(), "web", keyvault.Ed25519, nil)
		require.NoError(t, err)
		require.NoError(t, b.Sync(t.Context()))
		require.NoError(t, sign(b, "web", 1))

		c.Stop(0)
		_, err = a.Rotate(t.Context(), "web")
		require.NoError(t, err, "two of three members serve")
		require.NoError(t, b.Sync(t.Context()))
		require.NoError(t, sign(b, "web", 2))

		c.Stop(1)
		_, err = a.Rotate(t.Context(), "web")
		require.ErrorIs(t, err, keyvault.ErrUnavailable)
		assert.ErrorContains(t, err, "a majority of its members must be running and reachable")
		for _, v := range []*keyvault.Vault{a, b} {
			require.Eventually(t, func() bool { return errors.Is(sign(v, "web", 2), keyvault.ErrUnavailable) },
				30*time.Second, bound/10, "key use fenced")
			assert.ErrorContains(t, sign(v, "web", 2), "refuses key use until the store answers again")
		}

		c.Restart(0)
		c.Restart(1)
		for _, v := range []*keyvault.Vault{a, b} {
			require.Eventually(t, func() bool { return sign(v, "web", 2) == nil }, time.Minute, bound/10, "key use back")
		}
		_, err = b.Rotate(t.Context(), "web")
		require.NoError(t, err)
		require.NoError(t, a.Sync(t.Context()))
		assert.NoError(t, sign(a, "web", 3))
	})
}

// BenchmarkVaultPropagation measures the propagation bound on etcd (one
// member on loopback): from Create returning on one replica to the key
// being served by another, which follows by its watch alone (ns/follow),
// with the replicas holding b.N keys at the end.
func BenchmarkVaultPropagation(b *testing.B) {
	c := etcdtest.Start(b, 1)
	s := func() *etcdstore.Store {
		s, err := etcdstore.Open(b.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/bench"})
		require.NoError(b, err)
		return s
	}
	va, vb := openVault(b, s()), openVault(b, s())
	changed := waitChange(b, vb)
	i := 0
	var follow time.Duration
	for b.Loop() {
		id := fmt.Sprintf("k%d", i)
		i++
		_, err := va.Create(b.Context(), id, keyvault.Ed25519, nil)
		require.NoError(b, err)
		start := time.Now()
		changed(func() bool { _, err := vb.Get(b.Context(), id); return err == nil })
		follow += time.Since(start)
	}
	b.ReportMetric(float64(follow.Nanoseconds())/float64(b.N), "ns/follow")
}

// BenchmarkVaultFollowChange measures what one change costs a deployment
// of two replicas and etcd (one member on loopback, all in this process)
// holding n keys: one replica rotates a key, and the other serves the new
// version by its watch alone. ns/follow is the time from the rotation's
// return until then (mostly etcd's writes and reads waiting on each
// other); cpu-ns/change is the CPU the process spent per change, the
// rotating replica's, etcd's and the follower's. How they grow with n is
// the cost of a change in the size of the store.
func BenchmarkVaultFollowChange(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			c := etcdtest.Start(b, 1)
			s := func() *etcdstore.Store {
				s, err := etcdstore.Open(b.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/bench"})
				require.NoError(b, err)
				return s
			}
			va := openVault(b, s())
			for i := range n {
				_, err := va.Create(b.Context(), fmt.Sprintf("k%d", i), keyvault.Ed25519, nil)
				require.NoError(b, err)
			}
			vb := openVault(b, s())
			changed := waitChange(b, vb)
			i := 0
			var follow time.Duration
			cpu := processCPU(b)
			for b.Loop() {
				id := fmt.Sprintf("k%d", i%n)
				i++
				k, err := va.Rotate(b.Context(), id)
				require.NoError(b, err)
				start := time.Now()
				changed(func() bool {
					got, err := vb.Get(b.Context(), id)
					return err == nil && got.Primary == k.Primary
				})
				follow += time.Since(start)
			}
			b.ReportMetric(float64((processCPU(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/change")
			b.ReportMetric(float64(follow.Nanoseconds())/float64(b.N), "ns/follow")
		})
	}
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cutOff is a replica's store whose Revision reads fail while cut is set:
// the replica can confirm its view no more (its lease and announcement
// live on), as one whose reads of etcd time out.
type cutOff struct {
	*etcdstore.Store
	cut atomic.Bool
}

func (s *cutOff) Revision(ctx context.Context) (int64, error) {
	if s.cut.Load() {
		return 0, fmt.Errorf("test: cut off: %w", keyvault.ErrUnavailable)
	}
	return s.Store.Revision(ctx)
}

// cutNow cuts the store of replica v off, and returns once v has no
// Revision read in flight that began before the cut: such a read, slow on
// a loaded machine, could answer with a revision committed after the cut,
// and v would apply and announce it. v reads one round at a time (Sync),
// and the round answering a call made now begins after the cut, so it
// fails, and every later one does.
func (s *cutOff) cutNow(t *testing.T, v *keyvault.Vault) {
	t.Helper()
	s.cut.Store(true)
	require.ErrorContains(t, v.Sync(t.Context()), "test: cut off", "a round begun after the cut")
}

// shortBound gives a replica's store the bound of withLongBound's first
// replica.
func shortBound(cfg *etcdstore.Config) { cfg.StalenessBound = 200 * time.Millisecond }

// withLongBound opens a vault on as (opened on prefix with shortBound) and a replica
// beside it of a bound of an hour, whose store it returns to be cut off,
// and makes keys ids of two versions through the first; it returns once
// the second applied them and announced its bound.
func withLongBound(t *testing.T, c *etcdtest.Cluster, prefix string, as keyvault.SharedStore, ids ...string) (a, l *keyvault.Vault, ls *cutOff) {
	t.Helper()
	ctx := t.Context()
	const long = time.Hour
	a = openVault(t, as, keyvault.WithStalenessBound(200*time.Millisecond))
	ls = &cutOff{Store: open(t, c, prefix, func(cfg *etcdstore.Config) { cfg.StalenessBound = long })}
	l = openVault(t, ls, keyvault.WithStalenessBound(long))
	for _, id := range ids {
		_, err := a.Create(ctx, id, keyvault.Ed25519, nil)
		require.NoError(t, err)
		_, err = a.Rotate(ctx, id)
		require.NoError(t, err)
	}
	require.NoError(t, l.Sync(ctx))
	raw := open(t, c, prefix)
	require.Eventually(t, func() bool {
		b, err := raw.LongestStalenessBound(ctx)
		return err == nil && b == long
	}, time.Minute, 10*time.Millisecond, "the long bound announced")
	return a, l, ls
}

// TestRevocationWaitsForTheLongestBound: a replica started with a longer
// -staleness-bound than the others (an operator's mistake: every replica
// must have the same) trusts a view it cannot confirm for that long, so a
// revocation made on another replica waits for the longest bound the live
// replicas announced, not its own: a disable does not return as done while
// that replica, cut off, still signs with the version it disabled.
func TestRevocationWaitsForTheLongestBound(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	a, l, ls := withLongBound(t, c, "/bounds", open(t, c, "/bounds", shortBound), "web")
	require.NoError(t, sign(l, "web", 1))

	ls.cutNow(t, l)
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := a.SetVersionEnabled(dctx, "web", 1, false)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the disable waits for the cut-off replica, whose bound is an hour")
	assert.ErrorContains(t, err, "refuse key use within 1h0m0s of it")
	assert.NoError(t, sign(l, "web", 1), "why: the cut-off replica still trusts its view, and signs with version 1")
	k, err := a.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, keyvault.StateDisabled, k.Versions[0].State, "committed")
}

// unreadBounds is a replica's store whose reads of the announced staleness
// bounds fail while unread is set, as when etcd is briefly unreachable
// just after a revocation's commit.
type unreadBounds struct {
	*etcdstore.Store
	unread atomic.Bool
}

func (s *unreadBounds) LongestStalenessBound(ctx context.Context) (time.Duration, error) {
	if s.unread.Load() {
		return 0, fmt.Errorf("test: bounds unread: %w", keyvault.ErrUnavailable)
	}
	return s.Store.LongestStalenessBound(ctx)
}

// TestRevocationRetriedWaitsToo: a disable whose wait did not end (the
// call's deadline, or the bounds could not be read: UNAVAILABLE, which a
// caller retries) is committed; the caller's retry finds the version
// disabled already, and must not report it done while a replica that has
// not applied it still signs with it. It waits as the first call did.
func TestRevocationRetriedWaitsToo(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	as := &unreadBounds{Store: open(t, c, "/retried", shortBound)}
	a, l, ls := withLongBound(t, c, "/retried", as, "web", "api")
	ls.cutNow(t, l)

	// The bounds unread: committed, UNAVAILABLE, then retried.
	as.unread.Store(true)
	_, err := a.SetVersionEnabled(ctx, "web", 1, false)
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "the change is committed")
	as.unread.Store(false)
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = a.SetVersionEnabled(dctx, "web", 1, false)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the retry waits for the cut-off replica too")
	assert.NoError(t, sign(l, "web", 1), "which still signs with version 1")

	// The deadline ended the first call; the retry, and a destroy, wait too.
	dctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = a.SetVersionEnabled(dctx, "api", 1, false)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	dctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = a.SetVersionEnabled(dctx, "api", 1, false)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the retry waits for the cut-off replica too")
	assert.NoError(t, sign(l, "api", 1), "which still signs with version 1")
}
