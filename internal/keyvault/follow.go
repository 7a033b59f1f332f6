package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A vault on a SharedStore is one replica among several. Its view (keys,
// versions, ticket keys, the manifest) is the store at one revision:
//
//   - Every change is a compare-and-swap on the manifest's store revision
//     (commit's Write.If). Every commit rewrites the manifest, so a change
//     computed from a view another replica has moved past conflicts; the
//     vault then reads the store again and computes the change anew from
//     what it holds now (retry), at most maxCommitAttempts times before it
//     gives up with ErrAborted. Two replicas rotating one key at once thus
//     make two versions, numbered one after the other, never one lost.
//   - The view follows the store: a watch wakes it at every commit of any
//     replica, and it reads what changed since it last read the store
//     (refresh), keeping the loaded state of every version whose records
//     did not change, so following neither parses keys again nor reopens
//     HSM objects.
//   - Key use is fenced by staleness: a replica confirms its view when a
//     Revision read it sent at ts is answered and it has applied everything
//     up to that revision (confirmedAt = ts, on the monotonic clock). Once
//     the last confirmation is older than the staleness bound B, Sign,
//     Decrypt and the other uses of a private key fail with ErrUnavailable
//     until the store answers again.
//   - A change that revokes (disable, destroy) returns only once every live
//     replica announced it applied the change's revision, or B has passed
//     since the commit: a replica that has not applied it by then has not
//     confirmed a view since before the commit, and so refuses key use.
//     This needs the same B on every replica: where the replicas announce
//     theirs (etcdstore), it waits for the longest (revocationWait).
//
// Ticket and step-token keys are not revocable by the API: a replica with a
// stale view keeps sealing and opening with them.

// DefaultStalenessBound is the staleness bound B unless WithStalenessBound
// sets another.
const DefaultStalenessBound = 2 * time.Second

// maxCommitAttempts is how many times a change is computed and committed
// before a run of conflicts with other replicas aborts it.
const maxCommitAttempts = 8

// WithStalenessBound sets the staleness bound B of a vault on a
// SharedStore (see above); every replica of a deployment must use the same.
// A bound of zero or less keeps DefaultStalenessBound.
func WithStalenessBound(d time.Duration) Option {
	return func(v *Vault) {
		if d > 0 {
			v.staleBound = d
		}
	}
}

// aborted is the error of a change that conflicted attempts times.
func aborted(what string, attempts int) error {
	return fmt.Errorf("keyvault: %s: other replicas changed the store %d times while this change was computed; retry it: %w", what, attempts, ErrAborted)
}

// retry runs change, which computes a change from the vault's view and
// commits it, again on a view refreshed from the store each time its
// commit conflicts. The caller holds writeMu.
func (v *Vault) retry(ctx context.Context, what string, change func() error) error {
	caughtUp := false
	for attempt := 1; ; attempt++ {
		err := v.convertIfDue(ctx)
		if err == nil {
			err = change()
		}
		if errors.Is(err, ErrNotFound) && v.follow != nil && !caughtUp {
			// A key or version another replica made a moment ago may not
			// be in the view yet: if the store is ahead of the view, read
			// it once before saying so (a revision read first, so that a
			// change naming a key that exists nowhere rereads nothing).
			caughtUp = true
			rev, rerr := v.follow.store.Revision(ctx)
			if rerr != nil {
				return fmt.Errorf("keyvault: %s: read the shared store's revision: %w", what, rerr)
			}
			if rev <= v.storeRev {
				return err
			}
			if err := v.refreshTo(ctx, rev); err != nil {
				return fmt.Errorf("keyvault: %s: %w", what, err)
			}
			continue
		}
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if attempt == maxCommitAttempts {
			return aborted(what, attempt)
		}
		// A little jitter, growing, so that replicas that keep colliding
		// drift apart.
		select {
		case <-time.After(time.Duration(rand.Int64N(int64(attempt) * int64(2*time.Millisecond)))):
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := v.refresh(ctx); err != nil {
			return fmt.Errorf("keyvault: %s: %w", what, err)
		}
	}
}

// refresh makes the view the store's current state. The caller holds
// writeMu.
func (v *Vault) refresh(ctx context.Context) error { return v.refreshTo(ctx, 0) }

// refreshTo makes the view a state of the store at revision target or
// later (0: the current one). The caller holds writeMu.
//
// It opens the records of the state the view last read with the changes
// since put in and the erased records taken out, exactly what a Scan
// would return. The changes come from the watch when it has reported
// every one up to target (it carries the records each commit wrote), or
// else from the store (ScanChanged): the records written since, with the
// store's count of records, which with the new manifest tells which were
// erased. A follower of a store of N keys thus neither reads nor
// transfers N keys' records at each change. When that does not add up (a
// record the manifest lists is missing, another replica rotated the KEK)
// it reads the whole store, which says what is wrong.
func (v *Vault) refreshTo(ctx context.Context, target int64) error {
	if v.follow == nil || v.read.records == nil {
		// A store nothing follows (bolt) has no changes to read: it is
		// read whole.
		return v.refreshAll(ctx)
	}
	if target > 0 {
		if records, rev, ok := v.follow.watched.take(v.read, target); ok {
			return v.adoptState(ctx, storeState{rev: rev, records: records})
		}
	}
	records, rev, ok, err := v.readChanged(ctx)
	if err != nil {
		return fmt.Errorf("keyvault: read the store's changes: %w", err)
	}
	if ok {
		return v.adoptState(ctx, storeState{rev: rev, records: records})
	}
	return v.refreshAll(ctx)
}

// refreshAll makes the view the store's current state, read whole.
func (v *Vault) refreshAll(ctx context.Context) error {
	var records []Record
	rev, err := v.store.Scan(ctx, func(r Record) error {
		records = append(records, r)
		return nil
	})
	if err != nil {
		return fmt.Errorf("keyvault: read the store: %w", err)
	}
	// The records as read, not as a state's map: adopt reports a record
	// the store holds twice.
	if err := v.adopt(ctx, records, rev); err != nil {
		return err
	}
	if v.follow != nil {
		// The state the follower reads changes from; a bolt store's view
		// keeps none, as at its start.
		v.read = newStoreState(rev, records)
	}
	return nil
}

// storeState is a state of the store a vault read: its revision and
// records.
type storeState struct {
	rev     int64
	records map[RecordRef]Record
}

func newStoreState(rev int64, records []Record) storeState {
	s := storeState{rev: rev, records: make(map[RecordRef]Record, len(records))}
	for _, r := range records {
		s.records[r.RecordRef] = r
	}
	return s
}

// adoptState adopts s, a state of the store built from the one read last
// and the changes since, and remembers it as the state read last.
func (v *Vault) adoptState(ctx context.Context, s storeState) error {
	if err := v.adopt(ctx, slices.Collect(maps.Values(s.records)), s.rev); err != nil {
		return err
	}
	v.read = s
	return nil
}

// readChanged reads the records written since the state read last and
// returns the store's current state: revision rev, the records read last
// with the changed ones put in and the erased ones taken out. ok is false
// when the records do not add up to the store's count: refresh then reads
// the whole store. The caller holds writeMu.
func (v *Vault) readChanged(ctx context.Context) (records map[RecordRef]Record, rev int64, ok bool, err error) {
	records = maps.Clone(v.read.records)
	var changed []RecordRef
	rev, total, err := v.follow.store.ScanChanged(ctx, v.read.rev, func(r Record) error {
		records[r.RecordRef] = r
		changed = append(changed, r.RecordRef)
		return nil
	})
	if err != nil || rev < v.read.rev {
		// A store older than what was read (etcd restored from a
		// backup): read all of it.
		return nil, 0, false, err
	}
	if len(records) != total {
		// Records were erased since: the manifest lists those left. One
		// that does not open is left to the whole read to report.
		listed, ok := v.listed(records)
		if !ok || slices.ContainsFunc(changed, func(ref RecordRef) bool { return !listed(ref) }) {
			// A record in the store that nothing lists: the count does
			// not tell the erasures, and the whole read reports it.
			return nil, 0, false, nil
		}
		maps.DeleteFunc(records, func(ref RecordRef, _ Record) bool { return !listed(ref) })
	}
	return records, rev, len(records) == total, nil
}

// listed returns whether the manifest among records lists a record, and
// false if it does not open. A bucket whose digest did not change lists
// the records the view's does; only the others are opened.
func (v *Vault) listed(records map[RecordRef]Record) (func(RecordRef) bool, bool) {
	var m manifestRecord
	if err := v.sealer.openJSON(records[manifestRef], &m); err != nil {
		return nil, false
	}
	refs := map[RecordRef]bool{manifestRef: true}
	for _, e := range m.Records {
		refs[RecordRef{Kind: e.Kind, ID: e.ID, Version: e.Version}] = true
	}
	kept := make(map[uint32]bool) // buckets that list what the view's do
	for _, e := range m.Buckets {
		ref := bucketRef(e.Bucket)
		refs[ref] = true
		if b, ok := v.buckets[e.Bucket]; ok && bytes.Equal(b.digest[:], e.SHA256) {
			kept[e.Bucket] = true
			continue
		}
		var br bucketRecord
		if err := v.sealer.openJSON(records[ref], &br); err != nil {
			return nil, false
		}
		for _, e := range br.Records {
			refs[RecordRef{Kind: e.Kind, ID: e.ID, Version: e.Version}] = true
		}
	}
	return func(ref RecordRef) bool {
		if refs[ref] {
			return true
		}
		_, inView := v.entries[ref]
		return ref.Kind != RecordManifestBucket && inView && kept[bucketOf(ref)]
	}, true
}

// adopt makes records, the store's state at revision rev, the view. It
// opens them as New does, in a new Vault that takes over from v every
// version and ticket key whose records did not change, then serves that.
// On an error the view stays as it was. The caller holds writeMu.
func (v *Vault) adopt(ctx context.Context, records []Record, rev int64) error {
	if v.holds(records) {
		// The store moved on without changing a record (etcd's revision
		// of the head alone).
		v.storeRev = max(v.storeRev, rev)
		v.follow.applied(v.storeRev)
		return nil
	}
	cur := v.sealer.keys.Load()
	s, err := newSealer(cur.kek)
	if err != nil {
		return err
	}
	next := &Vault{
		store: &snapshotStore{records: records}, sealer: s, backends: v.backends,
		keys: make(map[string]*keyState), entries: make(map[RecordRef]recordEntry), prev: v,
	}
	if err := next.load(ctx, false); err != nil {
		if errors.Is(err, ErrWrongKEK) {
			return fmt.Errorf("keyvault: follow the store to revision %d: its records are sealed under a KEK this replica does not hold "+
				"(another replica rotated the KEK while this one did not follow): restart it with the new KEK: %w", rev, err)
		}
		return fmt.Errorf("keyvault: follow the store to revision %d: %w", rev, err)
	}
	// A KEK rotation another replica began: its KEK is kept before the
	// view (and so the announcement the rotation waits for) takes it in.
	if err := v.keepKEK(ctx, next.sealer.keys.Load()); err != nil {
		return fmt.Errorf("keyvault: follow the store to revision %d: %w", rev, err)
	}
	v.entries, v.revision, v.stale = next.entries, next.revision, next.stale
	v.bucketed, v.buckets = next.bucketed, next.buckets
	v.manifestRev, v.manifestDigest, v.storeRev = next.manifestRev, next.manifestDigest, rev
	nextKeys := next.sealer.keys.Load()
	v.sealer.keys.Store(nextKeys)
	if cur.previous != nil && nextKeys.previous == nil {
		clear(cur.previous.kek) // another replica completed a KEK rotation
	}
	dropped := v.adoptLoaded(next)
	for _, k := range dropped {
		clear(k.secret) // retired by another replica
	}
	v.follow.applied(rev)
	return nil
}

// holds says whether records are the ones of the state the view read
// last, which it verified (and which checkManifest then trusts, through
// verifiedBefore).
func (v *Vault) holds(records []Record) bool {
	if len(records) != len(v.read.records) {
		return false
	}
	for _, r := range records {
		if old, ok := v.read.records[r.RecordRef]; !ok || !bytes.Equal(old.Sealed, r.Sealed) {
			return false
		}
	}
	return true
}

// unchangedVersion returns the state of version n of key id in the view
// refresh replaces, if its records are the ones being loaded; nil if not.
func (v *Vault) unchangedVersion(id string, n uint32) *versionState {
	if v.prev == nil {
		return nil
	}
	k := v.prev.keys[id]
	if k == nil || n > uint32(len(k.versions)) {
		return nil
	}
	for _, kind := range []RecordKind{RecordVersion, RecordMaterial} {
		ref := RecordRef{Kind: kind, ID: id, Version: n}
		old, had := v.prev.entries[ref]
		now, has := v.entries[ref]
		if had != has || old != now {
			return nil
		}
	}
	return k.versions[n-1]
}

// unchangedSigner returns the private key of the material record ref in the
// view refresh replaces, if that record is the one being loaded; nil if
// not. A version whose state or chain changed keeps its loaded key.
func (v *Vault) unchangedSigner(ref RecordRef) crypto.Signer {
	if v.prev == nil {
		return nil
	}
	old, had := v.prev.entries[ref]
	if now := v.entries[ref]; !had || old != now {
		return nil
	}
	k := v.prev.keys[ref.ID]
	if k == nil || ref.Version > uint32(len(k.versions)) {
		return nil
	}
	return k.versions[ref.Version-1].signer
}

// unchangedKey returns the state of key id in the view refresh replaces
// if none of the key's records changed, and takes its records out of
// versionRecords; nil if one did.
func (v *Vault) unchangedKey(id string, versionRecords map[RecordRef]Record) *keyState {
	if v.prev == nil {
		return nil
	}
	old := v.prev.keys[id]
	if old == nil {
		return nil
	}
	refs := []RecordRef{{Kind: RecordKey, ID: id}}
	for n := range uint32(len(old.versions)) {
		refs = append(refs, RecordRef{Kind: RecordVersion, ID: id, Version: n + 1}, RecordRef{Kind: RecordMaterial, ID: id, Version: n + 1})
	}
	for _, ref := range refs {
		was, had := v.prev.entries[ref]
		is, has := v.entries[ref]
		if had != has || was != is {
			return nil
		}
	}
	for _, ref := range refs[1:] {
		delete(versionRecords, ref)
	}
	return old
}

// unchangedTicketKey returns the ticket key of ref in the view refresh
// replaces, if its record is the one being loaded; nil if not.
func (v *Vault) unchangedTicketKey(ref RecordRef) *ticketKey {
	if v.prev == nil {
		return nil
	}
	old, had := v.prev.entries[ref]
	if now := v.entries[ref]; !had || old != now {
		return nil
	}
	for _, k := range v.prev.tickets {
		if k.id == ref.Version {
			return k
		}
	}
	return nil
}

// maxWatched bounds the records of the changes the watch reported that
// refresh has not taken: past it they are dropped, and the view reads the
// changes from the store instead.
const maxWatched = 4096

// watched are the changes the watch reported since revision from, every
// one, in order, that refresh has not taken yet.
type watched struct {
	mu      sync.Mutex
	from    int64
	changes []Change
	records int
}

// restart begins again after revision from, as a new watch does.
func (w *watched) restart(from int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.from, w.changes, w.records = from, nil, 0
}

// add keeps ch. One the store could not tell, or past maxWatched, drops
// what is kept: whoever applies the changes up to it reads the store.
func (w *watched) add(ch Change) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.records += len(ch.Put) + len(ch.Erased)
	if !ch.Known || w.records > maxWatched {
		w.from, w.changes, w.records = ch.Rev, nil, 0
		return
	}
	w.changes = append(w.changes, ch)
}

// take returns the state of the store that read, with the changes kept put
// in, when they are every change from read's revision up to target or
// later; ok is false when they are not. What it returns is no longer kept.
func (w *watched) take(read storeState, target int64) (records map[RecordRef]Record, rev int64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.from > read.rev || len(w.changes) == 0 || w.changes[len(w.changes)-1].Rev < target {
		return nil, 0, false
	}
	records = maps.Clone(read.records)
	for _, ch := range w.changes {
		if ch.Rev <= read.rev {
			continue
		}
		for _, ref := range ch.Erased {
			delete(records, ref)
		}
		for _, r := range ch.Put {
			records[r.RecordRef] = r
		}
	}
	rev = w.changes[len(w.changes)-1].Rev
	w.from, w.changes, w.records = rev, nil, 0
	return records, rev, true
}

// follower follows a SharedStore for its vault.
type follower struct {
	store SharedStore
	// watched are the changes the watch reported, for refresh.
	watched watched
	bound   time.Duration
	epoch   time.Time // the origin of the monotonic times below

	// confirmed is when, in nanoseconds since epoch, the Revision read
	// that last confirmed the view was sent.
	confirmed atomic.Int64
	// view is the store revision the view has applied.
	view atomic.Int64
	wake chan struct{} // capacity 1: something to catch up with
	// stuck is how many keys keepUp was left to destroy in their backends
	// and could not (stuckWork).
	stuck atomic.Int64

	announceMu sync.Mutex
	announced  int64 // the newest revision announced
	// conflict is why key use is refused while the store refuses to
	// announce this replica for a deployment conflict; nil while it does
	// not. conflictMu orders its changes and guards onConflict.
	conflict   atomic.Pointer[error]
	conflictMu sync.Mutex
	onConflict []func(error)

	// ctx ends with stop; it bounds what the loops and Sync rounds do.
	ctx     context.Context
	roundMu sync.Mutex
	pending *syncRound // the round Sync callers wait for, not begun
	rounds  bool       // runRounds runs
	stopped bool       // stop began: no round starts
	// roundsDone waits for runRounds, which stop waits for too: the store
	// is closed after it, and no call of this replica may reach the store
	// then (an announcement made after the store's own ended would stand
	// for a replica that is gone, and hold every KEK rotation).
	roundsDone sync.WaitGroup

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// startFollowing confirms the view just loaded from ss, then follows ss
// until Close.
func (v *Vault) startFollowing(ctx context.Context, ss SharedStore) error {
	f := &follower{store: ss, bound: v.staleBound, epoch: time.Now(), wake: make(chan struct{}, 1)}
	f.view.Store(v.storeRev)
	f.confirmed.Store(-int64(f.bound) - 1) // not yet
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	v.follow = f
	// Announced before the first Sync: a revocation committed before
	// the announcement and not waited for by its WaitApplied is before
	// the Sync's Revision read too, so the view has it before it serves.
	err := f.announce(ctx, v.storeRev)
	if err != nil {
		err = fmt.Errorf("keyvault: announce this replica to the shared store: %w", err)
	} else {
		err = v.Sync(ctx)
	}
	if err != nil {
		f.cancel()
		return err
	}
	f.done.Add(2)
	go v.watch(f.ctx)
	go v.keepUp(f.ctx)
	return nil
}

// applied records that the view is the store at rev and wakes keepUp to
// announce it.
func (f *follower) applied(rev int64) {
	if f == nil {
		return
	}
	f.view.Store(rev)
	f.signal()
}

func (f *follower) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// announce publishes that the view applied rev, or the later revision
// announced already. It asks the store even when that revision is announced
// already: the announcement may have ended meanwhile (an etcd lease that
// expired), and the store makes it again (etcdstore sends nothing while its
// lease's key holds the revision).
func (f *follower) announce(ctx context.Context, rev int64) error {
	f.announceMu.Lock()
	defer f.announceMu.Unlock()
	rev = max(rev, f.announced)
	err := f.store.Announce(ctx, rev)
	f.conflicted(ctx, err)
	if err != nil {
		return err
	}
	f.announced = rev
	return nil
}

// conflicted records the outcome err of an announcement: a deployment
// conflict begins with one the store refused for it and ends with one it
// made; an error of another kind (the store unreachable) changes nothing.
// Each change is logged, once, and told to the functions
// OnDeploymentConflict registered. keepUp retries at every tick meanwhile.
func (f *follower) conflicted(ctx context.Context, err error) {
	refused := errors.Is(err, ErrDeploymentConflict)
	if err != nil && !refused {
		return
	}
	f.conflictMu.Lock()
	defer f.conflictMu.Unlock()
	was := f.conflict.Load() != nil
	switch {
	case refused && !was:
		slog.ErrorContext(ctx, "keyvault: replicas of another deployment are live on the shared key store: this replica announces nothing "+
			"and refuses key use (UNAVAILABLE) until they are gone, retrying every "+(f.bound/4).String(), "err", err)
	case !refused && was:
		slog.InfoContext(ctx, "keyvault: no replica of another deployment is live on the shared key store any more: this replica is announced and serves key use again")
	default:
		return
	}
	var conflict error
	if refused {
		conflict = err
		f.conflict.Store(&conflict)
	} else {
		f.conflict.Store(nil)
	}
	for _, fn := range f.onConflict {
		fn(conflict)
	}
}

// OnDeploymentConflict calls fn with the error while this replica refuses
// key use because replicas of another deployment are live on the shared
// store (ErrDeploymentConflict), and with nil while it does not: once now,
// then at each change. A server reports itself not ready meanwhile. fn
// must return quickly; it is called once only for a vault on a store no
// other process writes, which has no other deployment to meet.
func (v *Vault) OnDeploymentConflict(fn func(conflict error)) {
	f := v.follow
	if f == nil {
		fn(nil)
		return
	}
	f.conflictMu.Lock()
	defer f.conflictMu.Unlock()
	f.onConflict = append(f.onConflict, fn)
	var conflict error
	if c := f.conflict.Load(); c != nil {
		conflict = *c
	}
	fn(conflict)
}

// confirm records a confirmation by a Revision read sent at ts (since
// epoch), unless a later one is recorded.
func (f *follower) confirm(ts time.Duration) {
	for {
		old := f.confirmed.Load()
		if int64(ts) <= old || f.confirmed.CompareAndSwap(old, int64(ts)) {
			return
		}
	}
}

// fresh fails with ErrUnavailable once the view was last confirmed longer
// than the staleness bound ago, and while the store refuses to announce
// this replica for a deployment conflict.
func (f *follower) fresh() error {
	if f == nil {
		return nil
	}
	if c := f.conflict.Load(); c != nil {
		return fmt.Errorf("keyvault: this replica refuses key use while the shared key store does not announce it: %w", *c)
	}
	age := time.Since(f.epoch) - time.Duration(f.confirmed.Load())
	if age <= f.bound {
		return nil
	}
	return fmt.Errorf("keyvault: this replica could not confirm its view of the shared key store for more than %v (the staleness bound): "+
		"it refuses key use until the store answers again; check that the store (etcd) is reachable and has quorum: %w", f.bound, ErrUnavailable)
}

// stop ends the loops and waits for them.
func (f *follower) stop() {
	if f == nil || f.cancel == nil {
		return
	}
	f.cancel()
	f.done.Wait()
	f.roundMu.Lock()
	f.stopped = true
	f.roundMu.Unlock()
	f.roundsDone.Wait()
}

// watch wakes keepUp at every commit the view has not applied. When the
// watch breaks it wakes keepUp too, which reads the store again, and then
// watches again.
func (v *Vault) watch(ctx context.Context) {
	f := v.follow
	defer f.done.Done()
	backoff := 50 * time.Millisecond
	for {
		after := f.view.Load()
		f.watched.restart(after)
		err := f.store.Watch(ctx, after, func(ch Change) {
			f.watched.add(ch)
			if ch.Rev > f.view.Load() {
				f.signal()
			}
		})
		if ctx.Err() != nil {
			return
		}
		slog.WarnContext(ctx, "keyvault: the watch of the shared store broke; reading it again", "err", err)
		f.signal()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, f.bound/2)
	}
}

// leftWork is when keepUp first saw each destroy pending and each intent
// as it stands, and what of either it could not finish (finishLeftWork).
type leftWork struct {
	destroys map[RecordRef]time.Time
	intents  map[RecordRef]intentSeen
	stuck    stuckWork
}

// finishLeftWork finishes what replicas left undone: the destroys pending
// for a staleness bound (finishLeftDestroys) and the intents standing for
// intentUndoBounds (undoLeftIntents). What it cannot finish (no such
// backend here, or one that fails) is retried at every tick and logged
// by left.stuck, not at every tick. keepUp must never wait for a change
// under way: one may hold writeMu until every replica, this one included,
// announces a revision (a KEK rotation's step waits so in allHold), which
// keepUp does. What is left waits for a later tick instead.
func (v *Vault) finishLeftWork(ctx context.Context, left leftWork) {
	if !v.writeMu.TryLock() {
		return
	}
	defer v.writeMu.Unlock()
	if v.isClosed() {
		return
	}
	v.finishLeftDestroys(ctx, left.destroys, left.stuck)
	v.undoLeftIntents(ctx, left.intents, left.stuck)
	left.stuck.settle(ctx, v)
}

// keepUp confirms the view every quarter of the staleness bound and when
// woken, catching up with the store as needed, and announces what the
// view applied.
func (v *Vault) keepUp(ctx context.Context) {
	f := v.follow
	defer f.done.Done()
	tick := time.NewTicker(f.bound / 4)
	defer tick.Stop()
	failing := false
	left := leftWork{
		destroys: make(map[RecordRef]time.Time), intents: make(map[RecordRef]intentSeen),
		stuck: stuckWork{items: make(map[RecordRef]stuckItem), count: &f.stuck},
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-f.wake:
		}
		sctx, cancel := context.WithTimeout(ctx, f.bound)
		err := v.Sync(sctx)
		if err == nil {
			err = f.announce(sctx, f.view.Load())
		}
		if err == nil {
			v.finishLeftWork(sctx, left)
		}
		cancel()
		// A deployment conflict is logged where it begins and ends
		// (conflicted), and stops key use at once.
		conflict := errors.Is(err, ErrDeploymentConflict)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !conflict && !failing:
			slog.ErrorContext(ctx, "keyvault: cannot confirm the view of the shared key store; key use stops once it is older than the staleness bound",
				"bound", f.bound, "err", err)
		case err == nil && failing:
			slog.InfoContext(ctx, "keyvault: the view of the shared key store is confirmed again")
		}
		failing = err != nil && !conflict
	}
}

// Sync makes the vault's view current: it reads the store's current
// revision and applies every change up to it, so that a key another
// replica created or changed before Sync was called is served when it
// returns. A server calls it when asked for a key or key version it does
// not know, then looks again. On a store no other process writes it only
// checks that the vault is open.
func (v *Vault) Sync(ctx context.Context) error {
	f := v.follow
	if v.isClosed() {
		return ErrClosed
	}
	if f == nil {
		return nil
	}
	r := f.nextRound(v)
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncRound is one Revision read and the catching up after it, which every
// Sync called before it began waits for.
type syncRound struct {
	done chan struct{}
	err  error
}

// nextRound returns the round that has not begun yet, starting the rounds
// if none runs. Sync may be called for every request naming an unknown key
// or ticket, which any client can send: the store sees one Revision read at
// a time from this replica however many wait, and each caller still gets a
// read begun after its call.
func (f *follower) nextRound(v *Vault) *syncRound {
	f.roundMu.Lock()
	defer f.roundMu.Unlock()
	if f.stopped {
		r := &syncRound{done: make(chan struct{}), err: ErrClosed}
		close(r.done)
		return r
	}
	if f.pending == nil {
		f.pending = &syncRound{done: make(chan struct{})}
		if !f.rounds {
			f.rounds = true
			f.roundsDone.Add(1)
			go f.runRounds(v)
		}
	}
	return f.pending
}

func (f *follower) runRounds(v *Vault) {
	defer f.roundsDone.Done()
	for {
		f.roundMu.Lock()
		r := f.pending
		f.pending = nil
		f.rounds = r != nil
		f.roundMu.Unlock()
		if r == nil {
			return
		}
		ctx, cancel := context.WithTimeout(f.ctx, f.bound)
		r.err = v.syncOnce(ctx)
		cancel()
		close(r.done)
	}
}

// syncOnce is one round of Sync.
func (v *Vault) syncOnce(ctx context.Context) error {
	f := v.follow
	// A confirmation lets this replica use keys for the staleness bound,
	// and a revocation waits only for the replicas announced: the
	// announcement must stand before the Revision read is sent, as at the
	// start (startFollowing). Otherwise a replica whose announcement ended
	// (its lease expired while it could not reach the store) would serve
	// again unannounced, and a revocation would return while it still
	// signs with what was revoked.
	if err := f.announce(ctx, f.view.Load()); err != nil {
		return fmt.Errorf("keyvault: announce this replica to the shared store: %w", err)
	}
	ts := time.Since(f.epoch)
	rev, err := f.store.Revision(ctx)
	if err != nil {
		return fmt.Errorf("keyvault: read the shared store's revision: %w", err)
	}
	if f.view.Load() < rev {
		v.writeMu.Lock()
		switch {
		case v.isClosed():
			err = ErrClosed
		case v.storeRev < rev:
			err = v.refreshTo(ctx, rev)
		}
		v.writeMu.Unlock()
		if err != nil {
			return err
		}
	}
	f.confirm(ts)
	return nil
}

// revoked returns once no live replica can use what the change committed
// at rev revoked: every live replica announced it applied rev, or the
// staleness bound passed since the commit (see above). The caller does not
// hold writeMu, which the replica's own catching up takes.
func (v *Vault) revoked(ctx context.Context, rev int64) error {
	f := v.follow
	if f == nil {
		return nil
	}
	wait, err := v.revocationWait(ctx)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := f.store.WaitApplied(bctx, rev); err != nil {
		<-bctx.Done() // by then a replica that did not apply rev refuses key use
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("keyvault: the change is committed, and replicas that have not applied it refuse key use within %v of it: %w", wait, err)
	}
	return nil
}

// Subscribe calls fn with a key's id after the key changed in the vault's
// view (created, rotated, a version enabled, disabled, destroyed or given a
// chain), whatever changed it: a call on this vault, a Restore, or another
// replica's change the view followed. Calls are in the order of the
// changes, one at a time; fn must return quickly and must not change the
// vault. cancel ends the subscription.
func (v *Vault) Subscribe(fn func(keyID string)) (cancel func()) {
	return v.subs.add(fn)
}

// subscribers are the functions Subscribe registered.
type subscribers struct {
	mu   sync.Mutex
	next int
	fns  map[int]func(string)
}

func (s *subscribers) add(fn func(string)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = make(map[int]func(string))
	}
	id := s.next
	s.next++
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

// notify calls every subscriber with each of ids. The caller holds
// writeMu, which orders the calls.
func (s *subscribers) notify(ids []string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	fns := make([]func(string), 0, len(s.fns))
	for _, fn := range s.fns {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, id := range ids {
		for _, fn := range fns {
			fn(id)
		}
	}
}

// allHold returns once every live replica applied revision rev of the
// view. A KEK rotation completes only then: a replica that never saw the
// rotation record, which gives it the new KEK, could not open the store
// after.
func (f *follower) allHold(ctx context.Context, rev int64) error {
	if f == nil {
		return nil
	}
	if err := f.announce(ctx, rev); err != nil {
		return err
	}
	return f.store.WaitApplied(ctx, rev)
}

// caughtUp returns what lookup finds, looking again after Sync when it
// finds no such key or version and the store is shared: a key or version
// another replica made a moment ago may not be in this replica's view yet
// (the watch applies it within milliseconds). A flood of calls naming keys
// that do not exist costs the store one Revision read per Sync round, not
// one per call. Callers holding writeMu use retry instead (Sync takes it).
func caughtUp[T any](ctx context.Context, v *Vault, lookup func() (T, error)) (T, error) {
	t, err := lookup()
	if v.follow == nil || !errors.Is(err, ErrNotFound) {
		return t, err
	}
	if err := v.Sync(ctx); err != nil {
		var zero T
		return zero, err
	}
	return lookup()
}
