package etcdstore_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// tokenBackend is a backend whose keys live outside the store (a
// keyvault.LabelDestroyer, as a PKCS#11 token is), which fails while
// broken is set, with an error whose text differs at every attempt (as
// one naming a session, a network address or a time does).
type tokenBackend struct {
	broken   atomic.Bool
	attempts atomic.Int64
	mu       sync.Mutex
	keys     map[string]crypto.Signer // by handle, which is the label
}

func newTokenBackend() *tokenBackend { return &tokenBackend{keys: make(map[string]crypto.Signer)} }

var errTokenBroken = errors.New("test: the token does not answer")

func (b *tokenBackend) Name() string { return "token" }

// fail is the error of an attempt while the backend is broken.
func (b *tokenBackend) fail() error {
	if !b.broken.Load() {
		return nil
	}
	return fmt.Errorf("%w (attempt %d)", errTokenBroken, b.attempts.Add(1))
}

func (b *tokenBackend) Generate(ctx context.Context, alg keyvault.Algorithm, label string) ([]byte, crypto.Signer, error) {
	if err := b.fail(); err != nil {
		return nil, nil, err
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keys[label] = key
	return []byte(label), key, nil
}

func (b *tokenBackend) Load(ctx context.Context, alg keyvault.Algorithm, handle []byte) (crypto.Signer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if k, ok := b.keys[string(handle)]; ok {
		return k, nil
	}
	return nil, errors.New("test: no such key in the token")
}

func (b *tokenBackend) Destroy(ctx context.Context, handle []byte) error {
	return b.DestroyLabeled(ctx, string(handle))
}

func (b *tokenBackend) DestroyLabeled(ctx context.Context, label string) error {
	if err := b.fail(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.keys, label)
	return nil
}

func (b *tokenBackend) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.keys)
}

// logRecords captures the records of the default logger.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

// captureLog makes the default logger's records go to the returned
// logRecords until the test ends.
func captureLog(t *testing.T) *logRecords {
	h := &logRecords{}
	prev := slog.Default()
	slog.SetDefault(slog.New(h))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return h
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecords) WithGroup(string) slog.Handler            { return h }

func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// take returns the records of level logged since they were last taken,
// each as its message and attributes.
func (h *logRecords) take(level slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	kept := h.records[:0]
	for _, r := range h.records {
		if r.Level != level {
			kept = append(kept, r)
			continue
		}
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.String())
			return true
		})
		out = append(out, b.String())
	}
	h.records = kept
	return out
}

// ticks counts the Revision reads of a replica: one at each keepUp tick.
type ticks struct {
	*etcdstore.Store
	n atomic.Int64
}

func (s *ticks) Revision(ctx context.Context) (int64, error) {
	s.n.Add(1)
	return s.Store.Revision(ctx)
}

// waitTicks returns once the replica reading s has made n more keepUp
// ticks.
func (s *ticks) waitTicks(t *testing.T, n int64) {
	until := s.n.Load() + n
	require.Eventually(t, func() bool { return s.n.Load() >= until }, time.Minute, time.Millisecond)
}

// stuckErrors returns the ERROR records logged since the last take that
// say left work is stuck.
func stuckErrors(logs *logRecords) []string {
	var out []string
	for _, r := range logs.take(slog.LevelError) {
		if strings.Contains(r, "is still in its key backend") {
			out = append(out, r)
		}
	}
	return out
}

// stuckBound is the staleness bound of the tests of stuck left work: keepUp
// ticks every quarter of it, and gives up on the store after it (a loaded
// machine makes a shorter one fail for that).
const stuckBound = 250 * time.Millisecond

// destroyLeft opens a vault on s with backend b, creates key "t" in b,
// rotates it, and destroys version 1 once fail made finishing the destroy
// fail (in the backend, or in the store): the destroy is committed, and
// left to finish.
func destroyLeft(t *testing.T, s keyvault.SharedStore, b keyvault.KeyBackend, fail func()) *keyvault.Vault {
	t.Helper()
	v := openVault(t, s, keyvault.WithBackend(b), keyvault.WithStalenessBound(stuckBound))
	ctx := t.Context()
	_, err := v.CreateInBackend(ctx, "token", "t", keyvault.Ed25519, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "t")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "t", 1, false)
	require.NoError(t, err)
	fail()
	_, err = v.DestroyVersion(ctx, "t", 1)
	require.NoError(t, err, "committed; its finishing is left")
	return v
}

// TestStuckDestroyIsLoggedOnce: a destroyed version whose key the backend
// keeps failing to destroy is retried at every keepUp tick (four per
// staleness bound) but logged at ERROR once (though the error's text
// differs at every attempt), saying what to do, counted
// as stuck meanwhile, and logged at INFO when the backend works again and
// the destroy is finished.
func TestStuckDestroyIsLoggedOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	logs := captureLog(t)
	b := newTokenBackend()
	s := &ticks{Store: open(t, c, "/stuck")}
	v := destroyLeft(t, s, b, func() { b.broken.Store(true) })

	require.Eventually(t, func() bool { return v.StuckBackendDestroys() == 1 }, time.Minute, time.Millisecond)
	errs := stuckErrors(logs)
	require.Len(t, errs, 1, "the first failure of keepUp's retry, besides the destroy's own")
	assert.Contains(t, errs[0], "the key of a destroyed version is still in its key backend")
	assert.Contains(t, errs[0], "make the token backend work on this replica")
	assert.Contains(t, errs[0], errTokenBroken.Error())
	s.waitTicks(t, 40)
	assert.Zero(t, len(stuckErrors(logs)), "ERROR records of 40 keepUp ticks that retried the destroy")
	assert.Equal(t, 1, v.StuckBackendDestroys())
	assert.Equal(t, 2, b.held())

	b.broken.Store(false)
	require.Eventually(t, func() bool { return v.StuckBackendDestroys() == 0 }, time.Minute, time.Millisecond)
	assert.Equal(t, 1, b.held(), "version 1's key destroyed")
	assert.Empty(t, stuckErrors(logs))
	var done []string
	for _, r := range logs.take(slog.LevelInfo) {
		if strings.Contains(r, "is no longer left to it") {
			done = append(done, r)
		}
	}
	require.Len(t, done, 1)
	assert.Contains(t, done[0], `key "t" version 1`)
}

// leaveIntent leaves an intent of key "t" in the store of c under /stuck:
// a replica whose token fails creates the key (the generation fails, and
// so does destroying by its label), then closes.
func leaveIntent(t *testing.T, c *etcdtest.Cluster) {
	t.Helper()
	broken := newTokenBackend()
	broken.broken.Store(true)
	a := openVault(t, open(t, c, "/stuck"), keyvault.WithBackend(broken), keyvault.WithStalenessBound(stuckBound))
	_, err := a.CreateInBackend(t.Context(), "token", "t", keyvault.Ed25519, nil)
	require.ErrorIs(t, err, errTokenBroken, "the intent stays")
	require.NoError(t, a.Close())
}

// TestStuckIntentIsLoggedOnce: a replica without the backend an intent
// names (one of a mixed fleet, or misconfigured) cannot undo it, at any of
// its keepUp ticks: it logs that at ERROR once, saying to configure the
// backend, counts it as stuck, and logs at INFO once a replica that has
// the backend undid it.
func TestStuckIntentIsLoggedOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	logs := captureLog(t)
	leaveIntent(t, c)

	s := &ticks{Store: open(t, c, "/stuck")}
	lacking := openVault(t, s, keyvault.WithStalenessBound(stuckBound))
	require.Eventually(t, func() bool { return lacking.StuckBackendDestroys() == 1 }, time.Minute, time.Millisecond)
	errs := stuckErrors(logs)
	require.Len(t, errs, 1)
	assert.Contains(t, errs[0], "a key generated for a version that never reached the store is still in its key backend")
	assert.Contains(t, errs[0], "configure the token backend on this replica")
	s.waitTicks(t, 40)
	assert.Zero(t, len(stuckErrors(logs)), "ERROR records of 40 keepUp ticks that tried to undo the intent")
	assert.Equal(t, 1, lacking.StuckBackendDestroys())

	openVault(t, open(t, c, "/stuck"), keyvault.WithBackend(newTokenBackend()), keyvault.WithStalenessBound(stuckBound))
	require.Eventually(t, func() bool { return lacking.StuckBackendDestroys() == 0 }, time.Minute, time.Millisecond,
		"the replica with the backend undid the intent")
	var done []string
	for _, r := range logs.take(slog.LevelInfo) {
		if strings.Contains(r, "is no longer left to it") {
			done = append(done, r)
		}
	}
	require.Len(t, done, 1)
	assert.Contains(t, done[0], "a key generated for a version that never reached the store")
}

// claimTimingOut is a store whose first commit of an intent's claim (a Put
// of an intent) returns only once its context ended: a commit that
// outlasts keepUp's tick on a loaded machine.
type claimTimingOut struct {
	*etcdstore.Store
	timedOut atomic.Bool
}

func (s *claimTimingOut) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	claim := slices.ContainsFunc(w.Put, func(r keyvault.Record) bool { return r.Kind == keyvault.RecordKeyIntent })
	if claim && s.timedOut.CompareAndSwap(false, true) {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return s.Store.Commit(ctx, w)
}

// TestIntentClaimTimingOutIsNotStuck: a replica that has the backend an
// intent names, whose claim of the intent fails in the store (its commit
// outlasts keepUp's tick), logs that the intent is not undone yet and
// undoes it at a later tick. It counts no key stuck in a backend and logs
// none: that would tell the operator to make a backend that works work,
// and log at INFO once the intent is undone, beside the INFO of each
// replica that lacks the backend (TestStuckIntentIsLoggedOnce).
func TestIntentClaimTimingOutIsNotStuck(t *testing.T) {
	c := etcdtest.Start(t, 1)
	logs := captureLog(t)
	leaveIntent(t, c)

	s := &claimTimingOut{Store: open(t, c, "/stuck")}
	v := openVault(t, s, keyvault.WithBackend(newTokenBackend()), keyvault.WithStalenessBound(stuckBound))
	notYet := finishedNotStuck(t, v, s, logs, func(ref keyvault.RecordRef) bool { return ref.Kind == keyvault.RecordKeyIntent }, "not undone yet")
	require.True(t, s.timedOut.Load(), "the first claim timed out")
	require.Len(t, notYet, 1)
	assert.Contains(t, notYet[0], `undo key "t" version 1 intent`)
	assert.Contains(t, notYet[0], context.DeadlineExceeded.Error())
}

// erasureTimingOut is a store whose first commits erasing a material
// record (a destroyed version's handle), as many as timeouts, fail as
// ones that did not complete in time.
type erasureTimingOut struct {
	*etcdstore.Store
	timeouts atomic.Int64
}

func (s *erasureTimingOut) Commit(ctx context.Context, w keyvault.Write) (int64, error) {
	erasure := slices.ContainsFunc(w.Erase, func(ref keyvault.RecordRef) bool { return ref.Kind == keyvault.RecordMaterial })
	if erasure && s.timeouts.Add(-1) >= 0 {
		return 0, fmt.Errorf("test: commit: %w", context.DeadlineExceeded)
	}
	return s.Store.Commit(ctx, w)
}

// TestDestroyErasureTimingOutIsNotStuck: a destroyed version whose key
// its backend destroyed, and whose handle's erasure fails in the store
// (its own replica's, then keepUp's), is finished at a later tick, and is
// not counted or logged as a key stuck in its backend, which holds it no
// more.
func TestDestroyErasureTimingOutIsNotStuck(t *testing.T) {
	c := etcdtest.Start(t, 1)
	logs := captureLog(t)
	b := newTokenBackend()
	s := &erasureTimingOut{Store: open(t, c, "/stuck")}
	v := destroyLeft(t, s, b, func() { s.timeouts.Store(2) })
	assert.Equal(t, 1, b.held(), "version 1's key destroyed")

	handle := keyvault.RecordRef{Kind: keyvault.RecordMaterial, ID: "t", Version: 1}
	notYet := finishedNotStuck(t, v, s, logs, func(ref keyvault.RecordRef) bool { return ref == handle }, "not finished yet")
	require.Negative(t, s.timeouts.Load(), "keepUp's first erasure timed out too")
	require.Len(t, notYet, 2, "the replica's own erasure, and keepUp's first")
	for _, r := range notYet {
		assert.Contains(t, r, "erase the handles of keys destroyed in their backends")
		assert.Contains(t, r, context.DeadlineExceeded.Error())
	}
}

// finishedNotStuck waits until s holds no record that left says is left
// work, checking that v never counts it as stuck, and that no record
// logged meanwhile says a key is stuck in its backend or that its stuck
// work ended. It returns the ERROR records that say the work is not done
// yet (that contain notYet).
func finishedNotStuck(t *testing.T, v *keyvault.Vault, s keyvault.Store, logs *logRecords, left func(keyvault.RecordRef) bool, notYet string) []string {
	t.Helper()
	stuck := 0
	require.Eventually(t, func() bool {
		stuck = max(stuck, v.StuckBackendDestroys())
		recs, _ := scan(t, s)
		return !slices.ContainsFunc(slices.Collect(maps.Keys(recs)), left)
	}, time.Minute, time.Millisecond, "the left work finished at a later tick")
	assert.Zero(t, stuck, "counted stuck")
	var out []string
	for _, r := range logs.take(slog.LevelError) {
		assert.NotContains(t, r, "is still in its key backend")
		if strings.Contains(r, notYet) {
			out = append(out, r)
		}
	}
	for _, r := range logs.take(slog.LevelInfo) {
		assert.NotContains(t, r, "is no longer left to it")
	}
	return out
}

// TestStuckCountEndsWithTheVault: a closed vault counts nothing stuck (it
// tries nothing any more), so the gauge of a server whose vault was closed
// shows no stale count, and a vault opened again on the store counts
// afresh what it, in turn, cannot finish.
func TestStuckCountEndsWithTheVault(t *testing.T) {
	c := etcdtest.Start(t, 1)
	captureLog(t)
	leaveIntent(t, c)

	lacking := openVault(t, open(t, c, "/stuck"), keyvault.WithStalenessBound(stuckBound))
	require.Eventually(t, func() bool { return lacking.StuckBackendDestroys() == 1 }, time.Minute, time.Millisecond)
	require.NoError(t, lacking.Close())
	assert.Zero(t, lacking.StuckBackendDestroys(), "closed")

	s := &ticks{Store: open(t, c, "/stuck")}
	again := openVault(t, s, keyvault.WithStalenessBound(stuckBound))
	require.Eventually(t, func() bool { return again.StuckBackendDestroys() == 1 }, time.Minute, time.Millisecond)
}

// pausingToken is a tokenBackend whose first Generate waits for release.
type pausingToken struct {
	*tokenBackend
	paused, release chan struct{}
	once            sync.Once
}

func (b *pausingToken) Generate(ctx context.Context, alg keyvault.Algorithm, label string) ([]byte, crypto.Signer, error) {
	first := false
	b.once.Do(func() { first = true })
	if first {
		close(b.paused)
		<-b.release
	}
	return b.tokenBackend.Generate(ctx, alg, label)
}

// TestKEKRotationOnAnotherReplicaDuringACreation: a KEK rotation made
// through one replica while another generates a key in a token (its intent
// committed, its version not yet) completes, and the creation succeeds: it
// makes the key again under the new KEK, destroying the first attempt's.
// The intent the first attempt left is undone by a replica (keepUp), and
// the token holds only the key stored.
func TestKEKRotationOnAnotherReplicaDuringACreation(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	token := newTokenBackend()
	b := &pausingToken{tokenBackend: token, paused: make(chan struct{}), release: make(chan struct{})}
	s := open(t, c, "/rewrap")
	making := openVault(t, s, keyvault.WithBackend(b), keyvault.WithStalenessBound(stuckBound))
	rotating := openVault(t, open(t, c, "/rewrap"), keyvault.WithBackend(token), keyvault.WithStalenessBound(stuckBound))
	for i := range 10 {
		_, err := rotating.Create(ctx, fmt.Sprintf("k%d", i), keyvault.Ed25519, nil)
		require.NoError(t, err)
	}

	created := make(chan error, 1)
	go func() {
		_, err := making.CreateInBackend(ctx, "token", "t", keyvault.Ed25519, nil)
		created <- err
	}()
	<-b.paused
	newKEK := bytes.Repeat([]byte{0x43}, 32)
	st, err := rotating.RotateKEK(ctx, newKEK)
	require.NoError(t, err)
	require.Zero(t, st.Stale)
	close(b.release)
	require.NoError(t, <-created)
	assert.Equal(t, keyvault.KEKID(newKEK), making.KEKStatus().ID)
	// Each replica confirms its view first: at the short bound, a loaded
	// machine may hold back keepUp's confirmations for longer than it, and
	// a view not confirmed within the bound refuses key use.
	require.NoError(t, making.Sync(ctx))
	require.NoError(t, sign(making, "t", 1))
	require.NoError(t, rotating.Sync(ctx))
	require.NoError(t, sign(rotating, "t", 1))
	assert.Equal(t, 1, token.held(), "the first attempt's key is destroyed")
	require.Eventually(t, func() bool {
		recs, _ := scan(t, s)
		for ref := range recs {
			if ref.Kind == keyvault.RecordKeyIntent {
				return false
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "the intent left is undone")
	assert.Equal(t, 1, token.held())
}
