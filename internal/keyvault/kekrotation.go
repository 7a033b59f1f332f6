package keyvault

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
)

// RecordKEKRotation is the store's record of a KEK rotation under way: the
// KEK being retired sealed under the new one, and the new one sealed under
// the retired one, so that the store opens with either until every record
// is rewrapped. Erasing it completes the rotation. Its kind is numbered
// apart from the record kinds that hold data.
const RecordKEKRotation RecordKind = 64

var rotationRef = RecordRef{Kind: RecordKEKRotation}

// rewrapBatch is how many records one commit of a rotation rewraps: writes
// wait for one batch at most, never for the whole rotation.
var rewrapBatch = 256

// commitBounded is a store whose commits hold a bounded number of records
// (etcd: its --max-txn-ops); a rotation's batches stay within it.
type commitBounded interface{ MaxCommitRecords() int }

// rewrapBatch returns the stale records one commit rewraps: at most
// rewrapBatch, and within the store's bound on a commit's records with the
// manifest and, when bucketed, the buckets they change. Taken bucket by
// bucket, a batch changes one or two.
func (v *Vault) rewrapBatch() map[RecordRef]bool {
	limit := math.MaxInt
	if b, ok := v.store.(commitBounded); ok {
		limit = b.MaxCommitRecords()
	}
	byBucket := func(a, b RecordRef) int { return cmp.Or(cmp.Compare(bucketOf(a), bucketOf(b)), compareRefs(a, b)) }
	batch := make(map[RecordRef]bool)
	buckets := make(map[uint32]bool)
	for _, ref := range slices.SortedFunc(maps.Keys(v.stale), byBucket) {
		b := bucketOf(ref)
		n := len(batch) + 1 + 1 // and the manifest
		if v.bucketed {
			n += len(buckets)
			if !buckets[b] {
				n++
			}
		}
		if len(batch) == rewrapBatch || n > limit && len(batch) > 0 {
			break
		}
		batch[ref], buckets[b] = true, true
	}
	return batch
}

// rotationRecord is the content of the RecordKEKRotation, each field an
// AES-256-GCM seal of one KEK under the other. It is not sealed as a whole:
// the manifest, which lists its digest, is.
type rotationRecord struct {
	Old []byte `json:"old"` // the retired KEK, sealed under the new one
	New []byte `json:"new"` // the new KEK, sealed under the retired one
}

func rotationAD(part string) []byte {
	return append(associatedData(aadV2, rotationRef), "/"+part...)
}

// KEKID is a public name for a key-encryption key: 16 hex digits derived
// from it with HKDF-SHA256, which tell KEKs apart and reveal nothing of
// them. Logs, status and snapshots name KEKs by it.
func KEKID(kek []byte) string { return hex.EncodeToString(kekIDBytes(kek)) }

// KEKStatus says which KEK seals the store and whether a rotation is under
// way.
type KEKStatus struct {
	// ID is the KEKID of the KEK records are sealed under: during a
	// rotation, the new one.
	ID string
	// Retiring is the KEKID of the KEK a rotation under way retires, ""
	// when none is.
	Retiring string
	// Stale is how many records are still sealed under the retiring KEK.
	Stale int
	// Records is how many records the store holds, the manifest and its
	// buckets aside.
	Records int
}

// KEKStatus returns the vault's KEK status.
func (v *Vault) KEKStatus() KEKStatus {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	return v.kekStatus()
}

func (v *Vault) kekStatus() KEKStatus {
	k := v.sealer.keys.Load()
	st := KEKStatus{ID: KEKID(k.kek), Stale: len(v.stale), Records: len(v.entries)}
	if k.previous != nil {
		st.Retiring = KEKID(k.previous.kek)
	}
	return st
}

// KEKKeeper keeps the vault's KEK where the next start reads it from, for
// a deployment whose KEK is kept by handshaked itself (cmd/handshaked
// keeps it wrapped by a PKCS #11 token in -kek-pkcs11-file).
type KEKKeeper interface {
	// KeepKEK durably replaces the kept KEK by kek, whole: a start at any
	// moment finds the one or the other. The caller clears kek.
	KeepKEK(ctx context.Context, kek []byte) error
}

// WithKEKKeeper gives the vault the keeper of its KEK. The vault has it
// keep every new KEK before the store needs it to open: a KEK rotation's,
// on the replica that begins it once the rotation record is committed (the
// store then opens with either KEK), and on every other replica before its
// view takes in the rotation record (a rotation completes only once every
// live replica has: follower.allHold); and, opened with the KEK a rotation
// under way retires, the new one. With a keeper, RotateKEK can make the new
// KEK itself.
func WithKEKKeeper(k KEKKeeper) Option {
	return func(v *Vault) { v.keeper = k }
}

// keepKEK has the keeper keep k's KEK unless it keeps it already. The
// caller holds writeMu (or is New).
func (v *Vault) keepKEK(ctx context.Context, k *sealKeys) error {
	id := KEKID(k.kek)
	if v.keeper == nil || id == v.keptKEK {
		return nil
	}
	if err := v.keeper.KeepKEK(ctx, k.kek); err != nil {
		return fmt.Errorf("keyvault: keep the new KEK %s for the next start: %w", id, err)
	}
	v.keptKEK = id
	return nil
}

// RotateKEK rewraps every record of the store under newKEK while the vault
// serves, and returns when none is left under the old KEK; from then on the
// store opens with newKEK only. It commits in steps, each durable: first a
// rotation record that lets the store open with either KEK, then batches of
// rewrapped records (writes go on between them, sealed under newKEK), and
// last the erasure of the rotation record, in a rewrite of the store that
// leaves no byte sealed under the old KEK. A crash, or ctx ending, at any
// point leaves a store that opens with newKEK and, until that last step,
// with the old KEK too; calling RotateKEK again with newKEK carries on.
// A rotation to another KEK while one is under way fails with
// ErrFailedPrecondition. The caller keeps newKEK and should clear it.
//
// A vault with a KEKKeeper makes the new KEK itself when newKEK is nil (or
// carries on the rotation under way), and has it kept: no caller ever
// holds it. Without a keeper a nil newKEK fails with ErrFailedPrecondition:
// nothing would keep the KEK the store opens with.
func (v *Vault) RotateKEK(ctx context.Context, newKEK []byte) (KEKStatus, error) {
	if newKEK == nil {
		if v.keeper == nil {
			return KEKStatus{}, fmt.Errorf("keyvault: this vault makes a new KEK only when it keeps its KEK itself (a token-wrapped KEK); give the new KEK: %w", ErrFailedPrecondition)
		}
		newKEK = v.madeKEK()
		defer clear(newKEK)
	}
	next, err := newSealKeys(newKEK)
	if err != nil {
		return KEKStatus{}, err
	}
	if err := v.beginRotation(ctx, next); err != nil {
		return KEKStatus{}, err
	}
	return v.ResumeKEKRotation(ctx)
}

// madeKEK returns the new KEK of the rotation under way, or else a new
// random one. The caller clears it.
func (v *Vault) madeKEK() []byte {
	if k := v.sealer.keys.Load(); k.previous != nil {
		return bytes.Clone(k.kek)
	}
	kek := make([]byte, kekSize)
	rand.Read(kek)
	return kek
}

// beginRotation commits the rotation record and makes next the KEK that
// seals, unless a rotation to next is under way already, and has the
// keeper keep it.
func (v *Vault) beginRotation(ctx context.Context, next *sealKeys) error {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if v.isClosed() {
		return ErrClosed
	}
	if err := v.retry(ctx, "begin the KEK rotation", func() error { return v.beginRotationOnce(ctx, next) }); err != nil {
		return err
	}
	// Before any record is rewrapped: until the rotation completes, the
	// KEK kept so far opens the store too, so a failure here loses nothing
	// and calling RotateKEK again carries on.
	return v.keepKEK(ctx, v.sealer.keys.Load())
}

// beginRotationOnce is one attempt of beginRotation. The caller holds
// writeMu.
func (v *Vault) beginRotationOnce(ctx context.Context, next *sealKeys) error {
	cur := v.sealer.keys.Load()
	same := func(k *sealKeys) bool { return subtle.ConstantTimeCompare(k.kek, next.kek) == 1 }
	switch {
	case cur.previous != nil && same(cur):
		return nil // resuming
	case cur.previous != nil:
		return fmt.Errorf("keyvault: a rotation from KEK %s to KEK %s is under way; finish it first, with KEK %s: %w",
			KEKID(cur.previous.kek), KEKID(cur.kek), KEKID(cur.kek), ErrFailedPrecondition)
	case same(cur):
		return fmt.Errorf("keyvault: KEK %s is the current one: %w", KEKID(cur.kek), ErrFailedPrecondition)
	}
	content, err := json.Marshal(rotationRecord{
		Old: next.aead.Seal(nil, nil, cur.kek, rotationAD("old")),
		New: cur.aead.Seal(nil, nil, next.kek, rotationAD("new")),
	})
	if err != nil {
		return fmt.Errorf("keyvault: encode %v: %w", rotationRef, err)
	}
	stale := make(map[RecordRef]bool, len(v.entries))
	for ref := range v.entries {
		stale[ref] = true
	}
	next.previous = cur
	v.sealer.keys.Store(next)
	v.stale = stale
	if err := v.commit(ctx, Write{Create: []Record{{RecordRef: rotationRef, Sealed: content}}}); err != nil {
		next.previous = nil
		v.sealer.keys.Store(cur)
		v.stale = nil
		return fmt.Errorf("keyvault: begin the KEK rotation: %w", err)
	}
	return nil
}

// ResumeKEKRotation carries on a rotation under way (begun by RotateKEK,
// perhaps before a crash) until it completes. Without one it only returns
// the status.
func (v *Vault) ResumeKEKRotation(ctx context.Context) (KEKStatus, error) {
	for {
		if err := ctx.Err(); err != nil {
			return KEKStatus{}, err
		}
		st, done, err := v.rewrapStep(ctx)
		if err != nil || done {
			return st, err
		}
	}
}

// rewrapStep rewraps one batch of stale records or, when none is left,
// completes the rotation.
func (v *Vault) rewrapStep(ctx context.Context) (KEKStatus, bool, error) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if v.isClosed() {
		return KEKStatus{}, false, ErrClosed
	}
	var done bool
	err := v.retry(ctx, "rewrap under the new KEK", func() (err error) {
		done, err = v.rewrapOnce(ctx)
		return err
	})
	if err != nil {
		return KEKStatus{}, false, err
	}
	return v.kekStatus(), done, nil
}

// rewrapOnce is one attempt of rewrapStep: it reports whether the rotation
// is complete. The caller holds writeMu.
func (v *Vault) rewrapOnce(ctx context.Context) (bool, error) {
	k := v.sealer.keys.Load()
	if k.previous == nil {
		return true, nil
	}
	if len(v.stale) == 0 {
		if err := v.follow.allHold(ctx, v.storeRev); err != nil {
			return false, fmt.Errorf("keyvault: complete the KEK rotation: wait for every replica to hold the new KEK: %w", err)
		}
		// Erasing rewrites the store file: none of its pages keeps a record
		// sealed under the old KEK, nor the rotation record, which is what
		// the old KEK would open the new one with.
		if err := v.commit(ctx, Write{Erase: []RecordRef{rotationRef}}); err != nil {
			return false, fmt.Errorf("keyvault: complete the KEK rotation: %w", err)
		}
		old := k.previous
		v.sealer.keys.Store(&sealKeys{kek: k.kek, aead: k.aead})
		clear(old.kek)
		v.stale = nil
		return true, nil
	}
	batch := v.rewrapBatch()
	records, rev, err := recordsOf(ctx, v.store, batch)
	if err == nil && rev != v.storeRev {
		// Another replica changed the store since the view: its records
		// may differ from the view's, or be erased, without any damage.
		// The retry rewraps the store's state.
		err = fmt.Errorf("keyvault: the store is at revision %d, the view at %d: %w", rev, v.storeRev, ErrConflict)
	}
	var w Write
	for _, r := range records {
		if err != nil {
			break // a conflict, or the record before
		}
		// What the view verified, not an older copy put back since: the
		// commit makes the manifest vouch for what it reseals.
		if err = v.checkListed(r); err != nil {
			break
		}
		var plaintext []byte
		if plaintext, err = openWith(k.previous, v.sealer.format, r); err != nil {
			break
		}
		w.Put = append(w.Put, v.sealer.seal(r.RecordRef, plaintext))
		clear(plaintext) // a private key, for material records
	}
	if err == nil && len(w.Put) != len(batch) {
		err = fmt.Errorf("keyvault: %d records listed in the manifest are missing from the store: %w", len(batch)-len(w.Put), ErrCorrupted)
	}
	if err == nil {
		err = v.commit(ctx, w)
	}
	if err != nil {
		return false, fmt.Errorf("keyvault: rewrap under the new KEK: %w", err)
	}
	return false, nil
}

// openRotation makes the vault's sealer hold both KEKs of the rotation
// record r: the KEK the vault was given opens the other one.
func (v *Vault) openRotation(r Record) error {
	var rr rotationRecord
	if err := json.Unmarshal(r.Sealed, &rr); err != nil {
		return fmt.Errorf("keyvault: %v: undecodable: %w", r.RecordRef, ErrCorrupted)
	}
	given := v.sealer.keys.Load()
	if old, err := given.aead.Open(nil, nil, rr.Old, rotationAD("old")); err == nil {
		defer clear(old)
		prev, err := newSealKeys(old)
		if err != nil {
			return fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
		}
		given.previous = prev
		return nil
	}
	newKEK, err := given.aead.Open(nil, nil, rr.New, rotationAD("new"))
	if err != nil {
		return fmt.Errorf("keyvault: neither KEK of the %v opens with it: %w", r.RecordRef, ErrWrongKEK)
	}
	defer clear(newKEK)
	next, err := newSealKeys(newKEK)
	if err != nil {
		return fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
	}
	next.previous = given
	v.sealer.keys.Store(next)
	return nil
}

// findStale records which of records are still sealed under the KEK the
// rotation under way retires.
func (v *Vault) findStale(records []Record) {
	k := v.sealer.keys.Load()
	v.stale = make(map[RecordRef]bool)
	for _, r := range records {
		if r.Kind == RecordKEKRotation {
			continue
		}
		plaintext, err := openWith(k, v.sealer.format, r)
		clear(plaintext)
		if err != nil {
			v.stale[r.RecordRef] = true
		}
	}
}

func (v *Vault) isClosed() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.closed
}

// ParseKEK decodes a key-encryption key written as 64 hex digits, with
// surrounding white space (a KEK file's form). It decodes from data in
// place, with no string copy of the hex that could not be wiped; the
// caller clears data and, when done, the KEK.
func ParseKEK(data []byte) ([]byte, error) {
	src := bytes.TrimSpace(data)
	kek := make([]byte, hex.DecodedLen(len(src)))
	n, err := hex.Decode(kek, src)
	if err != nil || n != kekSize {
		clear(kek)
		return nil, fmt.Errorf("keyvault: a key-encryption key is 64 hex digits (32 bytes): %w", ErrInvalidArgument)
	}
	return kek, nil
}
