package keyvault

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
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
// generated in the vault.
func (v *Vault) Create(ctx context.Context, id string, alg Algorithm, labels map[string]string) (*Key, error) {
	if err := v.checkNew(id, labels); err != nil {
		return nil, err
	}
	if !alg.valid() {
		return nil, fmt.Errorf("keyvault: algorithm %v: %w", alg, ErrInvalidArgument)
	}
	signer, err := generateKey(alg)
	if err != nil {
		return nil, err
	}
	return v.add(ctx, id, labels, signer, alg, false)
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
	return v.add(ctx, id, labels, signer, alg, true)
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

// add stores a new key whose version 1 holds signer.
func (v *Vault) add(ctx context.Context, id string, labels map[string]string, signer crypto.Signer, alg Algorithm, imported bool) (*Key, error) {
	now := time.Now().UTC()
	ver, material, err := newVersion(1, signer, alg, imported, now)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	k := &keyState{id: id, createTime: now, versions: []*versionState{ver}}
	if len(labels) > 0 {
		k.labels = maps.Clone(labels)
	}
	// Sealed holding writeMu, so under the KEK the commit is made under
	// even while a KEK rotation begins.
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if err := v.absent(id); err != nil {
		return nil, err
	}
	keyRec, err := v.sealKey(k)
	if err != nil {
		return nil, err
	}
	verRec, err := v.sealVersion(id, ver)
	if err != nil {
		return nil, err
	}
	w := Write{Create: []Record{
		keyRec, verRec,
		v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: id, Version: 1}, material),
	}}
	if err := v.commit(ctx, w); err != nil {
		return nil, fmt.Errorf("keyvault: store key %q: %w", id, err)
	}
	v.publish(k)
	return k.snapshot(), nil
}

// Rotate adds a version to key id holding a new private key of the key's
// algorithm, generated in the vault. It becomes the primary version; the
// earlier ones keep working until disabled.
func (v *Vault) Rotate(ctx context.Context, id string) (*Key, error) {
	k, err := v.key(id)
	if err != nil {
		return nil, err
	}
	alg := k.versions[0].alg
	// Generating an RSA key takes long; do it before taking writeMu.
	signer, err := generateKey(alg)
	if err != nil {
		return nil, err
	}

	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if k, err = v.key(id); err != nil {
		return nil, err
	}
	ver, material, err := newVersion(uint32(len(k.versions))+1, signer, alg, false, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	defer clear(material)
	next := k.withVersion(ver)
	keyRec, err := v.sealKey(next)
	if err != nil {
		return nil, err
	}
	verRec, err := v.sealVersion(id, ver)
	if err != nil {
		return nil, err
	}
	w := Write{
		Put: []Record{keyRec},
		Create: []Record{
			verRec,
			v.sealer.seal(RecordRef{Kind: RecordMaterial, ID: id, Version: ver.number}, material),
		},
	}
	if err := v.commit(ctx, w); err != nil {
		return nil, fmt.Errorf("keyvault: store key %q version %d: %w", id, ver.number, err)
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
	return v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
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
}

// DestroyVersion destroys a disabled version (0: the primary): its private
// key is erased from the store and dropped from memory; its metadata stays,
// in state StateDestroyed.
func (v *Vault) DestroyVersion(ctx context.Context, id string, version uint32) (*Key, error) {
	return v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
		if ver.state != StateDisabled {
			return nil, fmt.Errorf("the version is %v; only a disabled version can be destroyed: %w", ver.state, ErrFailedPrecondition)
		}
		next := *ver
		next.state = StateDestroyed
		next.signer = nil
		return &next, nil
	})
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
	return v.changeVersion(ctx, id, version, func(ver *versionState) (*versionState, error) {
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
}

// changeVersion commits the state that change computes from the current
// state of a version, then publishes it. If change returns the version unchanged,
// nothing is written. A version leaving its private key behind has the key
// erased from the store in the same write.
func (v *Vault) changeVersion(ctx context.Context, id string, n uint32, change func(*versionState) (*versionState, error)) (*Key, error) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	k, err := v.key(id)
	if err != nil {
		return nil, err
	}
	ver, err := k.version(n)
	if err != nil {
		return nil, err
	}
	next, err := change(ver)
	if err != nil {
		return nil, fmt.Errorf("keyvault: key %q version %d: %w", id, ver.number, err)
	}
	if next == ver {
		return k.snapshot(), nil
	}
	rec, err := v.sealVersion(id, next)
	if err != nil {
		return nil, err
	}
	w := Write{Put: []Record{rec}}
	if ver.signer != nil && next.signer == nil {
		w.Erase = []RecordRef{{Kind: RecordMaterial, ID: id, Version: ver.number}}
	}
	if err := v.commit(ctx, w); err != nil {
		return nil, fmt.Errorf("keyvault: store key %q version %d: %w", id, ver.number, err)
	}
	nk := k.withVersion(next)
	v.publish(nk)
	return nk.snapshot(), nil
}
