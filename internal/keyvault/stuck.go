package keyvault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"
)

// stuckLogEvery is how often a key left to destroy in its backend that
// keeps failing (with the same thing to do) is logged again. keepUp retries it
// four times per staleness bound: a replica without the backend (a
// misconfigured one, or one of a mixed fleet) would otherwise log an
// ERROR at every tick for as long as the key stands.
const stuckLogEvery = 10 * time.Minute

// failures are the records of left work that could not be finished, each
// with its cause.
type failures map[RecordRef]error

// fail records that ref could not be finished for err.
func (f failures) fail(ref RecordRef, err error) { f[ref] = fmt.Errorf("%v: %w", ref, err) }

// err joins the causes, in the order of the records.
func (f failures) err() error {
	var errs []error
	for _, ref := range slices.SortedFunc(maps.Keys(f), compareRefs) {
		errs = append(errs, f[ref])
	}
	return errors.Join(errs...)
}

// stuckWork is the left work (finishLeftWork) this replica tried and
// could not finish: keys to destroy in their backends, those of destroyed
// versions (by handle) and those of creations whose version never reached
// the store (by an intent's label). Each is logged at ERROR when it first
// fails, again only when what to do about it changes (the backend is
// configured here now, and fails) or stuckLogEvery has passed, and at INFO
// once it is no longer in the view (finished by this replica or another).
// Not when the error's text changes: a backend's error may name what
// differs at every attempt (a session, a network address, a time), and two
// causes taking turns would be logged at every tick all the same.
type stuckWork struct {
	items map[RecordRef]stuckItem
	count *atomic.Int64 // len(items), for StuckBackendDestroys
}

type stuckItem struct {
	what   string // what is left: "the key of a destroyed version"…
	action string // what to do, as logged
	logged time.Time
}

// failed records the failures of one kind of left work: what is left,
// the backend of each record, what failed.
func (s stuckWork) failed(ctx context.Context, v *Vault, now time.Time, what string, backends map[RecordRef]string, f failures) {
	for ref, err := range f {
		backend, known := backends[ref]
		var action string
		switch _, ok := v.backends[backend]; {
		case !known:
			// Its record did not open (damaged, or not the manifest's).
			action = "the record does not open, so its backend is unknown: find what changed the store (see err); a key it held stays in its backend until destroyed there by hand"
		case !ok:
			action = fmt.Sprintf("configure the %s backend on this replica as on the replica that made the key, or run a replica that has it", backend)
		default:
			action = fmt.Sprintf("make the %s backend work on this replica (its device or token reachable, its credentials right)", backend)
		}
		if it, ok := s.items[ref]; ok && it.action == action && now.Sub(it.logged) < stuckLogEvery {
			continue
		}
		s.items[ref] = stuckItem{what: what, action: action, logged: now}
		slog.ErrorContext(ctx, "keyvault: "+what+" is still in its key backend, and this replica cannot destroy it; it retries, "+
			"and logs this again only if what to do changes or every "+stuckLogEvery.String(),
			"record", ref.String(), "backend", backend, "action", action, "err", err)
	}
	s.count.Store(int64(len(s.items)))
}

// settle forgets, logging each, the stuck records that the view no longer
// holds: their keys are destroyed (or, for an intent, its version reached
// the store after all). The caller holds writeMu.
func (s stuckWork) settle(ctx context.Context, v *Vault) {
	for ref, it := range s.items {
		if _, ok := v.entries[ref]; ok {
			continue
		}
		delete(s.items, ref)
		slog.InfoContext(ctx, "keyvault: "+it.what+" that this replica could not destroy in its key backend is no longer left to it: "+
			"finished, by this replica or another", "record", ref.String())
	}
	s.count.Store(int64(len(s.items)))
}

// StuckBackendDestroys is how many keys this replica was left to destroy
// in their key backends (by the replicas that destroyed their versions,
// or made them for versions that never reached the store) and could not:
// it lacks the backend, or the backend failed. The log says which, at
// ERROR. It is 0 for a vault on a store no other process writes, and for a
// closed vault, which tries nothing any more: what it could not finish is
// left to the replicas still open (or to this process's next vault, which
// counts afresh), and a gauge that kept the closed vault's count would
// show keys stuck that nothing is trying to destroy.
func (v *Vault) StuckBackendDestroys() int {
	if v.follow == nil || v.isClosed() {
		return 0
	}
	return int(v.follow.stuck.Load())
}
