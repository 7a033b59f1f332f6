package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newSharedVault opens a vault, one replica, on s.
func newSharedVault(tb testing.TB, s *memShared, opts ...Option) (*Vault, *memClient) {
	tb.Helper()
	c := s.client()
	v, err := New(ctx, c, testKEK, opts...)
	require.NoError(tb, err)
	tb.Cleanup(func() { v.Close() })
	return v, c
}

// changes collects what Subscribe reports.
type changes struct {
	mu  sync.Mutex
	ids []string
	ch  chan string
}

func subscribe(v *Vault) *changes {
	c := &changes{ch: make(chan string, 1000)}
	v.Subscribe(func(id string) {
		c.mu.Lock()
		c.ids = append(c.ids, id)
		c.mu.Unlock()
		c.ch <- id
	})
	return c
}

func (c *changes) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := c.ids
	c.ids = nil
	for range len(c.ch) {
		<-c.ch
	}
	return ids
}

// waitFor waits for Subscribe to report id.
func (c *changes) waitFor(tb testing.TB, id string) {
	tb.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-c.ch:
			if got == id {
				return
			}
		case <-timeout:
			require.FailNow(tb, "no change reported", "key %q", id)
		}
	}
}

// TestSharedFollow: what one replica changes, another serves once it
// synced, and its watch brings it there without a Sync too; Subscribe
// reports each change on both.
func TestSharedFollow(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, _ := newSharedVault(t, s)
	subA, subB := subscribe(a), subscribe(b)

	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)
	assert.Equal(t, []string{"web"}, subA.take())
	assert.Equal(t, []string{"web"}, subB.take())

	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	subB.waitFor(t, "web") // the watch, no Sync
	signOK(t, b, "web", 2)
	key, err := b.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, uint32(2), key.Primary)

	cert := selfSigned(t, mustSigner(t, a, "web", 2))
	_, err = a.AttachChain(ctx, "web", 2, [][]byte{cert})
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	_, _, chain, err := b.VersionChain(ctx, "web", 2)
	require.NoError(t, err)
	assert.Equal(t, [][]byte{cert}, chain)

	// And back: B's change serves on A.
	_, err = b.Create(ctx, "api", Ed25519, map[string]string{"team": "b"})
	require.NoError(t, err)
	require.NoError(t, a.Sync(ctx))
	key, err = a.Get(ctx, "api")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"team": "b"}, key.Labels)
	keys, _, err := a.List(ctx, 0, "")
	require.NoError(t, err)
	assert.Len(t, keys, 2)
	assert.Contains(t, subA.take(), "api")
}

// mustSigner is a crypto.Signer for version n of key id, signing through v.
func mustSigner(t *testing.T, v *Vault, id string, n uint32) crypto.Signer {
	t.Helper()
	key, err := v.Get(ctx, id)
	require.NoError(t, err)
	return vaultSigner{v: v, id: id, n: n, pub: key.Versions[n-1].PublicKey}
}

type vaultSigner struct {
	v   *Vault
	id  string
	n   uint32
	pub crypto.PublicKey
}

func (s vaultSigner) Public() crypto.PublicKey { return s.pub }

func (s vaultSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.v.Sign(ctx, s.id, s.n, tls.ECDSAWithP256AndSHA256, digest, true)
}

// countingBackend is the software backend under another name, counting
// the keys it loads from their handles.
type countingBackend struct{ loads, destroyed atomic.Int64 }

func (b *countingBackend) Name() string { return "counting" }

func (b *countingBackend) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	return softwareBackend{}.Generate(ctx, alg, label)
}

func (b *countingBackend) Load(ctx context.Context, alg Algorithm, handle []byte) (crypto.Signer, error) {
	b.loads.Add(1)
	return softwareBackend{}.Load(ctx, alg, handle)
}

func (b *countingBackend) Destroy(ctx context.Context, handle []byte) error {
	b.destroyed.Add(1)
	return nil
}

// lostAnswer is a store whose commits apply but answer ErrUnavailable, as
// an etcd request that timed out after etcd committed it.
type lostAnswer struct {
	*memClient
	lose atomic.Bool
}

func (s *lostAnswer) Commit(ctx context.Context, w Write) (int64, error) {
	rev, err := s.memClient.Commit(ctx, w)
	if err == nil && s.lose.Load() {
		return 0, fmt.Errorf("test: no answer: %w", ErrUnavailable)
	}
	return rev, err
}

// TestSharedUnconfirmedCommitKeepsTheBackendKey: a rotation the store did
// not confirm may be committed; the key its backend made is kept, and the
// vault serves it once it reads the store again.
func TestSharedUnconfirmedCommitKeepsTheBackendKey(t *testing.T) {
	s := newMemShared()
	backend := &countingBackend{}
	store := &lostAnswer{memClient: s.client()}
	v, err := New(ctx, store, testKEK, WithBackend(backend))
	require.NoError(t, err)
	defer v.Close()
	_, err = v.CreateInBackend(ctx, "counting", "web", ECDSAP256, nil)
	require.NoError(t, err)

	store.lose.Store(true)
	_, err = v.Rotate(ctx, "web")
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Zero(t, backend.destroyed.Load(), "the key of a rotation that may be committed is kept")
	store.lose.Store(false)
	require.NoError(t, v.Sync(ctx))
	signOK(t, v, "web", 2)
}

// failAfterCommit is a store whose commits apply and then fail, returning
// their revision with the error, as etcdstore's do when etcd refuses the
// compaction that follows a commit erasing records (a user without the
// root role) or does not answer it.
type failAfterCommit struct {
	*memClient
	fail atomic.Bool
}

func (s *failAfterCommit) Commit(ctx context.Context, w Write) (int64, error) {
	rev, err := s.memClient.Commit(ctx, w)
	if err == nil && s.fail.Load() {
		return rev, fmt.Errorf("test: committed at revision %d, but the compaction after it failed: %w", rev, ErrUnavailable)
	}
	return rev, err
}

// TestSharedRevocationCommittedThenFailed: a disable or destroy the store
// committed and then failed after (etcd refusing the compaction) is done:
// the call says what failed, and yet waits for the other replicas as any
// revocation, and a destroy destroys the key in its backend (the store no
// longer names it, so nothing else ever would).
func TestSharedRevocationCommittedThenFailed(t *testing.T) {
	s := newMemShared()
	backend := &countingBackend{}
	store := &failAfterCommit{memClient: s.client()}
	a, err := New(ctx, store, testKEK, WithBackend(backend), WithStalenessBound(5*time.Second))
	require.NoError(t, err)
	defer a.Close()
	b, bc := newSharedVault(t, s, WithBackend(backend), WithStalenessBound(5*time.Second))
	_, err = a.CreateInBackend(ctx, "counting", "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)

	store.fail.Store(true)
	bc.scanDelay.Store(int64(300 * time.Millisecond))
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "compaction")
	signFails(t, b, "web", 1, ErrFailedPrecondition)

	_, err = a.DestroyVersion(ctx, "web", 1)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Equal(t, int64(1), backend.destroyed.Load(), "the destroyed version's key is destroyed in its backend")
	for _, v := range []*Vault{a, b} {
		key, err := v.Get(ctx, "web")
		require.NoError(t, err)
		assert.Equal(t, StateDestroyed, key.Versions[0].State)
	}
	signOK(t, b, "web", 2)
}

// TestSharedFollowKeepsUnchangedVersions: following a change loads only
// the versions it wrote; every other version, its loaded key (an HSM
// object for the pkcs11 backend) and its key's state are kept as they are.
func TestSharedFollowKeepsUnchangedVersions(t *testing.T) {
	s := newMemShared()
	backend := &countingBackend{}
	a, _ := newSharedVault(t, s, WithBackend(backend))
	_, err := a.CreateInBackend(ctx, "counting", "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	b, _ := newSharedVault(t, s, WithBackend(backend))
	require.Equal(t, int64(2), backend.loads.Load(), "B loads both versions at start")
	web, err := b.key("web")
	require.NoError(t, err)

	_, err = a.CreateInBackend(ctx, "counting", "api", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "api")
	require.NoError(t, err)
	_, err = a.SetVersionEnabled(ctx, "api", 1, false)
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))

	assert.Equal(t, int64(2+2), backend.loads.Load(), "B loaded api's two versions, not web's again")
	after, err := b.key("web")
	require.NoError(t, err)
	assert.Same(t, web, after, "web's state")
	assert.Same(t, web.versions[0], after.versions[0])

	// A change of one version of web loads nothing: its record changed,
	// not its private key's.
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	after, err = b.key("web")
	require.NoError(t, err)
	assert.NotSame(t, web, after)
	assert.Same(t, web.versions[1], after.versions[1], "web version 2 did not change")
	assert.Equal(t, StateDisabled, after.versions[0].state)
	assert.Same(t, web.versions[0].signer, after.versions[0].signer, "the loaded key of web version 1")
	assert.Equal(t, int64(2+2), backend.loads.Load(), "no key loaded again")
	signFails(t, b, "web", 1, ErrFailedPrecondition)
}

// TestSyncCoalesces: many Syncs at once make a few Revision reads, not one
// each (any client can make a server Sync, with a ticket under an unknown
// key), and each still returns a view that has what was committed before
// it was called.
func TestSyncCoalesces(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, bc := newSharedVault(t, s)
	bc.revisionDelay.Store(int64(20 * time.Millisecond))
	const callers = 200
	before := bc.revisions.Load()
	var wg sync.WaitGroup
	for i := range callers {
		id := fmt.Sprintf("k%d", i)
		if i%50 == 0 {
			_, err := a.Create(ctx, id, Ed25519, nil)
			require.NoError(t, err)
		}
		wg.Go(func() {
			if assert.NoError(t, b.Sync(ctx)) && i%50 == 0 {
				_, err := b.Get(ctx, id)
				assert.NoError(t, err, "created before Sync was called")
			}
		})
	}
	wg.Wait()
	reads := bc.revisions.Load() - before
	t.Logf("%d Syncs, %d Revision reads", callers, reads)
	assert.Less(t, reads, int64(callers/4))
}

// TestCloseEndsEveryStoreCall: Close closes the store only once no call of
// the vault is in flight, and none reaches the store after. A Sync round
// begun just before Close (a caller naming a key it does not know) used to
// run on: in this test's store its announcement outlived the replica, and
// every KEK rotation after waited for ever for a replica that was gone.
func TestCloseEndsEveryStoreCall(t *testing.T) {
	s := newMemShared()
	v, c := newSharedVault(t, s)
	c.revisionDelay.Store(int64(100 * time.Millisecond))
	before := c.revisions.Load()
	synced := make(chan error, 1)
	go func() { synced <- v.Sync(ctx) }()
	require.Eventually(t, func() bool { return c.revisions.Load() > before }, 5*time.Second, time.Millisecond, "the round reads the revision")
	require.NoError(t, v.Close())
	assert.Zero(t, c.busyAtClose.Load(), "calls in flight when the store was closed")
	<-synced
	assert.ErrorIs(t, v.Sync(ctx), ErrClosed)
	assert.Zero(t, c.usedAfterClose.Load(), "calls after the store was closed")
	s.mu.Lock()
	assert.NotContains(t, s.applied, c, "the replica is announced no more")
	s.mu.Unlock()
}

// TestSharedConcurrentRotation: two replicas rotate one key at once, many
// rounds. Every rotation either makes a version or aborts; none is lost or
// made twice, and a third replica opening the store afterwards (checking
// every record against the manifest) finds exactly those.
func TestSharedConcurrentRotation(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, _ := newSharedVault(t, s)
	_, err := a.Create(ctx, "k", Ed25519, nil)
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))

	const rounds = 60
	type made struct {
		number uint32
		pub    []byte
	}
	results := make(chan made, 2*rounds)
	var aborted atomic.Int64
	var wg sync.WaitGroup
	for _, v := range []*Vault{a, b} {
		wg.Go(func() {
			for range rounds {
				key, err := v.Rotate(ctx, "k")
				if errors.Is(err, ErrAborted) {
					aborted.Add(1)
					continue
				}
				if !assert.NoError(t, err) {
					return
				}
				// The version this rotation made is the primary one of the
				// view it returns.
				pub, err := x509.MarshalPKIXPublicKey(key.Versions[key.Primary-1].PublicKey)
				if !assert.NoError(t, err) { // not require: this is not the test's goroutine
					return
				}
				results <- made{number: key.Primary, pub: pub}
			}
		})
	}
	wg.Wait()
	close(results)

	byNumber := map[uint32][]byte{}
	for r := range results {
		_, dup := byNumber[r.number]
		assert.False(t, dup, "version %d made twice", r.number)
		byNumber[r.number] = r.pub
	}
	t.Logf("%d rotations made a version, %d aborted", len(byNumber), aborted.Load())
	assert.Equal(t, int64(2*rounds), int64(len(byNumber))+aborted.Load())
	assert.Less(t, aborted.Load(), int64(rounds), "most rotations succeed")

	c, _ := newSharedVault(t, s) // opens every record, checks the manifest
	require.NoError(t, a.Sync(ctx))
	require.NoError(t, b.Sync(ctx))
	for _, v := range []*Vault{a, b, c} {
		key, err := v.Get(ctx, "k")
		require.NoError(t, err)
		require.Len(t, key.Versions, 1+len(byNumber), "no version lost or extra")
		for _, ver := range key.Versions[1:] {
			pub, err := x509.MarshalPKIXPublicKey(ver.PublicKey)
			require.NoError(t, err)
			assert.Equal(t, byNumber[ver.Number], pub, "version %d holds the key its rotation made", ver.Number)
		}
		for n := uint32(1); n <= key.Primary; n++ {
			_, err := v.Sign(ctx, "k", n, tls.Ed25519, []byte("m"), false)
			assert.NoError(t, err, "version %d", n)
		}
	}
}

// alwaysConflicting is a store every commit of which conflicts.
type alwaysConflicting struct {
	*memClient
	commits atomic.Int64
}

func (s *alwaysConflicting) Commit(ctx context.Context, w Write) (int64, error) {
	s.commits.Add(1)
	return 0, fmt.Errorf("test: %w", ErrConflict)
}

// TestSharedConflictsAbort: a change that keeps conflicting gives up after
// maxCommitAttempts attempts with ErrAborted, reading the store again
// before each new attempt, and changes nothing.
func TestSharedConflictsAbort(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	_, err := a.Create(ctx, "k", Ed25519, nil)
	require.NoError(t, err)
	c := &alwaysConflicting{memClient: s.client()}
	v, err := New(ctx, c, testKEK)
	require.NoError(t, err)
	defer v.Close()
	scans := c.scans.Load()

	_, err = v.Rotate(ctx, "k")
	require.ErrorIs(t, err, ErrAborted)
	assert.NotErrorIs(t, err, ErrConflict, "the conflict stays inside the vault")
	assert.Equal(t, int64(maxCommitAttempts), c.commits.Load())
	assert.GreaterOrEqual(t, c.scans.Load()-scans, int64(maxCommitAttempts-1), "the store read again before each new attempt")
	key, err := v.Get(ctx, "k")
	require.NoError(t, err)
	assert.Len(t, key.Versions, 1)
}

// TestSharedStartTogether: replicas starting at once on an empty store
// make one vault: one creates it, the others conflict and open it.
func TestSharedStartTogether(t *testing.T) {
	s := newMemShared()
	vaults := make([]*Vault, 4)
	var wg sync.WaitGroup
	for i := range vaults {
		wg.Go(func() {
			v, err := New(ctx, s.client(), testKEK)
			if assert.NoError(t, err) {
				vaults[i] = v
			}
		})
	}
	wg.Wait()
	for _, v := range vaults {
		if v != nil {
			defer v.Close()
		}
	}
	_, err := vaults[0].Create(ctx, "k", Ed25519, nil)
	require.NoError(t, err)
	for _, v := range vaults[1:] {
		require.NoError(t, v.Sync(ctx))
		_, err := v.Get(ctx, "k")
		assert.NoError(t, err)
	}
}

// TestSharedRevocationWaitsForReplicas: a disable or destroy returns only
// once every replica applied it. B reads the store slowly, so that without
// waiting for it, it would still sign with the version when the call
// returns.
func TestSharedRevocationWaitsForReplicas(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s, WithStalenessBound(5*time.Second))
	b, bc := newSharedVault(t, s, WithStalenessBound(5*time.Second))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)

	bc.scanDelay.Store(int64(300 * time.Millisecond))
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	signFails(t, b, "web", 1, ErrFailedPrecondition)
	signOK(t, b, "web", 2)

	_, err = a.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	key, err := b.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, key.Versions[0].State, "B applied the destroy")
	state, err := b.key("web")
	require.NoError(t, err)
	assert.Nil(t, state.versions[0].signer, "B dropped the private key")
}

// TestSharedRevocationFencesACutOffReplica: a replica cut off from the
// store cannot apply a revocation; the call returns after the staleness
// bound, and by then that replica refuses every key use. Ticket keys stay
// usable there. Once it reaches the store again it serves what the store
// holds.
func TestSharedRevocationFencesACutOffReplica(t *testing.T) {
	const bound = 400 * time.Millisecond
	s := newMemShared()
	a, _ := newSharedVault(t, s, WithStalenessBound(bound))
	b, bc := newSharedVault(t, s, WithStalenessBound(bound))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	tickets, err := NewTicketKeys(b, TicketKeyOptions{})
	require.NoError(t, err)
	ticket, err := tickets.Seal(ctx, "scope", []byte("state"))
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)

	bc.setDown(true)
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = b.Sign(ctx, "web", 1, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorContains(t, err, "refuses key use")
	signFails(t, b, "web", 2, ErrUnavailable) // every key use, not only the revoked one
	_, err = b.Decrypt(ctx, "web", 2, DecryptRSAPKCS1TLSPremaster, make([]byte, 256), tls.VersionTLS12)
	assert.ErrorIs(t, err, ErrUnavailable)
	signOK(t, a, "web", 2)
	plaintext, err := tickets.Open(ctx, "scope", ticket)
	require.NoError(t, err, "ticket keys are not revocable, and stay usable")
	assert.Equal(t, []byte("state"), plaintext)
	assert.ErrorIs(t, b.Sync(ctx), ErrUnavailable)

	bc.setDown(false)
	require.NoError(t, b.Sync(ctx))
	signFails(t, b, "web", 1, ErrFailedPrecondition)
	signOK(t, b, "web", 2)
}

// TestSharedRevocationWaitsForAReplicaWhoseAnnouncementEnded: a replica
// whose announcement ended (its etcd lease expired while it could not reach
// the store) and that reaches the store again announces itself again before
// it confirms a view: a revocation then waits for it as for any replica,
// rather than return while it still signs with the version.
func TestSharedRevocationWaitsForAReplicaWhoseAnnouncementEnded(t *testing.T) {
	const bound = 2 * time.Second
	s := newMemShared()
	a, _ := newSharedVault(t, s, WithStalenessBound(bound))
	b, bc := newSharedVault(t, s, WithStalenessBound(bound))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = a.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, b.Sync(ctx))
	signOK(t, b, "web", 1)

	bc.expireAnnouncement()
	// B confirms its view on its own schedule: two more Revision reads
	// are a whole round of it after the expiry.
	n := bc.revisions.Load()
	require.Eventually(t, func() bool { return bc.revisions.Load() >= n+2 }, 10*time.Second, 10*time.Millisecond)
	signOK(t, b, "web", 1) // B serves, confirmed

	bc.scanDelay.Store(int64(300 * time.Millisecond))
	_, err = a.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	signFails(t, b, "web", 1, ErrFailedPrecondition)
}

// TestSharedStalenessAfterTheStoreAnswers: the fence lifts by itself once
// the store answers again (the follower confirms on its own schedule).
func TestSharedStalenessAfterTheStoreAnswers(t *testing.T) {
	const bound = 200 * time.Millisecond
	s := newMemShared()
	a, ac := newSharedVault(t, s, WithStalenessBound(bound))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	ac.setDown(true)
	require.Eventually(t, func() bool {
		_, err := a.Sign(ctx, "web", 1, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
		return errors.Is(err, ErrUnavailable)
	}, 10*time.Second, bound/4)
	ac.setDown(false)
	require.Eventually(t, func() bool {
		_, err := a.Sign(ctx, "web", 1, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
		return err == nil
	}, 10*time.Second, bound/4)
}

// TestSharedKEKRotationFollowed: a KEK rotation on one replica is followed
// by the other, started with the old KEK: it serves throughout, writes
// under the new KEK after, and the store then opens with the new KEK only.
func TestSharedKEKRotationFollowed(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, _ := newSharedVault(t, s)
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	newKEK := bytes.Repeat([]byte{0x17}, kekSize)
	st, err := a.RotateKEK(ctx, newKEK)
	require.NoError(t, err)
	require.Equal(t, KEKID(newKEK), st.ID)

	require.NoError(t, b.Sync(ctx))
	assert.Equal(t, KEKID(newKEK), b.KEKStatus().ID)
	assert.Empty(t, b.KEKStatus().Retiring)
	signOK(t, b, "web", 1)
	_, err = b.Create(ctx, "api", Ed25519, nil)
	require.NoError(t, err)

	_, err = New(ctx, s.client(), testKEK)
	assert.ErrorIs(t, err, ErrWrongKEK, "the old KEK opens nothing any more")
	c, err := New(ctx, s.client(), newKEK)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Get(ctx, "api")
	assert.NoError(t, err)
}

// TestSharedBackupAfterAnotherReplicaChanged: a backup on a replica whose
// view is behind is of the store's state, not refused as corrupted.
func TestSharedBackupAfterAnotherReplicaChanged(t *testing.T) {
	s := newMemShared()
	a, _ := newSharedVault(t, s)
	b, bc := newSharedVault(t, s)
	bc.scanDelay.Store(int64(50 * time.Millisecond))
	_, err := a.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	var buf bytes.Buffer
	info, err := b.Backup(ctx, &buf)
	require.NoError(t, err)
	assert.Equal(t, 1, info.Keys)
}

// TestSyncWithoutSharedStore: on a store no other process writes, Sync has
// nothing to do, and fails only on a closed vault.
func TestSyncWithoutSharedStore(t *testing.T) {
	v, _ := newTestVault(t)
	require.NoError(t, v.Sync(ctx))
	require.NoError(t, v.Close())
	assert.ErrorIs(t, v.Sync(ctx), ErrClosed)
}

// TestSubscribeLocalChanges: Subscribe reports every change of a key on a
// vault of its own store, after it is served, and not after cancel.
func TestSubscribeLocalChanges(t *testing.T) {
	v, _ := newTestVault(t)
	var seen []string
	cancel := v.Subscribe(func(id string) {
		k, err := v.Get(ctx, id)
		require.NoError(t, err, "the change is served when fn runs")
		seen = append(seen, fmt.Sprintf("%s/%d", id, len(k.Versions)))
	})
	_, err := v.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false) // no change
	require.NoError(t, err)
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	cancel()
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, []string{"web/1", "web/2", "web/2", "web/2"}, seen)
}

// BenchmarkSharedPropagation measures the vault's part of the propagation
// bound: from Create returning on one replica to the key being served by
// another that follows by its watch alone, no Sync (ns/follow), on the
// in-memory shared store, the replicas holding b.N keys at the end. The
// etcd figure is etcdstore's BenchmarkVaultPropagation.
func BenchmarkSharedPropagation(b *testing.B) {
	s := newMemShared()
	va, _ := newSharedVault(b, s)
	vb, _ := newSharedVault(b, s)
	sub := subscribe(vb)
	i := 0
	var follow time.Duration
	for b.Loop() {
		id := fmt.Sprintf("k%d", i)
		i++
		_, err := va.Create(ctx, id, Ed25519, nil)
		require.NoError(b, err)
		start := time.Now()
		sub.waitFor(b, id)
		follow += time.Since(start)
	}
	b.ReportMetric(float64(follow.Nanoseconds())/float64(b.N), "ns/follow")
}
