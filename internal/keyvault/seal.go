package keyvault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// kekSize is the size of the key-encryption key: AES-256.
const kekSize = 32

// checkPlaintext is what the check record holds: if it opens to this, the
// key-encryption key is right and every other record must open too.
// checkPlaintextV1 is the check record of a v1 store, written before
// manifests, whose records are sealed with v1 associated data; it is
// upgraded when it is opened.
var (
	checkPlaintext   = []byte("handshaked key vault check record v2")
	checkPlaintextV1 = []byte("handshaked key vault check record v1")
)

// The associated data of every record starts with its store format: v2
// records (with a manifest) never open as v1 ones, so no copy of a v1 store
// can be mixed with records written since its upgrade.
const (
	aadV2 = "handshaked/v2/"
	aadV1 = "handshaked/v1/"
)

var (
	checkRef    = RecordRef{Kind: RecordCheck}
	manifestRef = RecordRef{Kind: RecordManifest}
)

// sealer seals records with AES-256-GCM under the key-encryption key. Each
// seal draws a fresh random 96-bit nonce (cipher.NewGCMWithRandomNonce
// prepends it); records are written rarely, far below the 2^32 seals per
// key after which random nonces may collide.
//
// Copies of a sealer share its keys: a KEK rotation swaps them for every
// copy at once, while key operations and writes go on.
type sealer struct {
	keys   *atomic.Pointer[sealKeys]
	format string // aadV2, or aadV1 to open a v1 store
}

// sealKeys is the KEK records are sealed under and, during a KEK rotation,
// the one being retired, under which the records not yet rewrapped still
// open.
type sealKeys struct {
	kek      []byte // kept to seal it into a rotation record (kekrotation.go)
	aead     cipher.AEAD
	previous *sealKeys
}

func newSealKeys(kek []byte) (*sealKeys, error) {
	if len(kek) != kekSize {
		return nil, fmt.Errorf("keyvault: key-encryption key must be %d bytes, not %d: %w", kekSize, len(kek), ErrInvalidArgument)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("keyvault: %w", err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("keyvault: %w", err)
	}
	return &sealKeys{kek: bytes.Clone(kek), aead: aead}, nil
}

func newSealer(kek []byte) (sealer, error) {
	k, err := newSealKeys(kek)
	if err != nil {
		return sealer{}, err
	}
	s := sealer{keys: new(atomic.Pointer[sealKeys]), format: aadV2}
	s.keys.Store(k)
	return s, nil
}

// v1 returns the sealer that opens the records of a v1 store.
func (s sealer) v1() sealer { return sealer{keys: s.keys, format: aadV1} }

// associatedData binds a record to its store format, kind, key id and
// version, so a record copied anywhere else in the store fails to open.
func associatedData(prefix string, ref RecordRef) []byte {
	n := strconv.FormatUint(uint64(ref.Version), 10)
	switch ref.Kind {
	case RecordCheck:
		return []byte(prefix + "kek-check")
	case RecordManifest:
		return []byte(prefix + "manifest")
	case RecordKey:
		return []byte(prefix + "key/" + ref.ID)
	case RecordVersion:
		return []byte(prefix + "version/" + ref.ID + "/" + n)
	case RecordMaterial:
		return []byte(prefix + "material/" + ref.ID + "/" + n)
	case RecordTicketKey:
		return []byte(prefix + "ticket-key/" + n)
	case RecordKEKRotation:
		return []byte(prefix + "kek-rotation")
	}
	// Every other kind, those of later releases included: a replica that
	// does not know a kind still opens and reseals its records under a KEK
	// rotation (StoreFormat), so a new kind must use this form too.
	return []byte(prefix + "kind-" + strconv.FormatUint(uint64(ref.Kind), 10) + "/" + ref.ID + "/" + n)
}

func (s sealer) seal(ref RecordRef, plaintext []byte) Record {
	aead := s.keys.Load().aead
	return Record{RecordRef: ref, Sealed: aead.Seal(nil, nil, plaintext, associatedData(s.format, ref))}
}

// open returns the plaintext of r, sealed under the KEK or, during a KEK
// rotation, under the one being retired; the caller clears it if it is
// secret.
func (s sealer) open(r Record) ([]byte, error) {
	k := s.keys.Load()
	plaintext, err := openWith(k, s.format, r)
	if err != nil && k.previous != nil {
		plaintext, err = openWith(k.previous, s.format, r)
	}
	return plaintext, err
}

func openWith(k *sealKeys, format string, r Record) ([]byte, error) {
	plaintext, err := k.aead.Open(nil, nil, r.Sealed, associatedData(format, r.RecordRef))
	if err != nil {
		return nil, fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrCorrupted)
	}
	return plaintext, nil
}

// keyRecord is the plaintext of a RecordKey.
type keyRecord struct {
	Labels     map[string]string `json:"labels,omitempty"`
	CreateTime time.Time         `json:"create_time"`
	// Versions is the number of versions, so that a dropped newest version
	// record is detected like any other missing record.
	Versions uint32 `json:"versions"`
}

// versionRecord is the plaintext of a RecordVersion. The private key, or
// its backend's handle, is in the RecordMaterial.
type versionRecord struct {
	State      string    `json:"state"`
	Algorithm  string    `json:"algorithm"`
	Imported   bool      `json:"imported,omitempty"`
	CreateTime time.Time `json:"create_time"`
	PublicKey  []byte    `json:"public_key"` // PKIX DER
	Chain      [][]byte  `json:"chain,omitempty"`
	// Backend names the KeyBackend whose handle the RecordMaterial holds:
	// empty for the software backend (and every record written before
	// backends), whose handle is the private key as PKCS #8 DER.
	Backend string `json:"backend,omitempty"`
}

// manifestRecord is the plaintext of the RecordManifest: the store's
// revision, counted up by every commit, and either an entry for every
// other record (a flat manifest, store format 1: Format is 0) or one for
// every bucket (a bucketed one, format 2: Format is formatBuckets, and
// Records holds bucketedSentinel only).
type manifestRecord struct {
	Format   int             `json:"format,omitempty"`
	Revision uint64          `json:"revision"`
	Records  []manifestEntry `json:"records"`
	Buckets  []bucketEntry   `json:"buckets,omitempty"`
}

// bucketEntry binds one bucket of a bucketed manifest to the revision that
// wrote it and to the SHA-256 of its sealed bytes.
type bucketEntry struct {
	Bucket   uint32 `json:"bucket"`
	Revision uint64 `json:"revision"`
	SHA256   []byte `json:"sha256"`
}

// bucketRecord is the plaintext of a RecordManifestBucket: an entry for
// every record of the bucket, as a flat manifest has.
type bucketRecord struct {
	Records []manifestEntry `json:"records"`
}

// manifestBuckets is how many buckets a bucketed manifest has. A commit
// carries the manifest (an entry per bucket, about 90 bytes each) and the
// buckets it changes (a store's entries over manifestBuckets, about 110
// bytes each): 64 keeps both small up to a hundred thousand keys, and a
// conversion, which writes every bucket in one commit, within etcd's
// default --max-txn-ops (128).
const manifestBuckets = 64

// bucketOf returns the bucket of ref: by FNV-1a of its key id, so that a
// key's records share one bucket and a change of a key rewrites one, or
// of its kind when it has no id (the check record, ticket keys). Every
// release of format 2 or later assigns so: load refuses an entry in
// another bucket.
func bucketOf(ref RecordRef) uint32 {
	h := uint32(2166136261)
	if ref.ID == "" {
		h = (h ^ uint32(ref.Kind)) * 16777619
	}
	for i := 0; i < len(ref.ID); i++ {
		h = (h ^ uint32(ref.ID[i])) * 16777619
	}
	return (h ^ h>>16) % manifestBuckets
}

func bucketRef(b uint32) RecordRef { return RecordRef{Kind: RecordManifestBucket, Version: b} }

// bucketedSentinel is the one entry of Records in a bucketed manifest. A
// release of store format 1 reads Records as every record of the store,
// and refuses an entry without a digest before it checks any record, with
// an error naming the entry: this one's id says why (StoreFormat).
var bucketedSentinel = manifestEntry{
	Kind: RecordManifestBucket,
	ID: "this store's manifest is bucketed (store format 2), which this release of handshaked does not read: " +
		"run a release that reads store format 2 or later",
}

// manifestEntry binds one record to the revision that wrote it and to the
// SHA-256 of its sealed bytes.
type manifestEntry struct {
	Kind     RecordKind `json:"kind"`
	ID       string     `json:"id,omitempty"`
	Version  uint32     `json:"version,omitempty"`
	Revision uint64     `json:"revision"`
	SHA256   []byte     `json:"sha256"`
	// Skippable says that a replica that does not know the record's kind
	// may serve without it (StoreFormat): set by the release that writes
	// the kind, kept by every replica that rewrites the manifest.
	Skippable bool `json:"skippable,omitempty"`
}

func (s sealer) sealJSON(ref RecordRef, v any) (Record, error) {
	plaintext, err := json.Marshal(v)
	if err != nil {
		return Record{}, fmt.Errorf("keyvault: encode %v: %w", ref, err)
	}
	return s.seal(ref, plaintext), nil
}

func (s sealer) openJSON(r Record, v any) error {
	plaintext, err := s.open(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(plaintext, v); err != nil {
		return fmt.Errorf("keyvault: %v: undecodable: %w", r.RecordRef, ErrCorrupted)
	}
	return nil
}
