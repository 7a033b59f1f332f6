package keyvault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"
)

// A key generated in a backend whose keys live outside the store (an HSM's,
// a LabelDestroyer) is named by nothing until the commit of its version
// lands. A crash between the generation and the commit, a commit whose
// answer is lost and that the store never applied, would leave it in the
// backend for good. So its creation is recorded first:
//
//  1. An intent (RecordKeyIntent: the key id, a version number no other
//     intent of the key holds, the backend and a label unique to this
//     attempt) is committed before the backend generates the key under
//     that label.
//  2. The version's commit erases the intent in the same write, and is
//     made only from a view that holds the intent as this replica
//     committed it (the commit's compare-and-swap makes the view the
//     store's); otherwise the attempt fails with ErrAborted.
//  3. An attempt that fails for certain destroys what it generated, by
//     its label, then erases its intent. One whose commit may have
//     landed (mayHaveLanded: ErrUnavailable, or its context ended while
//     the commit was out) leaves both: the key is in use if the
//     commit landed, which erased the intent.
//  4. An intent left for intentUndoBounds staleness bounds is undone by a
//     replica that follows a shared store (keepUp), or at the start of a
//     vault on a store no other process writes: it claims the intent
//     (reseals and commits it, so that its replica's commit, whose view
//     no longer holds the intent as it was, cannot land after), destroys
//     every key the label names, then erases the intent.
//
// A KEK rotation that rewraps an intent (one committed before the rotation
// began) changes it as a claim does, and no commit can tell the two apart
// (a claim reseals the same plaintext, under the KEK of the moment): that
// attempt is undone as for a claim, and the creation is made again
// (againIfRewrapped), its new intent committed under the new KEK, which
// the rotation under way does not rewrap. The intent left behind is
// undone as any other.
//
// The software backend writes no intent: its key is the material record.
// Intents are store format 1: until every live replica reads it
// (SharedStore.MinFormat), keys are created without one, as before.

// intentUndoBounds is how many staleness bounds an intent stands before a
// replica undoes it: far longer than a generation in a token takes, so
// that an attempt is undone only when its replica stopped, lost the
// store, or never had its commit applied.
const intentUndoBounds = 10

// LabelDestroyer is a KeyBackend whose keys live outside the store, which
// the vault records intents for.
type LabelDestroyer interface {
	KeyBackend
	// DestroyLabeled destroys every key that Generate made under label.
	// None is no error. The vault gives each Generate a label of its own.
	DestroyLabeled(ctx context.Context, label string) error
}

// keyIntent is an intent this replica committed.
type keyIntent struct {
	ref     RecordRef
	entry   recordEntry // as committed: a claim by another replica changes it
	kek     string      // the KEKID it was sealed under
	backend LabelDestroyer
	label   string
}

// errRewrapped is wrapped, beside ErrAborted, by held when the intent
// changed since it was committed and the KEK did too: a KEK rotation
// rewrapped it (and maybe a replica claimed it as well).
var errRewrapped = errors.New("the intent was rewrapped by a KEK rotation")

// rewrapAttempts bounds the attempts of a creation whose intents KEK
// rotations keep rewrapping: one rotation rewraps an intent at most once,
// and the next begins only once it completed.
const rewrapAttempts = 3

// againIfRewrapped runs create, a creation in a backend with an intent,
// again when a KEK rotation rewrapped its intent (errRewrapped): create
// has undone that attempt, and the next one's intent is committed under
// the new KEK.
func againIfRewrapped(ctx context.Context, create func() (*Key, error)) (*Key, error) {
	for attempt := 1; ; attempt++ {
		k, err := create()
		if !errors.Is(err, errRewrapped) || attempt == rewrapAttempts || ctx.Err() != nil {
			return k, err
		}
		slog.InfoContext(ctx, "keyvault: a KEK rotation rewrapped the intent of a key creation under way; the key is made again", "err", err)
	}
}

// intentRecord is the plaintext of a RecordKeyIntent.
type intentRecord struct {
	Backend string `json:"backend"`
	Label   string `json:"label"`
}

// beginIntent returns the label to generate version n of key id under in
// b and, for a LabelDestroyer when every replica reads store format 1, the
// intent it committed first; nil for another backend.
func (v *Vault) beginIntent(ctx context.Context, b KeyBackend, id string, n uint32) (string, *keyIntent, error) {
	ld, ok := b.(LabelDestroyer)
	if !ok {
		return versionLabel(id, n), nil, nil
	}
	if v.follow != nil {
		f, err := v.follow.store.MinFormat(ctx)
		if err != nil {
			return "", nil, fmt.Errorf("keyvault: key %q: read the store formats of the replicas: %w", id, err)
		}
		if f < formatIntents {
			slog.WarnContext(ctx, "keyvault: a replica of an earlier release follows the store: the key is made without an intent, "+
				"and is left in its backend if its version never reaches the store", "key", id, "backend", b.Name())
			return attemptLabel(id, n), nil, nil
		}
	}
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	var in *keyIntent
	err := v.retry(ctx, fmt.Sprintf("record the creation of key %q version %d", id, n), func() error {
		// A number no intent of the key holds (another replica may be
		// rotating it too), past the versions the view has.
		slot := n
		if k, err := v.key(id); err == nil {
			slot = max(slot, uint32(len(k.versions))+1)
		}
		ref := RecordRef{Kind: RecordKeyIntent, ID: id, Version: slot}
		for _, taken := v.entries[ref]; taken; _, taken = v.entries[ref] {
			ref.Version++
		}
		label := attemptLabel(id, ref.Version)
		rec, err := v.sealer.sealJSON(ref, intentRecord{Backend: b.Name(), Label: label})
		if err != nil {
			return err
		}
		if err := v.commit(ctx, Write{Create: []Record{rec}, Headroom: keyHeadroom}); err != nil {
			return fmt.Errorf("keyvault: store %v: %w", ref, err)
		}
		in = &keyIntent{ref: ref, entry: v.entries[ref], kek: KEKID(v.sealer.keys.Load().kek), backend: ld, label: label}
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return in.label, in, nil
}

// attemptLabel is a label of version n of key id unique to one attempt.
func attemptLabel(id string, n uint32) string {
	var attempt [8]byte
	rand.Read(attempt[:])
	return versionLabel(id, n) + "/" + hex.EncodeToString(attempt[:])
}

// held fails unless the view holds in as its replica committed it. The
// caller holds writeMu.
func (v *Vault) held(in *keyIntent) error {
	if in == nil {
		return nil
	}
	e, ok := v.entries[in.ref]
	switch {
	case ok && e == in.entry:
		return nil
	case ok && KEKID(v.sealer.keys.Load().kek) != in.kek:
		return fmt.Errorf("keyvault: %v: %w: %w", in.ref, errRewrapped, ErrAborted)
	}
	return fmt.Errorf("keyvault: %v: the creation was undone (by this replica or another) as it took longer than %d staleness bounds; retry it: %w",
		in.ref, intentUndoBounds, ErrAborted)
}

// withIntent adds the erasure of in, if any, to the version's commit w.
func withIntent(w Write, in *keyIntent) Write {
	if in != nil {
		w.Erase = append(w.Erase, in.ref)
	}
	return w
}

// unstored undoes an attempt whose version the vault failed to store and
// returns err. Without an intent the key is destroyed by its handle
// (destroyUnstored); with one, by its label, unless the store may hold the
// version (mayHaveLanded): the intent stays then, and is undone if it
// does not.
func (v *Vault) unstored(ctx context.Context, b KeyBackend, handle []byte, in *keyIntent, err error) error {
	if in == nil || mayHaveLanded(err) {
		return destroyUnstored(ctx, b, handle, err)
	}
	return v.abandon(ctx, in, err)
}

// abandon destroys the keys generated under in's label, then erases in
// unless another replica claimed it (which erases it), and returns err.
// What it cannot do is left to the replicas that undo intents.
func (v *Vault) abandon(ctx context.Context, in *keyIntent, err error) error {
	if in == nil {
		return err
	}
	if derr := in.backend.DestroyLabeled(ctx, in.label); derr != nil {
		return fmt.Errorf("%w (and destroying the key generated in the %s backend failed, which a replica retries: %v)", err, in.backend.Name(), derr)
	}
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if eerr := v.retry(ctx, fmt.Sprintf("erase %v", in.ref), func() error {
		if v.held(in) != nil {
			return nil
		}
		return v.commit(ctx, Write{Erase: []RecordRef{in.ref}})
	}); eerr != nil {
		slog.WarnContext(ctx, "keyvault: an intent of a failed key creation is left in the store; a replica erases it", "record", in.ref.String(), "err", eerr)
	}
	return err
}

// undoIntentsAtStart undoes every intent of a store no other process
// writes: the process that recorded it has stopped. A shared store's are
// left to keepUp (finishLeftWork), as a snapshot's are (Restore does not
// restore them).
func (v *Vault) undoIntentsAtStart(ctx context.Context) {
	if _, shared := v.store.(SharedStore); shared {
		return
	}
	if _, snapshot := v.store.(*snapshotStore); snapshot {
		return
	}
	due := make(map[RecordRef]recordEntry)
	for ref, e := range v.entries {
		if ref.Kind == RecordKeyIntent {
			due[ref] = e
		}
	}
	v.undoIntentsLogged(ctx, due)
}

// intentSeen is when a replica first saw an intent as it stands.
type intentSeen struct {
	entry recordEntry
	at    time.Time
}

// undoLeftIntents undoes the intents that have stood unchanged for
// intentUndoBounds staleness bounds. since holds when each was first seen
// as it stands; the caller (finishLeftWork) owns it and stuck, and holds
// writeMu.
func (v *Vault) undoLeftIntents(ctx context.Context, since map[RecordRef]intentSeen, stuck stuckWork) {
	now := time.Now()
	due := make(map[RecordRef]recordEntry)
	for ref, e := range v.entries {
		if ref.Kind != RecordKeyIntent {
			continue
		}
		switch s, ok := since[ref]; {
		case !ok || s.entry != e:
			since[ref] = intentSeen{entry: e, at: now}
		case now.Sub(s.at) >= intentUndoBounds*v.staleBound:
			due[ref] = e
		}
	}
	maps.DeleteFunc(since, func(ref RecordRef, _ intentSeen) bool { _, ok := v.entries[ref]; return !ok })
	if len(due) == 0 {
		return
	}
	backends, failed, err := v.undoIntents(ctx, due)
	if err != nil {
		slog.ErrorContext(ctx, "keyvault: the intents left to this replica are not undone yet; it retries", "err", err)
	}
	stuck.failed(ctx, v, now, "a key generated for a version that never reached the store", backends, failed)
}

func (v *Vault) undoIntentsLogged(ctx context.Context, due map[RecordRef]recordEntry) {
	if len(due) == 0 {
		return
	}
	_, failed, err := v.undoIntents(ctx, due)
	if err := errors.Join(failed.err(), err); err != nil {
		slog.ErrorContext(ctx, "keyvault: a key generated for a version that never reached the store is not destroyed yet; it is retried", "err", err)
	}
}

// undoIntents undoes the intents of due, each as the view holds it: claim,
// destroy by its label, erase. It returns the backend each intent names,
// what it could not undo for its backend or its record (the keys left in
// a backend, which keepUp counts as stuck), and err when the store failed
// it: the read, or a claim's or an erasure's commit (one keepUp's tick
// gave too little time, on a loaded machine), which leaves no key stuck in
// a backend and is tried again. The caller holds writeMu.
func (v *Vault) undoIntents(ctx context.Context, due map[RecordRef]recordEntry) (backends map[RecordRef]string, failed failures, err error) {
	records, rev, err := recordsOf(ctx, v.store, due)
	if err != nil {
		return nil, nil, err
	}
	backends, failed = make(map[RecordRef]string), make(failures)
	var commits []error
	for ref, seen := range due {
		r, ok := records[ref]
		if !ok {
			if err := v.lostListed(ref, rev); err != nil {
				failed.fail(ref, err)
			}
			continue
		}
		var ir intentRecord
		ok, err := v.readListed(r, rev)
		if ok {
			err = v.sealer.openJSON(r, &ir)
		}
		if err != nil {
			failed.fail(ref, err)
			continue
		}
		if !ok {
			continue
		}
		backends[ref] = ir.Backend
		stuck, err := v.undoIntent(ctx, ref, seen, ir)
		if stuck != nil {
			failed.fail(ref, stuck)
		}
		if err != nil {
			commits = append(commits, fmt.Errorf("keyvault: undo %v: %w", ref, err))
		}
	}
	return backends, failed, errors.Join(commits...)
}

// undoIntent undoes the intent ref, as the view holds it (seen). stuck is
// why its backend could not destroy its keys (not configured here, or
// failing); err is why the store could not claim or erase it.
func (v *Vault) undoIntent(ctx context.Context, ref RecordRef, seen recordEntry, ir intentRecord) (stuck, err error) {
	b, err := v.backend(ir.Backend)
	if err != nil {
		return err, nil
	}
	ld, ok := b.(LabelDestroyer)
	if !ok {
		return fmt.Errorf("the %s backend destroys no key by its label", b.Name()), nil
	}
	var claimed recordEntry
	err = v.retry(ctx, "claim "+ref.String(), func() error {
		if e, ok := v.entries[ref]; !ok || e != seen {
			return nil // erased, or claimed by another replica
		}
		rec, err := v.sealer.sealJSON(ref, ir)
		if err != nil {
			return err
		}
		if err := v.commit(ctx, Write{Put: []Record{rec}}); err != nil {
			return err
		}
		claimed = v.entries[ref]
		return nil
	})
	if err != nil || claimed == (recordEntry{}) {
		return nil, err
	}
	// No commit of the version can land now: its replica's view does not
	// hold the intent as it committed it.
	if err := ld.DestroyLabeled(ctx, ir.Label); err != nil {
		return fmt.Errorf("destroy the keys labelled %q in the %s backend: %w", ir.Label, b.Name(), err), nil
	}
	return nil, v.retry(ctx, "erase "+ref.String(), func() error {
		if v.entries[ref] != claimed {
			return nil
		}
		return v.commit(ctx, Write{Erase: []RecordRef{ref}})
	})
}
