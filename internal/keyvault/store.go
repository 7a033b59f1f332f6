package keyvault

import (
	"context"
	"fmt"
)

// RecordKind says what a record holds.
type RecordKind uint8

const (
	// RecordCheck is the store's one check record: a known plaintext sealed
	// under the key-encryption key, so that New can tell a wrong KEK from a
	// corrupted record.
	RecordCheck RecordKind = iota + 1
	// RecordKey holds a key's metadata: labels, create time, version count.
	RecordKey
	// RecordVersion holds a version's metadata: state, algorithm, public
	// key, certificate chain.
	RecordVersion
	// RecordMaterial holds a version's private key, or its handle in a
	// KeyBackend. It is erased when the version is destroyed.
	RecordMaterial
	// RecordManifest is the store's one manifest: the revision of the store
	// and the revision and digest of every other record, rewritten in the
	// same commit as any change, so that an older copy of a record spliced
	// back into the store is detected.
	RecordManifest
	// RecordTicketKey holds a session ticket key (ticketkeys.go); Version
	// is its id. It is erased when the key is retired.
	RecordTicketKey
	// RecordKeyIntent says that a replica is generating a key for version
	// Version of key ID in a backend whose keys live outside the store (an
	// HSM's), under a label it names (intent.go). It is committed before
	// the key is generated and erased by the commit of the version, so
	// that a key whose version never landed in the store is found and
	// destroyed. Store format 1 (StoreFormat).
	RecordKeyIntent
	// RecordManifestBucket is one bucket of a bucketed manifest (store
	// format 2): the revision and digest of every record bucketOf assigns
	// to bucket Version. The manifest lists the buckets' revisions and
	// digests, so that a commit rewrites the manifest and the buckets it
	// changes, not an entry for every record of the store.
	RecordManifestBucket
)

// StoreFormat is the store format this release reads. Replicas of one
// store may run different releases (a rolling upgrade), so a release that
// changes what it writes must not write it while a replica that cannot read
// it serves:
//
//   - Format 0, every release before formats, takes a record of a kind it
//     does not know for corruption and refuses the whole store (load fails
//     with ErrCorrupted), so a newer replica's record would stop every
//     replica of such a release.
//   - Format 1 reads a record of a kind it does not know (a foreign
//     record) if the manifest lists it, with its digest, as skippable: it
//     serves without it, lists it in every manifest it writes after, and
//     reseals it under a KEK rotation (its associated data has the one
//     form of every kind this release does not name). A foreign record
//     the manifest does not list, or one of another digest, is refused as
//     any record is: skipping weakens no tamper detection, since the
//     manifest is sealed and names every record. One listed as not
//     skippable is refused with ErrFailedPrecondition: the release that
//     wrote it says this one cannot serve beside it.
//   - Format 2 reads a bucketed manifest as well as a flat one: the
//     manifest lists manifestBuckets buckets (RecordManifestBucket), each
//     listing its records as a flat manifest does, skippable ones
//     included. A format-1 replica cannot read it: the one entry a
//     bucketed manifest lists where a flat one lists records
//     (bucketedSentinel) is one format 1 refuses before any other check,
//     with an error that says so, so it neither serves nor takes the
//     store for another's.
//
// Replicas announce the format they read (SharedStore.Announce), and a
// replica writes a record of a kind format 0 does not know (RecordKeyIntent,
// and every kind after it) only once every live replica announces format 1 or later
// (SharedStore.MinFormat): a replica of a release before format 1 announces
// none and counts as format 0. It converts the manifest to buckets (the
// first commit that finds every live replica announcing format 2 or later,
// retry's convertIfDue) only then too; once converted it stays so, and a
// replica of format 1 or before can no longer start on the store, nor
// follow it: rolling back past format 2 then means restoring a snapshot
// taken before the conversion. A store no other process writes has no
// other reader, and converts at its first commit.
const StoreFormat = 2

// The store formats that gate what a replica writes (StoreFormat).
const (
	formatIntents = 1 // RecordKeyIntent
	formatBuckets = 2 // a bucketed manifest
)

// formatZeroKind says whether kind k is one store format 0 reads. Every
// other kind is written only through the gate above, and stores keep it
// in their layout for any kind (BoltStore's "x" entries), which a release
// that does not know the kind reads too.
func formatZeroKind(k RecordKind) bool {
	return k >= RecordCheck && k <= RecordTicketKey || k == RecordKEKRotation
}

// RecordRef names a record: its kind, key id and version number. ID is
// empty for RecordCheck, RecordManifest, RecordKEKRotation and
// RecordTicketKey; Version is 0 unless Kind is RecordVersion, RecordMaterial,
// RecordTicketKey or RecordKeyIntent.
type RecordRef struct {
	Kind    RecordKind
	ID      string
	Version uint32
}

func (r RecordRef) String() string {
	switch r.Kind {
	case RecordCheck:
		return "check record"
	case RecordManifest:
		return "manifest"
	case RecordKEKRotation:
		return "KEK rotation record"
	case RecordKey:
		return fmt.Sprintf("key %q", r.ID)
	case RecordVersion:
		return fmt.Sprintf("key %q version %d", r.ID, r.Version)
	case RecordMaterial:
		return fmt.Sprintf("key %q version %d private key", r.ID, r.Version)
	case RecordTicketKey:
		return fmt.Sprintf("ticket key %08x", r.Version)
	case RecordKeyIntent:
		return fmt.Sprintf("key %q version %d intent", r.ID, r.Version)
	case RecordManifestBucket:
		return fmt.Sprintf("manifest bucket %d", r.Version)
	}
	return fmt.Sprintf("record of kind %d for key %q version %d", r.Kind, r.ID, r.Version)
}

// Record is a sealed record: AES-256-GCM under the key-encryption key, with
// its RecordRef bound as associated data. A store sees nothing else.
type Record struct {
	RecordRef
	Sealed []byte
	// Revision is the store revision of the commit that last wrote the
	// record: set by Scan, ignored by Commit.
	Revision int64
}

// Write is one atomic change of a store.
type Write struct {
	// Create holds records that must not exist yet; if one does, Commit
	// fails with an error wrapping ErrAlreadyExists and changes nothing.
	Create []Record
	// Put holds records that are created or replaced.
	Put []Record
	// Erase names records to remove such that no copy of their bytes stays
	// in the store. Erasing a missing record is not an error. Erase applies
	// first: a record both erased and put is replaced, with no copy of its
	// old bytes left.
	Erase []RecordRef
	// If makes the write a compare-and-swap on what it was computed from:
	// Commit applies it only if every record named has the store revision
	// given (0: the record must not exist) and otherwise fails with an
	// error wrapping ErrConflict, changing nothing.
	If map[RecordRef]int64
	// Headroom is room the commit must leave below the store's size limit,
	// in a store that has one (etcd's --max-request-bytes); a commit that
	// would not fails with an error wrapping a *CommitTooLargeError and
	// ErrFailedPrecondition.
	Headroom int
}

// keyHeadroom is the Headroom of a commit that adds a key or a version:
// room kept for the vault's own commits when keys fill the store, so that
// its ticket, step-token and page-token keys still rotate (each purpose
// holds up to eight keys at the default rotation and lifetime, about 360
// bytes each with their manifest entries) and session tickets, unary
// handshakes and listings keep working while an operator makes room.
const keyHeadroom = 16 << 10

// Store keeps the vault's sealed records. It is the seam for backends: the
// embedded BoltStore, later PKCS#11 or a store shared by several replicas.
// Implementations must be safe for concurrent use.
type Store interface {
	// Scan calls fn once for every record in the store, in no particular
	// order, and stops at fn's first error. fn may retain the Record. The
	// records are those of one state of the store, between two commits,
	// and rev is the store revision of that state. A store reports what it
	// cannot read as a record rather than skip it.
	Scan(ctx context.Context, fn func(Record) error) (rev int64, err error)
	// Commit applies w atomically (all of it or nothing) and durably: when
	// Commit returns, the change survives a crash or power loss. rev is
	// the store revision of the commit, which every record it wrote now
	// has.
	Commit(ctx context.Context, w Write) (rev int64, err error)
	Close() error
}

// SharedStore is a Store other processes write too (etcd). A vault on one
// follows it.
type SharedStore interface {
	Store
	// ScanChanged is Scan for a replica that has read the store at
	// revision after: it calls fn once for every record written since
	// (Revision greater than after), in one state of the store, and
	// returns that state's revision and how many records it holds in all.
	// Records erased since are not reported; the count, with the
	// manifest, tells them. A replica that follows the store thus reads
	// what changed, not all of it, at each change.
	ScanChanged(ctx context.Context, after int64, fn func(Record) error) (rev int64, total int, err error)
	// Watch calls fn with each commit after `after`, by any process, in
	// order and none left out, until ctx ends (returns ctx.Err()) or the
	// watch breaks (returns another error: the caller rescans, then
	// watches again).
	Watch(ctx context.Context, after int64, fn func(Change)) error
	// Revision returns the store's current revision, read linearizably; it
	// fails when the store cannot confirm it (etcd without quorum): wrap
	// ErrUnavailable.
	Revision(ctx context.Context) (int64, error)
	// Announce publishes that this replica's view has applied revision
	// rev, and that it reads StoreFormat, under a lease that ends with the
	// process. A store whose replicas name their deployment fails,
	// announcing nothing, with an error wrapping ErrDeploymentConflict
	// (and ErrUnavailable) while live replicas announced another.
	Announce(ctx context.Context, rev int64) error
	// MinFormat returns the lowest store format the live announced
	// replicas read: 0 if one of them announced none (a release before
	// formats), StoreFormat if none is announced.
	MinFormat(ctx context.Context) (int, error)
	// WaitApplied returns once every live announced replica has applied
	// rev, or when ctx ends.
	WaitApplied(ctx context.Context, rev int64) error
}

// Change is a change of the store that Watch reports: its revision and,
// when Known, the records it wrote (with that revision) and those it
// erased, so that a replica applies it without reading the store.
type Change struct {
	Rev    int64
	Known  bool
	Put    []Record
	Erased []RecordRef
}
