package keyvault

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	maxIDLen         = 63
	maxLabels        = 32
	maxLabelKeyLen   = 63
	maxLabelValueLen = 255
	maxChainCerts    = 16
	maxChainBytes    = 256 << 10
)

// validateID checks a key id: 1 to 63 characters of [a-z0-9-], neither
// starting nor ending with '-'. The error does not echo the id, which may
// be anything a caller sent.
func validateID(id string) error {
	ok := len(id) >= 1 && len(id) <= maxIDLen && id[0] != '-' && id[len(id)-1] != '-'
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !ok {
		return fmt.Errorf("keyvault: key id must be 1 to %d characters of a-z, 0-9 and '-', not starting or ending with '-': %w", maxIDLen, ErrInvalidArgument)
	}
	return nil
}

// validateLabels checks labels: at most 32; keys of 1 to 63 characters of
// [a-z0-9_-] starting with a letter; values of at most 255 bytes of UTF-8
// without control characters.
func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("keyvault: at most %d labels: %w", maxLabels, ErrInvalidArgument)
	}
	for k, val := range labels {
		ok := len(k) >= 1 && len(k) <= maxLabelKeyLen && k[0] >= 'a' && k[0] <= 'z'
		for i := 0; ok && i < len(k); i++ {
			c := k[i]
			ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		}
		if !ok {
			return fmt.Errorf("keyvault: label keys must be 1 to %d characters of a-z, 0-9, '-' and '_', starting with a letter: %w", maxLabelKeyLen, ErrInvalidArgument)
		}
		if len(val) > maxLabelValueLen || !utf8.ValidString(val) {
			return fmt.Errorf("keyvault: label %q: values must be at most %d bytes of UTF-8: %w", k, maxLabelValueLen, ErrInvalidArgument)
		}
		for _, r := range val {
			if unicode.IsControl(r) {
				return fmt.Errorf("keyvault: label %q: control character in value: %w", k, ErrInvalidArgument)
			}
		}
	}
	return nil
}

// Create makes key id with one version of a new private key of alg,
// generated in the vault's software backend.
func (v *Vault) Create(ctx context.Context, id string, alg Algorithm, labels map[string]string) (*Key, error) {
	return v.CreateInBackend(ctx, BackendSoftware, id, alg, labels)
}

// CreateInBackend makes key id with one version of a new private key of
// alg, generated inside the key backend of that name (see WithBackend); its
// later versions (Rotate) are generated there too. A backend this vault was
// not given fails with ErrFailedPrecondition.
func (v *Vault) CreateInBackend(ctx context.Context, backend string, id string, alg Algorithm, labels map[string]string) (*Key, error) {
	if err := v.checkNew(id, labels); err != nil {
		return nil, err
	}
	if !alg.valid() {
		return nil, fmt.Errorf("keyvault: algorithm %v: %w", alg, ErrInvalidArgument)
	}
	b, err := v.backend(backend)
	if err != nil {
		return nil, err
	}
	return againIfRewrapped(ctx, func() (*Key, error) {
		return v.generated(ctx, b, id, 1, alg, func(handle []byte, signer crypto.Signer, in *keyIntent) (*Key, error) {
			return v.add(ctx, id, labels, backend, handle, signer, alg, false, in)
		})
	})
}

// generated generates version n of key id, of alg, in backend b (under an
// intent, for a LabelDestroyer) and has store commit it, undoing the
// attempt when either fails.
func (v *Vault) generated(ctx context.Context, b KeyBackend, id string, n uint32, alg Algorithm,
	store func(handle []byte, signer crypto.Signer, in *keyIntent) (*Key, error)) (*Key, error) {
	label, in, err := v.beginIntent(ctx, b, id, n)
	if err != nil {
		return nil, err
	}
	// Generating an RSA key takes long; it is done holding no lock.
	handle, signer, err := b.Generate(ctx, alg, label)
	if err != nil {
		return nil, v.abandon(ctx, in, fmt.Errorf("keyvault: key %q: %w", id, err))
	}
	defer clear(handle)
	k, err := store(handle, signer, in)
	if err != nil {
		return nil, v.unstored(ctx, b, handle, in, err)
	}
	return k, nil
}

// destroyUnstored destroys a key that a backend generated but the vault
// failed to store, so that it does not linger in an HSM with no record
// naming it, and returns err. A commit that may have landed (mayHaveLanded)
// keeps the key, as one that may be in use.
func destroyUnstored(ctx context.Context, b KeyBackend, handle []byte, err error) error {
	if mayHaveLanded(err) {
		if b.Name() != BackendSoftware {
			slog.WarnContext(ctx, "keyvault: the store did not confirm a new key version; its key is kept in the backend in case the store has it",
				"backend", b.Name(), "err", err)
		}
		return err
	}
	if derr := b.Destroy(ctx, handle); derr != nil {
		return fmt.Errorf("%w (and destroying the key generated in the %s backend failed: %v)", err, b.Name(), derr)
	}
	return err
}

// mayHaveLanded says whether err, the error of a commit, leaves it unknown
// whether the store applied it (or says it did): a store that could not be
// reached or did not answer (an etcd request that timed out), the caller's
// context ending while the request was out (etcd may have applied it, and
// etcdstore then returns the context's error), or a commit made whose
// aftermath failed (committedError); not one the store knows it did not
// apply (notAppliedError: a bolt store on a full disk), whose key in a
// backend is destroyed at once rather than left to the undoing of intents.
func mayHaveLanded(err error) bool {
	var committed *committedError
	if errors.As(err, new(*notAppliedError)) {
		return false
	}
	return errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &committed)
}

// versionLabel names a key version inside a backend, for an operator; a
// LabelDestroyer's keys have one with a suffix unique to the attempt
// (attemptLabel).
func versionLabel(id string, version uint32) string {
	return fmt.Sprintf("handshaked/%s/%d", id, version)
}

// Import makes key id with one version holding the private key in pemBytes:
// PKCS #1 ("RSA PRIVATE KEY"), PKCS #8 ("PRIVATE KEY") or SEC 1 ("EC PRIVATE
// KEY"), unencrypted, of a supported algorithm.
func (v *Vault) Import(ctx context.Context, id string, pemBytes []byte, labels map[string]string) (*Key, error) {
	if err := v.checkNew(id, labels); err != nil {
		return nil, err
	}
	signer, err := parsePrivateKeyPEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("keyvault: import key %q: %w", id, err)
	}
	alg, err := algorithmOf(signer)
	if err != nil {
		return nil, fmt.Errorf("keyvault: import key %q: %w", id, err)
	}
	handle, err := softwareHandle(signer)
	if err != nil {
		return nil, err
	}
	defer clear(handle)
	if signer, err = memoryKey(signer); err != nil {
		return nil, err
	}
	return v.add(ctx, id, labels, BackendSoftware, handle, signer, alg, true, nil)
}

// checkNew validates the arguments of a new key and fails early if the id
// is taken, before the work of generating or parsing a key.
func (v *Vault) checkNew(id string, labels map[string]string) error {
	if err := validateID(id); err != nil {
		return err
	}
	if err := validateLabels(labels); err != nil {
		return err
	}
	return v.absent(id)
}

// absent fails unless the vault is open and holds no key id.
func (v *Vault) absent(id string) error {
	_, err := v.key(id)
	switch {
	case err == nil:
		return fmt.Errorf("keyvault: key %q: %w", id, ErrAlreadyExists)
	case errors.Is(err, ErrNotFound):
		return nil
	}
	return err
}

// add stores a new key whose version 1 holds signer, a key of backend that
// handle names, generated under intent in (nil: none).
func (v *Vault) add(ctx context.Context, id string, labels map[string]string, backend string, handle []byte, signer crypto.Signer, alg Algorithm, imported bool, in *keyIntent) (*Key, error) {
	now := time.Now().UTC()
	ver, err := newVersion(1, backend, signer, alg, imported, now)
	if err != nil {
		return nil, err
	}
	k := &keyState{id: id, createTime: now, versions: []*versionState{ver}}
	if len(labels) > 0 {
		k.labels = maps.Clone(labels)
	}
	// Sealed holding writeMu, so under the KEK the commit is made under
	// even while a KEK rotation begins.
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	err = v.retry(ctx, fmt.Sprintf("create key %q", id), func() error {
		if err := v.absent(id); err != nil {
			return err // another replica may have created it meanwhile
		}
		if err := v.held(in); err != nil {
			return err
		}
		keyRec, err := v.sealKey(k)
		if err != nil {
			return err
		}
		verRec, err := v.sealVersion(id, ver)
		if err != nil {
			return err
		}
		w := Write{Create: []Record{
			keyRec, verRec,
			v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: id, Version: 1}, handle),
		}, Headroom: keyHeadroom}
		if err := v.commit(ctx, withIntent(w, in)); err != nil {
			return fmt.Errorf("keyvault: store key %q: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	v.publish(k)
	return k.snapshot(), nil
}

// Rotate adds a version to key id holding a new private key of the key's
// algorithm, generated in the backend of its primary version (the software
// backend for an imported key). It becomes the primary version; the earlier
// ones keep working until disabled.
func (v *Vault) Rotate(ctx context.Context, id string) (*Key, error) {
	return againIfRewrapped(ctx, func() (*Key, error) {
		k, err := v.knownKey(ctx, id)
		if err != nil {
			return nil, err
		}
		alg := k.versions[0].alg
		b, err := v.backend(k.versions[len(k.versions)-1].backend)
		if err != nil {
			return nil, err
		}
		return v.generated(ctx, b, id, uint32(len(k.versions))+1, alg, func(handle []byte, signer crypto.Signer, in *keyIntent) (*Key, error) {
			return v.rotate(ctx, id, b.Name(), handle, signer, alg, in)
		})
	})
}

func (v *Vault) rotate(ctx context.Context, id string, backend string, handle []byte, signer crypto.Signer, alg Algorithm, in *keyIntent) (*Key, error) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	var next *keyState
	err := v.retry(ctx, fmt.Sprintf("rotate key %q", id), func() error {
		// The version number follows the versions of the view: on a
		// conflict, of the view another replica's rotation left.
		k, err := v.key(id)
		if err != nil {
			return err
		}
		if err := v.held(in); err != nil {
			return err
		}
		ver, err := newVersion(uint32(len(k.versions))+1, backend, signer, alg, false, time.Now().UTC())
		if err != nil {
			return err
		}
		next = k.withVersion(ver)
		keyRec, err := v.sealKey(next)
		if err != nil {
			return err
		}
		verRec, err := v.sealVersion(id, ver)
		if err != nil {
			return err
		}
		w := Write{
			Put: []Record{keyRec},
			Create: []Record{
				verRec,
				v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: id, Version: ver.number}, handle),
			},
			Headroom: keyHeadroom,
		}
		if err := v.commit(ctx, withIntent(w, in)); err != nil {
			return fmt.Errorf("keyvault: store key %q version %d: %w", id, ver.number, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	v.publish(next)
	return next.snapshot(), nil
}

// SetVersionEnabled enables or disables a version (0: the primary). A
// destroyed version cannot change.
func (v *Vault) SetVersionEnabled(ctx context.Context, id string, version uint32, enabled bool) (*Key, error) {
	want := StateDisabled
	if enabled {
		want = StateEnabled
	}
	key, rev, err := v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
		if ver.state == StateDestroyed {
			return nil, fmt.Errorf("the version is destroyed: %w", ErrFailedPrecondition)
		}
		if ver.state == want {
			return ver, nil
		}
		next := *ver
		next.state = want
		return &next, nil
	})
	if !enabled && rev != 0 { // committed, even with an error after the commit
		if rerr := v.revoked(ctx, rev); err == nil {
			err = rerr
		}
	}
	return key, err
}

// DestroyVersion destroys a disabled version (0: the primary): its private
// key is erased from the store and dropped from memory; its metadata stays,
// in state StateDestroyed.
func (v *Vault) DestroyVersion(ctx context.Context, id string, version uint32) (*Key, error) {
	key, rev, err := v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
		if ver.state != StateDisabled {
			return nil, fmt.Errorf("the version is %v; only a disabled version can be destroyed: %w", ver.state, ErrFailedPrecondition)
		}
		next := *ver
		next.state = StateDestroyed
		next.signer = nil
		return &next, nil
	})
	if rev != 0 { // committed, even with an error after the commit
		if rerr := v.revoked(ctx, rev); err == nil {
			err = rerr
		}
	}
	return key, err
}

// AttachChain attaches a certificate chain (DER, leaf first) to a version
// (0: the primary), replacing any earlier one. The leaf must certify the
// version's public key.
func (v *Vault) AttachChain(ctx context.Context, id string, version uint32, chainDER [][]byte) (*Key, error) {
	if len(chainDER) == 0 || len(chainDER) > maxChainCerts {
		return nil, fmt.Errorf("keyvault: a chain holds 1 to %d certificates: %w", maxChainCerts, ErrInvalidArgument)
	}
	var leaf *x509.Certificate
	size := 0
	for i, der := range chainDER {
		size += len(der)
		if size > maxChainBytes {
			return nil, fmt.Errorf("keyvault: chain longer than %d bytes: %w", maxChainBytes, ErrInvalidArgument)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("keyvault: chain certificate %d: %v: %w", i, err, ErrInvalidArgument)
		}
		if i == 0 {
			leaf = cert
		}
	}
	chain := cloneChain(chainDER)
	key, _, err := v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
		if ver.state == StateDestroyed {
			return nil, fmt.Errorf("the version is destroyed: %w", ErrFailedPrecondition)
		}
		if !publicKeyEqual(leaf.PublicKey, ver.pub) {
			return nil, fmt.Errorf("the leaf certificate is not for this version's public key: %w", ErrInvalidArgument)
		}
		next := *ver
		next.chain = chain
		return &next, nil
	})
	return key, err
}

// changeVersion commits the state that change computes from the current
// state of a version, then publishes it, and returns the key and the store
// revision of the commit. If change returns the version unchanged, nothing
// is written and the revision is the view's, which holds the version in
// that state: a disable retried after its wait did not end (the caller's
// deadline, or etcd unreachable) waits for the replicas again, instead of
// returning at once while one that has not applied it still signs. A version leaving a software key behind
// has it erased from the store in the same write; one leaving a backend's
// key behind keeps its handle stored until the backend destroyed the key
// (finishDestroys).
func (v *Vault) changeVersion(ctx context.Context, id string, n uint32, change func(*versionState) (*versionState, error)) (*Key, int64, error) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	var k *keyState
	var ver, next *versionState
	err := v.retry(ctx, fmt.Sprintf("change key %q version %d", id, n), func() error {
		var err error
		if k, err = v.key(id); err != nil {
			return err
		}
		if ver, err = k.version(n); err != nil {
			return err
		}
		if next, err = change(ver); err != nil {
			return fmt.Errorf("keyvault: key %q version %d: %w", id, ver.number, err)
		}
		if next == ver {
			return nil
		}
		rec, err := v.sealVersion(id, next)
		if err != nil {
			return err
		}
		w := Write{Put: []Record{rec}}
		if ver.signer != nil && next.signer == nil && ver.backend == BackendSoftware {
			w.Erase = []RecordRef{{Kind: RecordMaterial, ID: id, Version: ver.number}}
		}
		if err := v.commit(ctx, w); err != nil {
			return fmt.Errorf("keyvault: store key %q version %d: %w", id, ver.number, err)
		}
		return nil
	})
	var pending []pendingDestroy
	destroying := ver != nil && next != nil && ver.signer != nil && next.signer == nil && ver.backend != BackendSoftware
	if destroying {
		pending = []pendingDestroy{{ref: RecordRef{Kind: RecordMaterial, ID: id, Version: ver.number}, backend: ver.backend}}
	}
	var committed *committedError
	if errors.As(err, &committed) {
		// The store holds the change; the view applies it when it follows
		// the store. The caller still waits for the replicas on a
		// revocation, and a destroyed version's key is destroyed in its
		// backend now, from a view that holds the destroy.
		if destroying {
			if rerr := v.refresh(ctx); rerr != nil {
				slog.WarnContext(ctx, "keyvault: the version is destroyed; its key is destroyed in the backend once a replica reads the store again",
					"key", id, "version", ver.number, "backend", ver.backend, "err", rerr)
			} else {
				v.finishDestroysLogged(ctx, pending)
			}
		}
		return nil, committed.rev, err
	}
	if err != nil {
		// Had the store committed a destroy whose answer was lost, the
		// replicas finish it (finishLeftDestroys, or at the next start).
		return nil, 0, err
	}
	if next == ver {
		return k.snapshot(), v.storeRev, nil
	}
	nk := k.withVersion(next)
	v.publish(nk)
	if destroying {
		v.finishDestroysLogged(ctx, pending)
	}
	return nk.snapshot(), v.storeRev, nil
}

// pendingDestroy is a destroyed version whose key its backend may still
// hold: the store keeps the version's material record, its handle, until
// the backend destroyed the key.
type pendingDestroy struct {
	ref     RecordRef // the material record
	backend string
}

// pendingDestroys returns the destroys the view holds pending. The caller
// holds writeMu.
func (v *Vault) pendingDestroys() []pendingDestroy {
	var out []pendingDestroy
	for ref := range v.entries {
		if ref.Kind != RecordMaterial {
			continue
		}
		k, err := v.key(ref.ID)
		if err != nil || ref.Version == 0 || ref.Version > uint32(len(k.versions)) {
			continue
		}
		if ver := k.versions[ref.Version-1]; ver.state == StateDestroyed {
			out = append(out, pendingDestroy{ref: ref, backend: ver.backend})
		}
	}
	return out
}

// finishDestroys destroys the keys of pending in their backends, then
// erases their handles from the store. Destroying first means that
// whatever stops it half-way (a lost answer of the store, a crash, a
// backend failing) leaves a handle stored, so that the destroy is
// finished later, by this replica or another: at its start (New) or once
// the destroy has been pending for a staleness bound (finishLeftDestroys).
// It returns what it could not finish for a backend or a record (the keys
// left in a backend, which keepUp counts as stuck), and err when the store
// failed it: the read, or the erasure of the handles (a commit that
// outlasts keepUp's tick, or one made whose history was not compacted),
// which leaves no key in a backend. The caller holds writeMu.
func (v *Vault) finishDestroys(ctx context.Context, pending []pendingDestroy) (failed failures, err error) {
	failed = make(failures)
	backends := make(map[RecordRef]KeyBackend, len(pending))
	for _, p := range pending {
		b, err := v.backend(p.backend)
		if err != nil {
			failed.fail(p.ref, err)
			continue
		}
		backends[p.ref] = b
	}
	if len(backends) == 0 {
		return failed, nil
	}
	records, rev, err := recordsOf(ctx, v.store, backends)
	if err != nil {
		return failed, err
	}
	for ref := range backends {
		if _, held := records[ref]; !held {
			if err := v.lostListed(ref, rev); err != nil {
				failed.fail(ref, err)
			}
		}
	}
	var destroyed []RecordRef
	for _, r := range records {
		ok, err := v.readListed(r, rev)
		if err != nil {
			failed.fail(r.RecordRef, err)
		}
		if !ok {
			continue
		}
		b := backends[r.RecordRef]
		handle, err := v.sealer.open(r)
		if err == nil {
			err = b.Destroy(ctx, handle)
			clear(handle)
		}
		if err != nil {
			failed.fail(r.RecordRef, fmt.Errorf("destroy in the %s backend: %w", b.Name(), err))
			continue
		}
		destroyed = append(destroyed, r.RecordRef)
	}
	if len(destroyed) > 0 {
		err = v.retry(ctx, "erase the handles of destroyed keys", func() error {
			// Only what is still pending in the view: another replica may
			// have erased it meanwhile.
			var w Write
			for _, p := range v.pendingDestroys() {
				if slices.Contains(destroyed, p.ref) {
					w.Erase = append(w.Erase, p.ref)
				}
			}
			if len(w.Erase) == 0 {
				return nil
			}
			return v.commit(ctx, w)
		})
		if err != nil {
			// A failure of the store, not of a backend: no key is left in
			// one. A handle still pending is erased at the next try, and
			// one erased (committedError) has its history compacted later.
			return failed, fmt.Errorf("keyvault: erase the handles of keys destroyed in their backends: %w", err)
		}
	}
	return failed, nil
}

// finishDestroysLogged is finishDestroys for callers that go on whatever
// happens: what it could not finish stays pending, and is retried.
func (v *Vault) finishDestroysLogged(ctx context.Context, pending []pendingDestroy) {
	failed, err := v.finishDestroys(ctx, pending)
	if err := errors.Join(failed.err(), err); err != nil {
		slog.ErrorContext(ctx, "keyvault: the destroy of a version is not finished yet; it is retried",
			"err", err)
	}
}

// finishLeftDestroys finishes the destroys pending for a staleness bound
// or longer: those whose replica lost the store's answer to the commit, or
// stopped, before it finished them itself. A destroy just committed is
// left to its replica, which finishes it at once. since holds when each
// pending destroy was first seen; the caller (finishLeftWork) owns it and
// stuck, and holds writeMu.
func (v *Vault) finishLeftDestroys(ctx context.Context, since map[RecordRef]time.Time, stuck stuckWork) {
	now := time.Now()
	var due []pendingDestroy
	backends := make(map[RecordRef]string)
	for _, p := range v.pendingDestroys() {
		backends[p.ref] = p.backend
		first, ok := since[p.ref]
		switch {
		case !ok:
			since[p.ref] = now
		case now.Sub(first) >= v.staleBound:
			due = append(due, p)
		}
	}
	maps.DeleteFunc(since, func(ref RecordRef, _ time.Time) bool { _, ok := backends[ref]; return !ok })
	if len(due) == 0 {
		return
	}
	failed, err := v.finishDestroys(ctx, due)
	if err != nil {
		slog.ErrorContext(ctx, "keyvault: the destroys of versions left to this replica are not finished yet; it retries", "err", err)
	}
	stuck.failed(ctx, v, now, "the key of a destroyed version", backends, failed)
}
