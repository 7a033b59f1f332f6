package keyvault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
)

// A snapshot is the store's sealed records as they are, framed and
// authenticated:
//
//	magic    "handshaked snapshot v1\n"
//	kek id   8 bytes: KEKID of the KEK the records are sealed under
//	count    uint32, big-endian: the number of records
//	records  count times: kind (1 byte), version (uint32), id length
//	         (1 byte), id, sealed length (uint32), sealed bytes
//	tag      HMAC-SHA256 of all the above, under a key derived from the KEK
//
// Without the KEK it shows only the framing: the KEK id, and each record's
// kind, key id, version number and size. Every record's content (labels,
// algorithms, states, public keys, chains, private keys, any other kind's
// data) is sealed under the KEK as in the store, and the manifest among the
// records binds them together, so restoring refuses a snapshot with a
// record changed, added, dropped or taken from another snapshot.
const snapshotMagic = "handshaked snapshot v1\n"

const (
	snapshotHeaderSize = len(snapshotMagic) + 8 + 4
	// maxSnapshotBytes bounds what Restore reads: a store of a hundred
	// thousand keys.
	maxSnapshotBytes = 256 << 20
	maxSealedBytes   = 4 << 20
)

// ErrSnapshotRefused is wrapped by every error of Restore that refuses the
// snapshot itself (not a handshaked snapshot, made under another KEK,
// altered or truncated), beside ErrInvalidArgument or
// ErrFailedPrecondition.
var ErrSnapshotRefused = errors.New("snapshot refused")

// SnapshotInfo describes a snapshot that Backup wrote or Restore loaded.
type SnapshotInfo struct {
	KEKID   string // the KEK its records are sealed under
	Records int    // records, the manifest included
	Keys    int
	Bytes   int64
}

// Backup writes a snapshot of the store to w: one consistent state of it,
// taken while writes wait for no longer than the store takes to read its
// records, then written out while the vault serves on. It is useless
// without the KEK (see the format above). A snapshot taken during a KEK
// rotation is sealed under, and restores with, the new KEK.
func (v *Vault) Backup(ctx context.Context, w io.Writer) (SnapshotInfo, error) {
	records, keys, err := v.consistentRecords(ctx)
	if err != nil {
		return SnapshotInfo{}, err
	}
	info := SnapshotInfo{KEKID: KEKID(keys.kek), Records: len(records)}
	bw := bufio.NewWriter(w)
	mac := hmac.New(sha256.New, snapshotKey(keys.kek))
	out := &countingWriter{w: io.MultiWriter(bw, mac)}
	out.Write([]byte(snapshotMagic))
	out.Write(kekIDBytes(keys.kek))
	out.Write(binary.BigEndian.AppendUint32(nil, uint32(len(records))))
	for _, r := range records {
		if r.Kind == RecordKey {
			info.Keys++
		}
		b := binary.BigEndian.AppendUint32([]byte{byte(r.Kind)}, r.Version)
		b = append(append(b, byte(len(r.ID))), r.ID...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Sealed)))
		out.Write(b)
		out.Write(r.Sealed)
	}
	out.w = bw
	out.Write(mac.Sum(nil))
	if out.err == nil {
		out.err = bw.Flush()
	}
	info.Bytes = out.n
	if out.err != nil {
		return SnapshotInfo{}, fmt.Errorf("keyvault: write the snapshot: %w", out.err)
	}
	return info, nil
}

// consistentRecords reads every record of the store, holding writeMu so
// that they are exactly the ones the vault's manifest lists, and returns
// them in order with the keys they are sealed under.
func (v *Vault) consistentRecords(ctx context.Context) ([]Record, *sealKeys, error) {
	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if v.isClosed() {
		return nil, nil, ErrClosed
	}
	var records []Record
	rev, err := v.store.Scan(ctx, func(r Record) error {
		records = append(records, r)
		return nil
	})
	if err == nil && rev != v.storeRev {
		// Another replica changed the store: these records are its state
		// now, which the view takes, and the state it read (whose bytes
		// checkManifest trusts as verified, verifiedBefore).
		if err = v.adopt(ctx, records, rev); err == nil && v.read.records != nil {
			v.read = newStoreState(rev, records)
		}
	}
	for _, r := range records {
		if err != nil {
			break
		}
		if r.Kind == RecordManifest {
			continue
		}
		err = v.checkListed(r)
	}
	if listed := len(v.entries) + len(v.buckets) + 1; err == nil && len(records) != listed {
		err = fmt.Errorf("keyvault: the store holds %d records, its manifest lists %d: %w", len(records), listed, ErrCorrupted)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("keyvault: backup: %w", err)
	}
	slices.SortFunc(records, func(a, b Record) int { return compareRefs(a.RecordRef, b.RecordRef) })
	return records, v.sealer.keys.Load(), nil
}

// Restore loads a snapshot that Backup wrote into this vault, which must be
// fresh: holding no key (what else it holds, its check record or ticket
// keys, is replaced). It runs under the KEK the snapshot was made under.
// The whole snapshot is read and checked before anything changes: its
// authentication tag, then every record, as a vault opens them. On success
// the vault serves the snapshot's keys, versions, states and chains, and
// its store holds exactly the snapshot's records.
func (v *Vault) Restore(ctx context.Context, r io.Reader) (SnapshotInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxSnapshotBytes+1))
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("keyvault: read the snapshot: %w", err)
	}
	if len(data) > maxSnapshotBytes {
		return SnapshotInfo{}, fmt.Errorf("keyvault: the snapshot is larger than %d bytes: %w: %w", maxSnapshotBytes, ErrSnapshotRefused, ErrInvalidArgument)
	}
	keys := v.sealer.keys.Load()
	records, err := openSnapshot(data, keys.kek)
	if err != nil {
		return SnapshotInfo{}, err
	}
	// The snapshot opened as a vault, with this vault's key backends: what
	// load accepts from a store.
	var opts []Option
	for _, b := range v.backends {
		opts = append(opts, WithBackend(b))
	}
	restored, err := newVault(ctx, &snapshotStore{records: records}, keys.kek, false, opts)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("keyvault: the snapshot's records do not open as a vault: %w: %w", err, ErrInvalidArgument)
	}
	info := SnapshotInfo{KEKID: KEKID(keys.kek), Records: len(records), Keys: len(restored.keys), Bytes: int64(len(data))}

	v.writeMu.Lock()
	defer v.writeMu.Unlock()
	if v.isClosed() {
		return SnapshotInfo{}, ErrClosed
	}
	err = v.retry(ctx, "restore", func() error {
		// Another replica of a shared store may have changed it
		// meanwhile: the instance must still be fresh.
		for ref := range v.entries {
			if ref.Kind == RecordKey {
				return fmt.Errorf("keyvault: restore goes into a fresh instance, and this one holds keys: %w", ErrFailedPrecondition)
			}
		}
		if v.sealer.keys.Load().previous != nil {
			return fmt.Errorf("keyvault: restore goes into a fresh instance, and this one is rotating its KEK: %w", ErrFailedPrecondition)
		}
		// The instance's own intents stay: they name attempts of this
		// instance whose keys, if their versions never land, are still to
		// be destroyed (intent.go).
		var w Write
		kept := make(map[RecordRef]recordEntry)
		for ref, e := range v.entries {
			if ref.Kind == RecordKeyIntent {
				kept[ref] = e
			} else {
				w.Erase = append(w.Erase, ref)
			}
		}
		// Not the snapshot's intents: they name attempts of the instance
		// the snapshot was taken of, whose keys this one must not destroy.
		// Nor its manifest and buckets: the commit writes this store's, in
		// the format this store is in, whichever the snapshot's was.
		for _, r := range records {
			if r.Kind != RecordManifest && r.Kind != RecordManifestBucket && r.Kind != RecordKeyIntent {
				w.Put = append(w.Put, r)
			}
		}
		// The new manifest carries on from the snapshot's, listing its records.
		prevEntries, prevRevision, prevKeys := v.entries, v.revision, v.sealer.keys.Load()
		v.entries, v.revision = maps.Clone(restored.entries), max(v.revision, restored.revision)
		maps.DeleteFunc(v.entries, func(ref RecordRef, _ recordEntry) bool { return ref.Kind == RecordKeyIntent })
		v.sealer.keys.Store(restored.sealer.keys.Load()) // the snapshot may be mid-rotation
		v.stale = maps.Clone(restored.stale)
		maps.DeleteFunc(v.stale, func(ref RecordRef, _ bool) bool { return ref.Kind == RecordKeyIntent })
		maps.Copy(v.entries, kept)
		if restoredKeys := v.sealer.keys.Load(); restoredKeys.previous != nil && KEKID(restoredKeys.kek) != KEKID(prevKeys.kek) {
			// A snapshot taken mid-rotation: the kept intents are sealed
			// under the KEK it retires, as the instance's records were.
			for ref := range kept {
				v.stale[ref] = true
			}
		}
		if err := v.commit(ctx, w); err != nil {
			v.entries, v.revision, v.stale = prevEntries, prevRevision, nil
			v.sealer.keys.Store(prevKeys)
			if tooLarge := (*CommitTooLargeError)(nil); errors.As(err, &tooLarge) {
				return restoreTooLarge(len(records), tooLarge)
			}
			return fmt.Errorf("keyvault: restore: %w", err)
		}
		return nil
	})
	if err != nil {
		return SnapshotInfo{}, err
	}
	v.adoptLoaded(restored)
	return info, nil
}

// restoreTooLarge is the error of a restore of n records whose commit the
// store refuses as too large. Not the store's own advice, to destroy
// versions: the instance restored into holds no key, and the snapshot goes
// in whole.
func restoreTooLarge(n int, tooLarge *CommitTooLargeError) error {
	return fmt.Errorf("keyvault: restore: a restore writes the whole snapshot, %d records, in one commit, and %w; "+
		"destroying versions does not make a restore smaller: raise --max-request-bytes on every etcd member above %d bytes, "+
		"start every replica with the same -etcd-max-request-bytes, and restore again: %w", n, tooLarge, tooLarge.Bytes, ErrFailedPrecondition)
}

// adoptLoaded makes the state that load gave from serve in v: the records
// committed to v's store are from's. It tells the subscribers which keys
// changed and returns the ticket keys v no longer holds. The caller holds
// writeMu and has set the manifest state and the sealer's keys.
func (v *Vault) adoptLoaded(from *Vault) []*ticketKey {
	v.mu.Lock()
	var changed []string
	for id, k := range from.keys {
		if v.keys[id] != k {
			changed = append(changed, id)
		}
	}
	var dropped []*ticketKey
	for _, k := range v.tickets {
		if !slices.Contains(from.tickets, k) {
			dropped = append(dropped, k)
		}
	}
	v.keys, v.ids, v.tickets = from.keys, from.ids, from.tickets
	v.mu.Unlock()
	slices.Sort(changed)
	v.subs.notify(changed)
	return dropped
}

// openSnapshot checks a snapshot's KEK id and authentication tag under kek,
// then returns its records.
func openSnapshot(data, kek []byte) ([]Record, error) {
	refused := func(format string, args ...any) error {
		return fmt.Errorf("keyvault: "+format+": %w: %w", append(args, ErrSnapshotRefused, ErrInvalidArgument)...)
	}
	if len(data) < snapshotHeaderSize || !bytes.HasPrefix(data, []byte(snapshotMagic)) {
		return nil, refused("not a handshaked snapshot (it does not start with %q)", snapshotMagic[:len(snapshotMagic)-1])
	}
	want := kekIDBytes(kek)
	if got := data[len(snapshotMagic) : len(snapshotMagic)+8]; !bytes.Equal(got, want) {
		return nil, fmt.Errorf("keyvault: the snapshot was made under KEK %x, and this instance runs under KEK %x: start a fresh instance with the snapshot's KEK: %w: %w",
			got, want, ErrSnapshotRefused, ErrFailedPrecondition)
	}
	if len(data) < snapshotHeaderSize+sha256.Size {
		return nil, refused("the snapshot is truncated")
	}
	body, tag := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	mac := hmac.New(sha256.New, snapshotKey(kek))
	mac.Write(body)
	if !hmac.Equal(mac.Sum(nil), tag) {
		return nil, refused("the snapshot was altered or truncated: its authentication tag does not verify under this instance's KEK")
	}
	records, err := parseSnapshot(body)
	if err != nil {
		return nil, refused("%v", err)
	}
	return records, nil
}

// parseSnapshot reads the records of a snapshot's body (the tag cut off).
func parseSnapshot(body []byte) ([]Record, error) {
	if len(body) < snapshotHeaderSize || !bytes.HasPrefix(body, []byte(snapshotMagic)) {
		return nil, errors.New("not a handshaked snapshot")
	}
	count := binary.BigEndian.Uint32(body[len(snapshotMagic)+8:])
	rest := body[snapshotHeaderSize:]
	// Each record takes 10 bytes at least: a count past that is a lie, and
	// must not size an allocation.
	if uint64(count)*10 > uint64(len(rest)) {
		return nil, fmt.Errorf("the snapshot says it holds %d records, more than its %d bytes can", count, len(rest))
	}
	records := make([]Record, 0, count)
	seen := make(map[RecordRef]bool, count)
	for i := range count {
		if len(rest) < 6 {
			return nil, fmt.Errorf("record %d is truncated", i)
		}
		kind, version, idLen := RecordKind(rest[0]), binary.BigEndian.Uint32(rest[1:5]), int(rest[5])
		rest = rest[6:]
		if len(rest) < idLen+4 {
			return nil, fmt.Errorf("record %d is truncated", i)
		}
		ref := RecordRef{Kind: kind, ID: string(rest[:idLen]), Version: version}
		n := binary.BigEndian.Uint32(rest[idLen:])
		rest = rest[idLen+4:]
		if n > maxSealedBytes || uint64(n) > uint64(len(rest)) {
			return nil, fmt.Errorf("%v is truncated", ref)
		}
		if seen[ref] {
			return nil, fmt.Errorf("%v is in the snapshot twice", ref)
		}
		seen[ref] = true
		records = append(records, Record{RecordRef: ref, Sealed: bytes.Clone(rest[:n])})
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the last record", len(rest))
	}
	return records, nil
}

// kekIDBytes is KEKID before its hex encoding.
func kekIDBytes(kek []byte) []byte {
	id, err := hkdf.Key(sha256.New, kek, nil, "handshaked key-encryption key id", 8)
	if err != nil {
		panic("keyvault: HKDF: " + err.Error()) // 8 bytes of SHA-256 HKDF cannot fail
	}
	return id
}

// snapshotKey is the key of a snapshot's authentication tag, derived from
// the KEK and for nothing else.
func snapshotKey(kek []byte) []byte {
	k, err := hkdf.Key(sha256.New, kek, nil, "handshaked snapshot authentication", sha256.Size)
	if err != nil {
		panic("keyvault: HKDF: " + err.Error()) // 32 bytes of SHA-256 HKDF cannot fail
	}
	return k
}

// snapshotStore is a snapshot's records as a read-only Store, for Restore
// to open them as a vault before it commits anything.
type snapshotStore struct{ records []Record }

// Scan implements Store. A snapshot has no store revisions: every one is 0.
func (s *snapshotStore) Scan(ctx context.Context, fn func(Record) error) (int64, error) {
	for _, r := range s.records {
		if err := fn(r); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

func (s *snapshotStore) Commit(context.Context, Write) (int64, error) {
	return 0, errors.New("keyvault: a snapshot is read-only")
}

func (s *snapshotStore) Close() error { return nil }

// countingWriter counts what it writes and keeps the first error, so a
// long sequence of writes is checked once.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}
