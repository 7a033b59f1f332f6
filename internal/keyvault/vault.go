// Package keyvault holds private keys for handshaked and performs the
// operations TLS needs from them (sign with a TLS signature scheme, decrypt
// an RSA premaster) without ever handing the keys out.
//
// Keys live in a Store as records sealed with AES-256-GCM under a
// key-encryption key (KEK). The Vault opens every record at start and keeps
// the keys ready, so the hot path never unseals: a software key parsed in
// memory, a key of another KeyBackend (an HSM's, package keyvault/pkcs11)
// loaded from the handle its record holds.
package keyvault

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"
)

// Version is a snapshot of one version of a key. It holds no private
// material. PublicKey is shared by all snapshots and must not be modified.
type Version struct {
	Number     uint32
	State      VersionState
	Algorithm  Algorithm
	Imported   bool
	Backend    string // the KeyBackend holding the private key: BackendSoftware, "pkcs11", ...
	CreateTime time.Time
	PublicKey  crypto.PublicKey
	Chain      [][]byte // attached certificate chain, DER, leaf first; nil if none
}

// Key is a snapshot of a key and its versions.
type Key struct {
	ID         string
	Labels     map[string]string
	CreateTime time.Time
	Primary    uint32    // the newest version, what version 0 resolves to
	Versions   []Version // ascending by Number
}

// Vault holds keys and performs operations with them. It is safe for
// concurrent use.
type Vault struct {
	store    Store
	sealer   sealer
	backends map[string]KeyBackend // by name; never changes after New

	// revision and entries are what the store's manifest says: the
	// revision of the last commit and, for every record but the manifest,
	// the revision that wrote it and its digest. commit updates them; the
	// caller holds writeMu.
	revision uint64
	entries  map[RecordRef]recordEntry
	// bucketed says that the store's manifest is bucketed (store format 2),
	// and buckets is then what it lists of each bucket (by number), the
	// records of a bucket being the entries bucketOf assigns to it. The
	// caller holds writeMu.
	bucketed bool
	buckets  map[uint32]bucketState
	// stale holds, during a KEK rotation, the records still sealed under
	// the KEK being retired (kekrotation.go). The caller holds writeMu.
	stale map[RecordRef]bool
	// manifestRev is the store revision of the manifest the view holds,
	// which every commit names in its If: a commit computed from a view
	// another writer has moved past conflicts. storeRev is the store
	// revision the view has applied, manifestDigest the manifest's digest.
	// The caller holds writeMu.
	manifestRev, storeRev int64
	manifestDigest        [sha256.Size]byte
	// prev is set while refresh loads a newer state of the store into a
	// new Vault: the view it replaces, whose versions (and their loaded
	// keys) are taken over wherever their records did not change.
	prev *Vault
	// read is, on a SharedStore, the state of the store the view last
	// read, which refresh reads only the changes since. The caller holds
	// writeMu.
	read storeState

	// follow is set for a SharedStore: how the view follows it and fences
	// key use when it cannot (follow.go). Never changes after New.
	follow *follower
	// staleBound is WithStalenessBound's.
	staleBound time.Duration
	subs       subscribers
	// keeper is WithKEKKeeper's, nil without one; keptKEK is the KEKID of
	// the KEK it keeps (at first the one the vault was opened with). The
	// caller holds writeMu.
	keeper  KEKKeeper
	keptKEK string

	// writeMu serializes changes: each reads the current state, commits the
	// new one to the store and only then publishes it in keys. Key
	// operations never take it.
	writeMu sync.Mutex

	// mu guards the fields below. keyState values are immutable, so key
	// operations hold mu for reading only as long as a map lookup takes and
	// run the cryptography outside it, in parallel.
	//
	// Whatever load fills in, Restore takes over from the vault it opened
	// the snapshot as (adoptLoaded): a field added for another record kind
	// goes there too.
	mu      sync.RWMutex
	keys    map[string]*keyState
	ids     []string     // sorted, for List
	tickets []*ticketKey // session ticket keys, oldest first (ticketkeys.go)
	closed  bool
}

type keyState struct {
	id         string
	labels     map[string]string
	createTime time.Time
	versions   []*versionState // versions[i].number == i+1
}

type versionState struct {
	number     uint32
	state      VersionState
	alg        Algorithm
	imported   bool
	backend    string
	createTime time.Time
	pubDER     []byte           // PKIX
	pub        crypto.PublicKey // parsed from pubDER, apart from signer
	chain      [][]byte
	signer     crypto.Signer // the backend's key; nil once destroyed
}

type recordEntry struct {
	revision  uint64
	digest    [sha256.Size]byte
	skippable bool // manifestEntry.Skippable
}

// bucketState is what a bucketed manifest lists of a bucket: the revision
// that wrote it and its digest.
type bucketState struct {
	revision uint64
	digest   [sha256.Size]byte
}

// New opens every record of store under kek (32 bytes) and returns a vault
// serving them; an empty store becomes a new vault. A wrong kek fails with
// ErrWrongKEK; a record that does not open, does not fit, or is not the one
// the store's manifest lists (an older copy spliced back) with ErrCorrupted
// naming the record. On success the vault owns store and closes it in
// Close; the caller keeps kek and should clear it. A version held by a key
// backend that opts do not give fails with ErrFailedPrecondition.
func New(ctx context.Context, store Store, kek []byte, opts ...Option) (*Vault, error) {
	return newVault(ctx, store, kek, true, opts)
}

// Open is New for a store that must already hold a vault: an empty store
// fails with ErrEmptyStore and is left empty, so that a wrong path or a lost
// disk does not silently become a new, empty vault.
func Open(ctx context.Context, store Store, kek []byte, opts ...Option) (*Vault, error) {
	return newVault(ctx, store, kek, false, opts)
}

func newVault(ctx context.Context, store Store, kek []byte, create bool, opts []Option) (*Vault, error) {
	// Loading commits only to create or upgrade a store; on a shared
	// store another replica may do that first, and then this one loads
	// what it wrote.
	for attempt := 1; ; attempt++ {
		s, err := newSealer(kek)
		if err != nil {
			return nil, err
		}
		v := &Vault{
			store: store, sealer: s, keys: make(map[string]*keyState), entries: make(map[RecordRef]recordEntry),
			backends:   map[string]KeyBackend{BackendSoftware: softwareBackend{}},
			staleBound: DefaultStalenessBound,
		}
		for _, o := range opts {
			o(v)
		}
		err = v.load(ctx, create)
		if err == nil {
			// Opened with the KEK a rotation under way retires: the new one
			// is kept for the next start, which the rotation may outlast.
			v.keptKEK = KEKID(kek)
			err = v.keepKEK(ctx, v.sealer.keys.Load())
		}
		switch {
		case err == nil:
			// Destroys that a crash or a lost answer of the store left
			// half-done are finished before the vault serves.
			if pending := v.pendingDestroys(); len(pending) > 0 {
				v.finishDestroysLogged(ctx, pending)
			}
			v.undoIntentsAtStart(ctx)
			if ss, ok := store.(SharedStore); ok {
				if err := v.startFollowing(ctx, ss); err != nil {
					return nil, err
				}
			}
			return v, nil
		case !errors.Is(err, ErrConflict):
			return nil, err
		case attempt == maxCommitAttempts:
			return nil, aborted("open the store", attempt)
		}
	}
}

// commit commits w together with the manifest it leads to, and makes that
// manifest the vault's. The caller holds writeMu (or is New).
func (v *Vault) commit(ctx context.Context, w Write) error {
	return v.commitAs(ctx, w, v.bucketed)
}

// commitAs is commit writing a bucketed manifest or a flat one: bucketed
// on a flat view converts, rewriting every bucket.
func (v *Vault) commitAs(ctx context.Context, w Write, bucketed bool) error {
	w, err := v.underCurrentKEK(w)
	if err != nil {
		return err
	}
	rev := v.revision + 1
	entries := maps.Clone(v.entries)
	for _, ref := range w.Erase {
		delete(entries, ref)
	}
	for _, r := range slices.Concat(w.Create, w.Put) {
		// A foreign record resealed (a KEK rotation) stays skippable: this
		// release writes no other.
		entries[r.RecordRef] = recordEntry{revision: rev, digest: sha256.Sum256(r.Sealed), skippable: v.entries[r.RecordRef].skippable}
	}
	m := manifestRecord{Revision: rev}
	var buckets map[uint32]bucketState
	if bucketed {
		var written []Record
		var emptied []RecordRef
		if buckets, written, emptied, err = v.sealBuckets(w, entries, rev); err != nil {
			return err
		}
		w.Put = append(slices.Clone(w.Put), written...)
		w.Erase = append(slices.Clone(w.Erase), emptied...)
		m.Format, m.Records = formatBuckets, []manifestEntry{bucketedSentinel}
		for _, b := range slices.Sorted(maps.Keys(buckets)) {
			st := buckets[b]
			m.Buckets = append(m.Buckets, bucketEntry{Bucket: b, Revision: st.revision, SHA256: st.digest[:]})
		}
	} else {
		m.Records = manifestEntries(entries, slices.Collect(maps.Keys(entries)))
	}
	rec, err := v.sealer.sealJSON(manifestRef, m)
	if err != nil {
		return err
	}
	w.Put = append(slices.Clone(w.Put), rec)
	w.If = map[RecordRef]int64{manifestRef: v.manifestRev}
	storeRev, err := v.store.Commit(ctx, w)
	if err != nil {
		if storeRev > 0 {
			// The view follows the store to it. Nothing follows a bolt
			// store: its view is read again here, or a key created so
			// would not be served, nor a version destroyed so dropped
			// from memory, until the next write's conflict.
			if v.follow == nil {
				if rerr := v.refresh(ctx); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			return &committedError{rev: storeRev, err: err}
		}
		return err
	}
	v.revision, v.entries, v.bucketed, v.buckets = rev, entries, bucketed, buckets
	// The commit passed If, so no other commit came between the view and
	// it: the view is now the store at storeRev, and so is the state it
	// read, whose bytes checkManifest trusts as the view's entries say
	// (verifiedBefore).
	v.manifestRev, v.storeRev, v.manifestDigest = storeRev, storeRev, sha256.Sum256(rec.Sealed)
	if v.read.records != nil {
		for _, ref := range w.Erase {
			delete(v.read.records, ref)
		}
		for _, r := range slices.Concat(w.Create, w.Put) {
			r.Revision = storeRev
			v.read.records[r.RecordRef] = r
		}
		v.read.rev = storeRev
	}
	v.follow.applied(storeRev)
	for _, ref := range w.Erase {
		delete(v.stale, ref)
	}
	for _, r := range slices.Concat(w.Create, w.Put) {
		delete(v.stale, r.RecordRef)
	}
	return nil
}

// manifestEntries returns the entries of refs, in order.
func manifestEntries(entries map[RecordRef]recordEntry, refs []RecordRef) []manifestEntry {
	slices.SortFunc(refs, compareRefs)
	out := make([]manifestEntry, 0, len(refs))
	for _, ref := range refs {
		e := entries[ref]
		out = append(out, manifestEntry{
			Kind: ref.Kind, ID: ref.ID, Version: ref.Version, Revision: e.revision, SHA256: e.digest[:], Skippable: e.skippable,
		})
	}
	return out
}

// sealBuckets seals the buckets that w changes, entries being the records
// after it, as revision rev wrote them: every bucket that holds one when
// the view is flat (a conversion). A bucket w leaves empty is erased
// instead, in a commit that erases already (its compaction is paid): one
// kept would hold no record a KEK rotation rewraps, and stay sealed under
// the retired KEK, which the store would then not open without. It
// returns what the manifest lists of every bucket then, the records to
// write and the buckets to erase.
func (v *Vault) sealBuckets(w Write, entries map[RecordRef]recordEntry, rev uint64) (map[uint32]bucketState, []Record, []RecordRef, error) {
	touched := make(map[uint32][]RecordRef)
	touch := func(ref RecordRef) { touched[bucketOf(ref)] = nil }
	if !v.bucketed {
		for ref := range entries {
			touch(ref)
		}
	}
	for _, ref := range w.Erase {
		touch(ref)
	}
	for _, r := range slices.Concat(w.Create, w.Put) {
		touch(r.RecordRef)
	}
	for ref := range entries {
		b := bucketOf(ref)
		if refs, ok := touched[b]; ok {
			touched[b] = append(refs, ref)
		}
	}
	buckets := maps.Clone(v.buckets)
	if buckets == nil {
		buckets = make(map[uint32]bucketState, len(touched))
	}
	var written []Record
	var emptied []RecordRef
	for _, b := range slices.Sorted(maps.Keys(touched)) {
		if len(touched[b]) == 0 {
			if _, ok := buckets[b]; ok {
				delete(buckets, b)
				emptied = append(emptied, bucketRef(b))
			}
			continue
		}
		rec, err := v.sealer.sealJSON(bucketRef(b), bucketRecord{Records: manifestEntries(entries, touched[b])})
		if err != nil {
			return nil, nil, nil, err
		}
		buckets[b] = bucketState{revision: rev, digest: sha256.Sum256(rec.Sealed)}
		written = append(written, rec)
	}
	return buckets, written, emptied, nil
}

// bucketsDue says whether the vault may write a bucketed manifest: on a
// store no other process writes, always; on a shared one, once every live
// replica reads store format 2 (StoreFormat). Either way only if the store
// takes a commit of every bucket, the conversion.
func (v *Vault) bucketsDue(ctx context.Context) (bool, error) {
	if b, ok := v.store.(commitBounded); ok && b.MaxCommitRecords() < manifestBuckets+1 {
		return false, nil
	}
	ss, ok := v.store.(SharedStore)
	if !ok {
		return true, nil
	}
	f, err := ss.MinFormat(ctx)
	if err != nil {
		return false, fmt.Errorf("keyvault: read the store formats of the replicas: %w", err)
	}
	return f >= formatBuckets, nil
}

// convertIfDue converts a flat manifest to buckets, in a commit of its own
// that changes no record, once bucketsDue. retry calls it before each
// change is computed, when the view is the store's state and nothing
// else: a change sets up the view (entries, keys) before it commits. The
// caller holds writeMu.
func (v *Vault) convertIfDue(ctx context.Context) error {
	if v.bucketed {
		return nil
	}
	due, err := v.bucketsDue(ctx)
	if err != nil || !due {
		return err
	}
	err = v.commitAs(ctx, Write{}, true)
	if errors.Is(err, ErrFailedPrecondition) {
		// Every bucket and the manifest are a little more than the flat
		// manifest, and may not fit where it does (etcd's
		// --max-request-bytes): the change goes on in the flat manifest,
		// as it would have, and the next one tries again.
		slog.WarnContext(ctx, "keyvault: the store's manifest stays flat (store format 1): converting it to buckets does not fit in one commit", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("keyvault: convert the store's manifest to buckets (store format 2): %w", err)
	}
	slog.InfoContext(ctx, "keyvault: the store's manifest is bucketed now (store format 2); releases that read store format 1 or before can no longer read the store",
		"buckets", len(v.buckets), "records", len(v.entries))
	return nil
}

// committedError is the error of a commit the store made and then failed
// after, returning the commit's revision with the error (etcdstore, when
// etcd refuses or does not answer the compaction after a commit that
// erased records; BoltStore, when the directory sync after a rewrite's
// rename fails): the change is in the store, and the view applies it when
// it follows the store, not at once.
type committedError struct {
	rev int64
	err error
}

func (e *committedError) Error() string { return e.err.Error() }
func (e *committedError) Unwrap() error { return e.err }

// notAppliedError is the error of a commit the store knows it did not
// apply, whatever else the error says (ErrUnavailable on a full disk): a
// bolt rewrite that failed before its rename, which left the file as it
// was. Such a commit cannot land later either.
type notAppliedError struct{ err error }

func (e *notAppliedError) Error() string { return e.err.Error() }
func (e *notAppliedError) Unwrap() error { return e.err }

// underCurrentKEK returns w with every record sealed under the current KEK:
// one sealed under the KEK a rotation retires (a record of a snapshot taken
// mid-rotation that Restore commits, or one sealed before the rotation began)
// is resealed, and one that opens under neither is refused, so that no record
// the store could not open again is ever committed.
func (v *Vault) underCurrentKEK(w Write) (Write, error) {
	k := v.sealer.keys.Load()
	check := func(rs []Record) ([]Record, error) {
		out := slices.Clone(rs)
		for i, r := range rs {
			if r.Kind == RecordKEKRotation {
				continue // sealed in two parts (kekrotation.go)
			}
			plaintext, err := openWith(k, v.sealer.format, r)
			if err != nil && k.previous != nil {
				if plaintext, err = openWith(k.previous, v.sealer.format, r); err == nil {
					out[i] = v.sealer.seal(r.RecordRef, plaintext)
				}
			}
			clear(plaintext)
			if err != nil {
				return nil, fmt.Errorf("keyvault: %v is not sealed under the current key-encryption key", r.RecordRef)
			}
		}
		return out, nil
	}
	var err error
	if w.Create, err = check(w.Create); err != nil {
		return Write{}, err
	}
	if w.Put, err = check(w.Put); err != nil {
		return Write{}, err
	}
	return w, nil
}

func compareRefs(a, b RecordRef) int {
	return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Kind, b.Kind))
}

func (v *Vault) load(ctx context.Context, create bool) error {
	var check, manifest, rotation *Record
	var all []Record // every record but the manifest and its buckets
	bucketRecords := make(map[uint32]Record)
	keyRecords := make(map[string]Record)
	versionRecords := make(map[RecordRef]Record)
	ticketRecords := make(map[uint32]Record)
	foreign := make(map[RecordRef]bool) // records of kinds of later releases (StoreFormat)
	intents := make(map[RecordRef]bool)
	storeRev, err := v.store.Scan(ctx, func(r Record) error {
		var dup bool
		switch r.Kind {
		case RecordManifest:
			dup = manifest != nil
			manifest = &r
		case RecordCheck:
			dup = check != nil
			check = &r
		case RecordKEKRotation:
			dup = rotation != nil
			rotation = &r
		case RecordKey:
			_, dup = keyRecords[r.ID]
			keyRecords[r.ID] = r
		case RecordVersion, RecordMaterial:
			_, dup = versionRecords[r.RecordRef]
			versionRecords[r.RecordRef] = r
		case RecordTicketKey:
			_, dup = ticketRecords[r.Version]
			ticketRecords[r.Version] = r
		case RecordManifestBucket:
			_, dup = bucketRecords[r.Version]
			bucketRecords[r.Version] = r
		case RecordKeyIntent:
			// Opened only when undone (intent.go); the manifest vouches
			// for its bytes.
			if validateID(r.ID) != nil || r.Version == 0 {
				return fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
			}
			dup = intents[r.RecordRef]
			intents[r.RecordRef] = true
		default:
			// Checked against the manifest with every other record.
			dup = foreign[r.RecordRef]
			foreign[r.RecordRef] = true
		}
		if dup {
			return fmt.Errorf("keyvault: %v: stored twice: %w", r.RecordRef, ErrCorrupted)
		}
		if r.Kind != RecordManifest && r.Kind != RecordManifestBucket {
			all = append(all, r)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keyvault: load: %w", err)
	}
	v.storeRev = storeRev
	if manifest != nil {
		v.manifestRev, v.manifestDigest = manifest.Revision, sha256.Sum256(manifest.Sealed)
	}
	if _, ok := v.store.(SharedStore); ok {
		records := slices.Concat(all, slices.Collect(maps.Values(bucketRecords)))
		if manifest != nil {
			records = append(records, *manifest)
		}
		v.read = newStoreState(storeRev, records)
	}
	if manifest == nil {
		// A new store, or a v1 one: what its first commit writes is all
		// it lists.
		if v.bucketed, err = v.bucketsDue(ctx); err != nil {
			return err
		}
	}

	if check == nil {
		switch {
		case len(all) > 0 || manifest != nil || len(bucketRecords) > 0:
			return fmt.Errorf("keyvault: %v is missing: %w", checkRef, ErrCorrupted)
		case !create:
			return ErrEmptyStore
		}
		// A new store. The check record lets a later start with another
		// KEK be told so, rather than that every record is corrupted.
		if err := v.commit(ctx, Write{Create: []Record{v.sealer.seal(checkRef, checkPlaintext)}}); err != nil {
			return fmt.Errorf("keyvault: write %v: %w", checkRef, err)
		}
		return nil
	}
	if rotation != nil {
		// A KEK rotation is under way: the KEK given opens the other one,
		// and every record opens under one of the two.
		if err := v.openRotation(*rotation); err != nil {
			return err
		}
	}
	opens := func(s sealer, want []byte) bool {
		plaintext, err := s.open(*check)
		return err == nil && bytes.Equal(plaintext, want)
	}
	s := v.sealer
	switch {
	case opens(s, checkPlaintext):
		if manifest == nil {
			return fmt.Errorf("keyvault: %v is missing: %w", manifestRef, ErrCorrupted)
		}
		if err := v.checkManifest(*manifest, bucketRecords, all); err != nil {
			return err
		}
		// Listed, with their digests, in the sealed manifest: written by a
		// replica of a later release, which marks what this one may skip.
		for _, ref := range slices.SortedFunc(maps.Keys(foreign), compareRefs) {
			if !v.entries[ref].skippable {
				return fmt.Errorf("keyvault: %v was written by a later release of handshaked, which says this one cannot serve beside it: "+
					"upgrade this replica: %w", ref, ErrFailedPrecondition)
			}
		}
	case opens(s.v1(), checkPlaintextV1):
		// A v1 store, written before manifests: what it holds is taken as
		// it is, once, and resealed below.
		if manifest != nil || rotation != nil || len(bucketRecords) > 0 {
			return fmt.Errorf("keyvault: a v1 %v in a store with a manifest: %w", checkRef, ErrCorrupted)
		}
		if len(foreign) > 0 {
			ref := slices.SortedFunc(maps.Keys(foreign), compareRefs)[0]
			return fmt.Errorf("keyvault: %v in a v1 store: %w", ref, ErrCorrupted)
		}
		s = s.v1()
	default:
		return fmt.Errorf("keyvault: the %v does not open: %w", checkRef, ErrWrongKEK)
	}

	ids := slices.Sorted(maps.Keys(keyRecords))
	for _, id := range ids {
		k, err := v.openKey(ctx, s, keyRecords[id], versionRecords)
		if err != nil {
			return err
		}
		v.keys[id] = k
	}
	v.ids = ids
	for _, r := range ticketRecords {
		k := v.unchangedTicketKey(r.RecordRef)
		if k == nil {
			if k, err = openTicketKey(s, r); err != nil {
				return err
			}
		}
		v.tickets = append(v.tickets, k)
	}
	slices.SortFunc(v.tickets, func(a, b *ticketKey) int { return a.createTime.Compare(b.createTime) })
	if len(versionRecords) > 0 {
		leftover := slices.SortedFunc(maps.Keys(versionRecords), compareRefs)[0]
		return fmt.Errorf("keyvault: %v belongs to no key: %w", leftover, ErrCorrupted)
	}
	if s.format != v.sealer.format {
		return v.upgrade(ctx, s, all)
	}
	if rotation != nil {
		v.findStale(all)
	}
	return nil
}

// upgrade reseals the records of a v1 store as v2 ones, with a manifest, in
// one rewrite that erases every v1 record: no copy of them is left in the
// file, and none of a v1 store opens among v2 records.
func (v *Vault) upgrade(ctx context.Context, old sealer, records []Record) error {
	var w Write
	for _, r := range records {
		plaintext, err := old.open(r)
		if err != nil {
			return err
		}
		if r.Kind == RecordCheck {
			plaintext = bytes.Clone(checkPlaintext)
		}
		w.Erase = append(w.Erase, r.RecordRef)
		w.Put = append(w.Put, v.sealer.seal(r.RecordRef, plaintext))
		clear(plaintext) // a private key, for material records
	}
	if err := v.commit(ctx, w); err != nil {
		return fmt.Errorf("keyvault: upgrade the store to v2: %w", err)
	}
	return nil
}

// checkManifest opens the manifest and, when it is bucketed, the buckets
// it lists, and requires records to be exactly the ones they list: each
// written by the revision it names, with its digest, and each bucket too.
// A record or bucket of an older revision copied back (from a free page of
// the file or a backup) is refused; so is a listed one that is missing or
// an unlisted one.
//
// Following a shared store (adopt, v.prev set), a bucket or record whose
// bytes are the ones the view replaced verified (v.prev.read), listed as
// they were, is not hashed again, nor is such a bucket opened: a change
// costs the buckets and records it wrote. A new vault checks everything.
func (v *Vault) checkManifest(r Record, bucketRecords map[uint32]Record, records []Record) error {
	var m manifestRecord
	if err := v.sealer.openJSON(r, &m); err != nil {
		return err
	}
	switch m.Format {
	case 0:
		if len(m.Buckets) > 0 {
			return fmt.Errorf("keyvault: %v: buckets in a flat manifest: %w", manifestRef, ErrCorrupted)
		}
		if err := v.addEntries(manifestRef, m.Records, m.Revision, func(RecordRef) bool { return true }); err != nil {
			return err
		}
	case formatBuckets:
		if len(m.Records) != 1 || !reflect.DeepEqual(m.Records[0], bucketedSentinel) {
			return fmt.Errorf("keyvault: %v: a bucketed manifest that lists records: %w", manifestRef, ErrCorrupted)
		}
		v.bucketed, v.buckets = true, make(map[uint32]bucketState, len(m.Buckets))
		reused := make(map[uint32]bool)
		for _, e := range m.Buckets {
			ref := bucketRef(e.Bucket)
			_, dup := v.buckets[e.Bucket]
			if dup || e.Bucket >= manifestBuckets || len(e.SHA256) != sha256.Size || e.Revision > m.Revision {
				return fmt.Errorf("keyvault: %v: bad entry for %v: %w", manifestRef, ref, ErrCorrupted)
			}
			b := bucketState{revision: e.Revision, digest: [sha256.Size]byte(e.SHA256)}
			v.buckets[e.Bucket] = b
			rec, ok := bucketRecords[e.Bucket]
			switch {
			case !ok:
				return fmt.Errorf("keyvault: %v is missing: %w", ref, ErrCorrupted)
			case v.verifiedBefore(rec, b.digest) && v.prev.buckets[e.Bucket] == b:
				reused[e.Bucket] = true
				continue
			case sha256.Sum256(rec.Sealed) != b.digest:
				return fmt.Errorf("keyvault: %v is not the one revision %d wrote (an older copy spliced back?): %w", ref, b.revision, ErrCorrupted)
			}
			var br bucketRecord
			if err := v.sealer.openJSON(rec, &br); err != nil {
				return err
			}
			if err := v.addEntries(ref, br.Records, b.revision, func(r RecordRef) bool { return bucketOf(r) == e.Bucket }); err != nil {
				return err
			}
		}
		if len(reused) > 0 {
			// The entries of the buckets that did not change are the view's.
			for ref, e := range v.prev.entries {
				if reused[bucketOf(ref)] {
					v.entries[ref] = e
				}
			}
		}
	default:
		return fmt.Errorf("keyvault: the %v is of store format %d, written by a later release of handshaked: upgrade this replica: %w",
			manifestRef, m.Format, ErrFailedPrecondition)
	}
	for _, b := range slices.Sorted(maps.Keys(bucketRecords)) {
		if _, ok := v.buckets[b]; !ok {
			return fmt.Errorf("keyvault: %v is not in the %v: %w", bucketRef(b), manifestRef, ErrCorrupted)
		}
	}
	v.revision = m.Revision
	seen := make(map[RecordRef]bool, len(records))
	for _, rec := range records {
		e, ok := v.entries[rec.RecordRef]
		if !ok {
			return fmt.Errorf("keyvault: %v is not in the %v: %w", rec.RecordRef, manifestRef, ErrCorrupted)
		}
		if !v.verifiedBefore(rec, e.digest) && sha256.Sum256(rec.Sealed) != e.digest {
			return fmt.Errorf("keyvault: %v is not the one revision %d wrote (an older copy spliced back?): %w", rec.RecordRef, e.revision, ErrCorrupted)
		}
		seen[rec.RecordRef] = true
	}
	if len(seen) != len(v.entries) {
		for _, ref := range slices.SortedFunc(maps.Keys(v.entries), compareRefs) {
			if !seen[ref] {
				return fmt.Errorf("keyvault: %v is missing: %w", ref, ErrCorrupted)
			}
		}
	}
	return nil
}

// addEntries adds the entries of a flat manifest or of a bucket (in),
// written by revision rev, whose records must all be where belongs says.
func (v *Vault) addEntries(in RecordRef, list []manifestEntry, rev uint64, belongs func(RecordRef) bool) error {
	for _, e := range list {
		ref := RecordRef{Kind: e.Kind, ID: e.ID, Version: e.Version}
		_, dup := v.entries[ref]
		if dup || ref.Kind == RecordManifest || ref.Kind == RecordManifestBucket || !belongs(ref) ||
			len(e.SHA256) != sha256.Size || e.Revision > rev {
			return fmt.Errorf("keyvault: %v: bad entry for %v: %w", in, ref, ErrCorrupted)
		}
		v.entries[ref] = recordEntry{revision: e.Revision, digest: [sha256.Size]byte(e.SHA256), skippable: e.Skippable}
	}
	return nil
}

// verifiedBefore says whether r holds the bytes the view that v replaces
// verified for its record, and that view listed them with digest too.
func (v *Vault) verifiedBefore(r Record, digest [sha256.Size]byte) bool {
	if v.prev == nil {
		return false
	}
	old, ok := v.prev.read.records[r.RecordRef]
	if !ok || !bytes.Equal(old.Sealed, r.Sealed) {
		return false
	}
	listed, ok := v.prev.listedDigest(r.RecordRef)
	return ok && listed == digest
}

// listedDigest returns the digest the view's manifest lists for ref, a
// bucket's or a record's, and whether it lists ref.
func (v *Vault) listedDigest(ref RecordRef) ([sha256.Size]byte, bool) {
	if ref.Kind == RecordManifestBucket {
		b, ok := v.buckets[ref.Version]
		return b.digest, ok
	}
	e, ok := v.entries[ref]
	return e.digest, ok
}

// checkListed returns an error wrapping ErrCorrupted unless r holds the
// bytes the view's manifest lists for it: what the view verified, not an
// older copy spliced back nor bytes changed in the store since.
func (v *Vault) checkListed(r Record) error {
	if digest, ok := v.listedDigest(r.RecordRef); !ok || sha256.Sum256(r.Sealed) != digest {
		return fmt.Errorf("keyvault: %v is not the one the manifest lists: %w", r.RecordRef, ErrCorrupted)
	}
	return nil
}

// readListed is checkListed for a record that left work (an intent to
// undo, a destroy to finish) read from the store in its state rev. Where
// the store moved on from the view (another replica claimed the intent, or
// rotated the KEK), a record other than the view's is no error: ok is
// false, and the work is looked at again once the view follows the store.
// Where the view holds that state, it is corrupted.
func (v *Vault) readListed(r Record, rev int64) (ok bool, err error) {
	if err := v.checkListed(r); err != nil {
		if rev != v.storeRev {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// recordsOf reads the records of refs that the store holds, by ref, with
// the revision of the store's state they are of.
func recordsOf[T any](ctx context.Context, s Store, refs map[RecordRef]T) (map[RecordRef]Record, int64, error) {
	records := make(map[RecordRef]Record, len(refs))
	rev, err := s.Scan(ctx, func(r Record) error {
		if _, ok := refs[r.RecordRef]; ok {
			records[r.RecordRef] = r
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("keyvault: read the store: %w", err)
	}
	return records, rev, nil
}

// lostListed is readListed for a record of left work that the store, in
// its state rev, does not hold: erased since where the store moved on from
// the view or the view lists it no more (nil), and corrupted where the
// view, holding that state, lists it.
func (v *Vault) lostListed(ref RecordRef, rev int64) error {
	if _, listed := v.entries[ref]; !listed || rev != v.storeRev {
		return nil
	}
	return fmt.Errorf("keyvault: %v, which the manifest lists, is missing from the store: %w", ref, ErrCorrupted)
}

// openKey opens a key record and its versions, removing what it uses from
// versionRecords.
func (v *Vault) openKey(ctx context.Context, s sealer, r Record, versionRecords map[RecordRef]Record) (*keyState, error) {
	if err := validateID(r.ID); err != nil {
		return nil, fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
	}
	if k := v.unchangedKey(r.ID, versionRecords); k != nil {
		return k, nil
	}
	var kr keyRecord
	if err := s.openJSON(r, &kr); err != nil {
		return nil, err
	}
	if kr.Versions == 0 {
		return nil, fmt.Errorf("keyvault: %v has no versions: %w", r.RecordRef, ErrCorrupted)
	}
	k := &keyState{id: r.ID, labels: kr.Labels, createTime: kr.CreateTime}
	for n := uint32(1); n <= kr.Versions; n++ {
		ref := RecordRef{Kind: RecordVersion, ID: r.ID, Version: n}
		vr, ok := versionRecords[ref]
		if !ok {
			return nil, fmt.Errorf("keyvault: %v is missing: %w", ref, ErrCorrupted)
		}
		delete(versionRecords, ref)
		ref.Kind = RecordMaterial
		material, hasMaterial := versionRecords[ref]
		delete(versionRecords, ref)
		ver := v.unchangedVersion(r.ID, n)
		if ver == nil {
			var err error
			if ver, err = v.openVersion(ctx, s, vr, material, hasMaterial); err != nil {
				return nil, err
			}
		}
		k.versions = append(k.versions, ver)
	}
	return k, nil
}

func (v *Vault) openVersion(ctx context.Context, s sealer, r, material Record, hasMaterial bool) (*versionState, error) {
	var vr versionRecord
	if err := s.openJSON(r, &vr); err != nil {
		return nil, err
	}
	corrupted := fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
	state, ok := parseVersionState(vr.State)
	if !ok {
		return nil, corrupted
	}
	alg, err := ParseAlgorithm(vr.Algorithm)
	if err != nil {
		return nil, corrupted
	}
	pub, err := x509.ParsePKIXPublicKey(vr.PublicKey)
	if err != nil {
		return nil, corrupted
	}
	backendName := cmp.Or(vr.Backend, BackendSoftware)
	ver := &versionState{
		number: r.Version, state: state, alg: alg, imported: vr.Imported, backend: backendName, createTime: vr.CreateTime,
		pubDER: vr.PublicKey, pub: pub, chain: vr.Chain,
	}
	switch {
	case state == StateDestroyed && hasMaterial && backendName == BackendSoftware:
		return nil, fmt.Errorf("keyvault: %v: the version is destroyed but its private key is stored: %w", material.RecordRef, ErrCorrupted)
	case state == StateDestroyed:
		// A backend's key keeps its handle stored until the backend
		// destroyed it (finishDestroys); the version is destroyed all the
		// same and loads no key.
		return ver, nil
	case !hasMaterial:
		return nil, fmt.Errorf("keyvault: %v is missing: %w", RecordRef{Kind: RecordMaterial, ID: r.ID, Version: r.Version}, ErrCorrupted)
	}
	signer := v.unchangedSigner(material.RecordRef)
	if signer == nil {
		backend, err := v.backend(backendName)
		if err != nil {
			return nil, fmt.Errorf("keyvault: %v: %w", r.RecordRef, err)
		}
		handle, err := s.open(material)
		if err != nil {
			return nil, err
		}
		signer, err = backend.Load(ctx, alg, handle)
		clear(handle) // the private key, for the software backend
		if err != nil {
			// A software key that does not decode is corrupted; one that
			// decodes but cannot be put to use (memoryKey) is not.
			if backendName == BackendSoftware && !errors.Is(err, ErrFailedPrecondition) {
				return nil, fmt.Errorf("keyvault: %v: undecodable: %w", material.RecordRef, ErrCorrupted)
			}
			return nil, fmt.Errorf("keyvault: %v: load from the %s backend: %w", material.RecordRef, backendName, err)
		}
	}
	if got, err := algorithmOf(signer); err != nil || got != alg || !publicKeyEqual(signer.Public(), pub) {
		return nil, fmt.Errorf("keyvault: %v does not match its version record: %w", material.RecordRef, ErrCorrupted)
	}
	ver.signer = signer
	return ver, nil
}

// newVersion makes the state of a new enabled version holding signer, a
// key of backend.
func newVersion(number uint32, backend string, signer crypto.Signer, alg Algorithm, imported bool, now time.Time) (*versionState, error) {
	pubDER, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("keyvault: encode public key: %w", err)
	}
	// A copy of its own, so no snapshot's PublicKey aliases the private key.
	pub, err := x509.ParsePKIXPublicKey(pubDER)
	if err != nil {
		return nil, fmt.Errorf("keyvault: decode public key: %w", err)
	}
	ver := &versionState{
		number: number, state: StateEnabled, alg: alg, imported: imported, backend: backend, createTime: now,
		pubDER: pubDER, pub: pub, signer: signer,
	}
	return ver, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func (v *Vault) sealKey(k *keyState) (Record, error) {
	return v.sealer.sealJSON(RecordRef{Kind: RecordKey, ID: k.id}, keyRecord{
		Labels: k.labels, CreateTime: k.createTime, Versions: uint32(len(k.versions)),
	})
}

func (v *Vault) sealVersion(id string, ver *versionState) (Record, error) {
	return v.sealer.sealJSON(RecordRef{Kind: RecordVersion, ID: id, Version: ver.number}, versionRecord{
		State: ver.state.String(), Algorithm: ver.alg.String(), Imported: ver.imported,
		Backend: backendField(ver.backend), CreateTime: ver.createTime, PublicKey: ver.pubDER, Chain: ver.chain,
	})
}

// Close closes the vault and its store, and drops the keys from memory.
func (v *Vault) Close() error {
	v.follow.stop() // it takes writeMu
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	for _, k := range v.tickets {
		clear(k.secret)
	}
	v.keys, v.ids, v.tickets = nil, nil, nil
	v.mu.Unlock()
	v.read = storeState{}
	return v.store.Close()
}

// key returns the current state of key id.
func (v *Vault) key(id string) (*keyState, error) {
	if err := validateID(id); err != nil {
		return nil, err
	}
	v.mu.RLock()
	k, ok := v.keys[id]
	closed := v.closed
	v.mu.RUnlock()
	switch {
	case closed:
		return nil, ErrClosed
	case !ok:
		return nil, fmt.Errorf("keyvault: key %q: %w", id, ErrNotFound)
	}
	return k, nil
}

// keyVersion returns version n of key id, 0 meaning the primary one.
func (v *Vault) keyVersion(ctx context.Context, id string, n uint32) (*versionState, error) {
	return caughtUp(ctx, v, func() (*versionState, error) {
		k, err := v.key(id)
		if err != nil {
			return nil, err
		}
		return k.version(n)
	})
}

// knownKey is key for callers not holding writeMu: it catches up with a
// shared store before it says the key does not exist.
func (v *Vault) knownKey(ctx context.Context, id string) (*keyState, error) {
	return caughtUp(ctx, v, func() (*keyState, error) { return v.key(id) })
}

// version returns version n of k, 0 meaning the primary (newest) one.
func (k *keyState) version(n uint32) (*versionState, error) {
	if n == 0 {
		n = uint32(len(k.versions))
	}
	if n > uint32(len(k.versions)) {
		return nil, fmt.Errorf("keyvault: key %q version %d: %w", k.id, n, ErrNotFound)
	}
	return k.versions[n-1], nil
}

// ResolveVersion returns the number of version n of key id, 0 meaning the
// primary one. It is a map lookup, for callers that must name the version an
// operation used without copying the key as Get does.
func (v *Vault) ResolveVersion(ctx context.Context, id string, n uint32) (uint32, error) {
	ver, err := v.keyVersion(ctx, id, n)
	if err != nil {
		return 0, err
	}
	return ver.number, nil
}

// VersionAlgorithm returns the algorithm of version n of key id, 0 meaning
// the primary one: a map lookup, for the service's metrics, which label
// every key operation with the algorithm of the key it used.
func (v *Vault) VersionAlgorithm(ctx context.Context, id string, n uint32) (Algorithm, error) {
	ver, err := v.keyVersion(ctx, id, n)
	if err != nil {
		return AlgorithmUnspecified, err
	}
	return ver.alg, nil
}

// VersionChain returns the number, state and certificate chain of version
// n of key id, 0 meaning the primary one, without copying the key as Get
// does: a handshake needs them at every start. The chain is the vault's
// own, which it replaces rather than changes: the caller must not modify
// it.
func (v *Vault) VersionChain(ctx context.Context, id string, n uint32) (uint32, VersionState, [][]byte, error) {
	ver, err := v.keyVersion(ctx, id, n)
	if err != nil {
		return 0, 0, nil, err
	}
	return ver.number, ver.state, ver.chain, nil
}

// enabledVersion returns the version that a key operation may use: none
// while the view of a shared store is stale (follow.go). A version that is
// not enabled comes back with the error, for callers that name it.
func (v *Vault) enabledVersion(ctx context.Context, id string, n uint32) (*versionState, error) {
	if err := v.follow.fresh(); err != nil {
		return nil, err
	}
	ver, err := v.keyVersion(ctx, id, n)
	if err != nil {
		return nil, err
	}
	if ver.state != StateEnabled {
		return ver, fmt.Errorf("keyvault: key %q version %d is %v: %w", id, ver.number, ver.state, ErrFailedPrecondition)
	}
	return ver, nil
}

// UsedVersion is the version of a key an operation resolved to and its
// algorithm: what a response names and the service's metrics label.
type UsedVersion struct {
	Number    uint32
	Algorithm Algorithm
}

func (ver *versionState) used() UsedVersion {
	if ver == nil {
		return UsedVersion{}
	}
	return UsedVersion{Number: ver.number, Algorithm: ver.alg}
}

// withVersion returns a copy of k with ver replacing or appending the
// version of its number.
func (k *keyState) withVersion(ver *versionState) *keyState {
	next := *k
	next.versions = slices.Clone(k.versions)
	if int(ver.number) > len(next.versions) {
		next.versions = append(next.versions, ver)
	} else {
		next.versions[ver.number-1] = ver
	}
	return &next
}

// publish makes k the current state of its key, then tells the
// subscribers. The caller holds writeMu and has committed k to the store.
func (v *Vault) publish(k *keyState) {
	v.mu.Lock()
	if _, ok := v.keys[k.id]; !ok {
		i, _ := slices.BinarySearch(v.ids, k.id)
		v.ids = slices.Insert(v.ids, i, k.id)
	}
	v.keys[k.id] = k
	v.mu.Unlock()
	v.subs.notify([]string{k.id})
}

func (k *keyState) snapshot() *Key {
	key := &Key{
		ID:         k.id,
		Labels:     maps.Clone(k.labels),
		CreateTime: k.createTime,
		Primary:    uint32(len(k.versions)),
		Versions:   make([]Version, len(k.versions)),
	}
	for i, ver := range k.versions {
		key.Versions[i] = Version{
			Number: ver.number, State: ver.state, Algorithm: ver.alg, Imported: ver.imported, Backend: ver.backend,
			CreateTime: ver.createTime, PublicKey: ver.pub, Chain: cloneChain(ver.chain),
		}
	}
	return key
}

func cloneChain(chain [][]byte) [][]byte {
	if chain == nil {
		return nil
	}
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = slices.Clone(c)
	}
	return out
}

// Get returns key id.
func (v *Vault) Get(ctx context.Context, id string) (*Key, error) {
	k, err := v.knownKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return k.snapshot(), nil
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

// List returns keys ordered by id, pageSize of them (50 if pageSize <= 0,
// at most 1000), starting after the page that returned pageToken. The
// returned token is empty on the last page.
func (v *Vault) List(ctx context.Context, pageSize int, pageToken string) ([]*Key, string, error) {
	if pageSize <= 0 {
		pageSize = defaultPageSize
	}
	pageSize = min(pageSize, maxPageSize)
	var after string
	if pageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || validateID(string(b)) != nil {
			return nil, "", fmt.Errorf("keyvault: invalid page token: %w", ErrInvalidArgument)
		}
		after = string(b)
	}

	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return nil, "", ErrClosed
	}
	start := 0
	if after != "" {
		i, found := slices.BinarySearch(v.ids, after)
		if found {
			i++
		}
		start = i
	}
	end := min(start+pageSize, len(v.ids))
	states := make([]*keyState, 0, end-start)
	for _, id := range v.ids[start:end] {
		states = append(states, v.keys[id])
	}
	more := end < len(v.ids)
	v.mu.RUnlock()

	keys := make([]*Key, len(states))
	for i, k := range states {
		keys[i] = k.snapshot()
	}
	var next string
	if more {
		next = base64.RawURLEncoding.EncodeToString([]byte(keys[len(keys)-1].ID))
	}
	return keys, next, nil
}
