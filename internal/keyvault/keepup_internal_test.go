package keyvault

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeepUpWhileAChangeHoldsWriteMu: a replica whose view is current
// goes on confirming it and announcing while a change holds writeMu, as a
// KEK rotation's step does while it waits for every replica's
// announcement (allHold): were keepUp to wait for writeMu, the rotation
// would wait for ever, and the replica would refuse key use once its view
// was older than the staleness bound.
func TestKeepUpWhileAChangeHoldsWriteMu(t *testing.T) {
	s := newMemShared()
	v, _ := newSharedVault(t, s, WithStalenessBound(400*time.Millisecond))
	require.NoError(t, v.Sync(ctx))
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	first := v.follow.confirmed.Load()
	// keepUp runs every quarter of the bound: a round or two, which a
	// loaded machine may delay (the bound of the wait only ends a failing
	// run: a keepUp that waits for writeMu never confirms).
	assert.Eventually(t, func() bool {
		return v.follow.confirmed.Load() > first
	}, 30*time.Second, 10*time.Millisecond, "keepUp confirmed the view once")
	second := v.follow.confirmed.Load()
	assert.Eventually(t, func() bool {
		return v.follow.confirmed.Load() > second
	}, 30*time.Second, 10*time.Millisecond, "keepUp went on confirming the view while writeMu was held")
}

// TestStuckWorkIsLoggedAgainOnlyLater: a record that keeps failing is
// logged at its first failure, then again only once stuckLogEvery has
// passed, with the error of then, however the error's text varies
// meanwhile; a change of what to do (the backend configured here now, and
// failing) is logged at once.
func TestStuckWorkIsLoggedAgainOnlyLater(t *testing.T) {
	var logged []string
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logged = append(logged, string(p))
		return len(p), nil
	}), nil)))
	defer slog.SetDefault(prev)
	v := &Vault{backends: map[string]KeyBackend{}}
	var count atomic.Int64
	s := stuckWork{items: make(map[RecordRef]stuckItem), count: &count}
	ref := RecordRef{Kind: RecordMaterial, ID: "t", Version: 1}
	backends := map[RecordRef]string{ref: "token"}
	fail := func(at time.Time, cause string) {
		f := make(failures)
		f.fail(ref, errors.New(cause))
		s.failed(ctx, v, at, "the key of a destroyed version", backends, f)
	}
	t0 := time.Now()
	fail(t0, "no backend (attempt 1)")
	fail(t0.Add(stuckLogEvery/2), "no backend (attempt 2)")
	require.Len(t, logged, 1, "the same action within stuckLogEvery, with another error text")
	assert.Contains(t, logged[0], "configure the token backend on this replica")
	v.backends["token"] = softwareBackend{}
	fail(t0.Add(stuckLogEvery/2), "refused at 10:00")
	require.Len(t, logged, 2, "a new action")
	assert.Contains(t, logged[1], "make the token backend work on this replica")
	fail(t0.Add(stuckLogEvery), "refused at 10:05")
	assert.Len(t, logged, 2)
	fail(t0.Add(stuckLogEvery/2+stuckLogEvery), "refused at 10:15")
	require.Len(t, logged, 3, "the same action, stuckLogEvery later")
	assert.Contains(t, logged[2], "refused at 10:15")
	assert.EqualValues(t, 1, count.Load())

	// A record that does not open (damaged) names no backend: the action
	// says so, not "configure the  backend".
	damaged := RecordRef{Kind: RecordKeyIntent, ID: "d", Version: 1}
	f := make(failures)
	f.fail(damaged, errors.New("record is corrupted or was tampered with"))
	s.failed(ctx, v, t0, "a key generated for a version that never reached the store", map[RecordRef]string{}, f)
	require.Len(t, logged, 4)
	assert.NotContains(t, logged[3], "the  backend")
	assert.Contains(t, logged[3], "the record does not open, so its backend is unknown")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
