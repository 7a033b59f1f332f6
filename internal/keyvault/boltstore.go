package keyvault

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The bolt file holds the check record, the manifest, the KEK rotation
// record (during a rotation) and the ticket keys ("t"+id, id as 4 bytes
// big-endian) and the records of every other kind, those of later releases
// ("x", kind, version as 4 bytes big-endian, id; see StoreFormat) in
// bucket "vault", and one nested
// bucket per key in bucket "keys", whose entries are "key", "v"+version and
// "m"+version (private key), version as 4 bytes big-endian. Bucket
// "revisions" holds the store revision (entry "\x00") and the revision of
// the commit that last wrote each record (entry kind, version as 4 bytes
// big-endian, id), 8 bytes big-endian each. A file written before revisions
// has none: its state is revision 1, and so is each of its records.
var (
	bucketVault     = []byte("vault")
	bucketKeys      = []byte("keys")
	bucketRevisions = []byte("revisions")
	entryStoreRev   = []byte{0}
	entryCheck      = []byte("kek-check")
	entryManifest   = []byte("manifest")
	entryRotation   = []byte("kek-rotation")
	entryKey        = []byte("key")
)

const (
	prefixVersion   = 'v'
	prefixMaterial  = 'm'
	prefixTicketKey = 't'
	prefixForeign   = 'x'
)

// boltOptions never sets NoSync: every commit is fsynced before it returns.
// The timeout makes a second process opening the same file fail instead of
// waiting on the file lock forever.
var boltOptions = bolt.Options{Timeout: time.Second}

// fileSystem is how BoltStore reaches the file system: the files bbolt
// opens (and creates), the renames that commit a rewrite, the directory
// syncs that make a new file or a rename durable and the look-ups of which
// file the store's path names. Tests put a file system there that loses
// what was not made durable, or fails.
type fileSystem interface {
	OpenFile(name string, flag int, perm os.FileMode) (*os.File, error)
	Rename(oldpath, newpath string) error
	SyncDir(dir string) error
	Stat(name string) (os.FileInfo, error)
}

// osFS is the operating system's file system.
type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (osFS) Stat(name string) (os.FileInfo, error) { return os.Stat(name) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// BoltStore is the embedded Store: one bbolt file, readable and writable by
// its owner only.
type BoltStore struct {
	path string
	fs   fileSystem

	// mu is held for writing while the store changes its file or what it
	// knows of it (a commit that erases, settle), for reading otherwise.
	mu sync.RWMutex
	// boltFile is the store's file. The store commits into it only while
	// its path names it (current): a file no name reaches is one no later
	// start reads, and a commit into it is lost at the next.
	boltFile
	// renamed is the new file of a rewrite whose rename failed while the
	// store could not tell which file its path named: the rename may have
	// landed, unlinking file. It is kept open until the next commit tells
	// (settle).
	renamed *boltFile
	// unsynced says that the rename that made the path name file is not
	// known durable (its directory's sync failed, or was not made): a
	// crash could bring the old file back, and with it lose what is
	// committed into this one, so the directory is synced first.
	unsynced bool
}

// boltFile is an open bolt file: bbolt's, the descriptor bbolt opened
// (which bbolt closes) and the file's identity (os.SameFile).
type boltFile struct {
	db   *bolt.DB
	file *os.File
	info os.FileInfo
}

// OpenBolt opens the bolt store at path, creating it with mode 0600 if it
// does not exist. A damaged file (truncated, or not a bolt file) fails with
// ErrCorrupted; a file another process holds open fails saying so.
func OpenBolt(path string) (*BoltStore, error) {
	return openBolt(path, osFS{})
}

func openBolt(path string, fsys fileSystem) (*BoltStore, error) {
	_, statErr := os.Stat(path)
	bf, err := openBoltDB(path, fsys)
	if err != nil {
		return nil, fmt.Errorf("keyvault: open bolt store %s: %w", path, err)
	}
	// Holding the file lock now, remove what a rewrite interrupted by a
	// crash left behind: the file at path is still the committed one.
	err = removeIfExists(rewritePath(path))
	if err == nil && errors.Is(statErr, fs.ErrNotExist) {
		// The new file's directory entry must be durable too, or the first
		// acknowledged write could vanish with it.
		err = fsys.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("keyvault: open bolt store %s: %w", path, err), bf.db.Close())
	}
	return &BoltStore{path: path, fs: fsys, boltFile: bf}, nil
}

// openBoltDB opens a bolt file and checks that it holds every page its last
// transaction uses. bbolt trusts the file: a truncated one makes it panic,
// or fault on a page of the memory map past the end of the file, at open or
// later at any read. So faults are panics here and a panic is an error. The
// file descriptor bbolt opened is closed again, but bbolt leaves the file
// mapped, which keeps its lock until the process exits: handshaked exits on
// this error anyway.
func openBoltDB(path string, fsys fileSystem) (bf boltFile, err error) {
	var file *os.File
	opts := boltOptions
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := fsys.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if file != nil {
				file.Close()
			}
			bf, err = boltFile{}, fmt.Errorf("the file is damaged (truncated or not a bolt file): %v: %w", r, ErrCorrupted)
		}
	}()
	db, err := bolt.Open(path, 0o600, &opts)
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		// bbolt says only "timeout": say whose lock it waited for.
		return boltFile{}, fmt.Errorf("another process has it open%s and holds its lock; a bolt store serves one handshaked: stop that one, "+
			"or run several replicas on a shared store (etcd)", lockHolder(path))
	case err == nil:
	case errors.As(err, new(*fs.PathError)), errors.As(err, new(syscall.Errno)):
		return boltFile{}, err // the file system's error, not the file's content
	default:
		return boltFile{}, fmt.Errorf("the file is damaged (truncated or not a bolt file): %w: %w", err, ErrCorrupted)
	}
	var need int64
	if err := db.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil }); err != nil {
		return boltFile{}, errors.Join(err, db.Close())
	}
	fi, err := file.Stat()
	if err == nil && fi.Size() < need {
		err = fmt.Errorf("the file is damaged (truncated or not a bolt file): %d bytes, its last commit needs %d: %w", fi.Size(), need, ErrCorrupted)
	}
	if err != nil {
		return boltFile{}, errors.Join(err, db.Close())
	}
	return boltFile{db: db, file: file, info: fi}, nil
}

// Close closes the file. Closing twice is not an error.
func (s *BoltStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	if s.renamed != nil {
		// The next start tells which file the path names, and removes
		// the other if it is the rewrite's.
		err = errors.Join(err, s.renamed.db.Close())
		s.renamed = nil
	}
	s.db = nil
	if err != nil {
		return fmt.Errorf("keyvault: close bolt store: %w", err)
	}
	return nil
}

// Scan implements Store.
func (s *BoltStore) Scan(ctx context.Context, fn func(Record) error) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return 0, ErrClosed
	}
	var rev int64
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = storeRevision(tx)
		return forEachRecord(tx, func(r Record) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			// Values live in the memory map only while the transaction does.
			r.Sealed = append([]byte(nil), r.Sealed...)
			r.Revision = recordRevision(tx, r.RecordRef)
			return fn(r)
		})
	})
	if err != nil {
		return 0, err
	}
	return rev, nil
}

// Commit implements Store in one bbolt transaction, fsynced before it
// returns.
func (s *BoltStore) Commit(ctx context.Context, w Write) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if len(w.Erase) > 0 {
		return s.rewrite(w)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for s.db != nil && (s.renamed != nil || s.unsynced) {
		s.mu.RUnlock()
		s.mu.Lock()
		err := s.settle()
		s.mu.Unlock()
		s.mu.RLock()
		if err != nil {
			return 0, err
		}
	}
	if s.db == nil {
		return 0, ErrClosed
	}
	if err := s.current(); err != nil {
		return 0, err
	}
	var rev int64
	var written bool
	var txid, pageSize int
	err := s.db.Update(func(tx *bolt.Tx) (err error) {
		txid, pageSize = tx.ID(), tx.DB().Info().PageSize
		if err := checkIf(tx, w.If); err != nil {
			return err
		}
		rev, err = applyWrite(tx, w)
		written = err == nil
		return err
	})
	switch {
	case err == nil:
		return rev, nil
	case !written:
		return 0, err // the write's own error (a conflict, say): the file had no part in it
	}
	// bbolt writes the commit's pages and syncs them, then its meta page,
	// which names the transaction: a commit failed before that (no room
	// for its pages, say) did not land, and cannot later. That is told
	// from the file, not from the error, which does not say how far the
	// commit went. Any other failure (an I/O error once the meta page was
	// written, say) may have landed: a restart reads the meta page.
	if last, ok := lastCommitted(s.file, pageSize); ok && last == uint64(txid)-1 {
		return 0, &notAppliedError{s.unwritable(err)}
	}
	return 0, s.inDoubt(err)
}

// lastCommitted returns the transaction id of the last commit f names,
// read from its two meta pages as bbolt v1.5.0 lays them out
// (internal/common/page.go, meta.go) and chooses between them (DB.meta):
// pages 0 and 1, pageSize bytes each, hold a page header of 16 bytes and
// then the meta: magic, version, page size and flags (4 bytes each), the
// root bucket (16), the freelist's page, the high water mark, the txid
// and the checksum (8 each), in the machine's byte order. A meta page
// counts if its magic, version and checksum (FNV-1a, 64 bits, of the meta
// before it) are right; the last commit is the valid one of the higher
// txid. ok is false if the pages cannot be read or neither counts.
func lastCommitted(f *os.File, pageSize int) (txid uint64, ok bool) {
	const (
		header   = 16
		magic    = 0xED0CDAED
		version  = 2
		txidAt   = header + 48
		checksum = header + 56
	)
	buf := make([]byte, checksum+8)
	for page := range 2 {
		if _, err := f.ReadAt(buf, int64(page*pageSize)); err != nil {
			return 0, false
		}
		e := binary.NativeEndian
		h := fnv.New64a()
		h.Write(buf[header:checksum])
		if e.Uint32(buf[header:]) != magic || e.Uint32(buf[header+4:]) != version || e.Uint64(buf[checksum:]) != h.Sum64() {
			continue
		}
		if t := e.Uint64(buf[txidAt:]); !ok || t > txid {
			txid, ok = t, true
		}
	}
	return txid, ok
}

// settle makes the store's file the one its path names where a rewrite
// left that in doubt (renamed), and makes the rename that put it there
// durable (unsynced), before anything more is committed into it. What it
// cannot do refuses the commit: nothing is written. The caller holds mu
// for writing.
func (s *BoltStore) settle() error {
	if s.db == nil {
		return ErrClosed
	}
	if s.renamed != nil {
		cur, err := s.fs.Stat(s.path)
		switch {
		case err == nil && os.SameFile(cur, s.renamed.info):
			// The rename landed: the new file holds the rewrite's commit,
			// which the caller was told may have landed.
			s.adopt(*s.renamed)
			s.renamed = nil
		case err == nil && os.SameFile(cur, s.info):
			// It did not, and cannot now: its source is removed. That
			// removes no name the store's path goes by.
			err = errors.Join(s.renamed.db.Close(), removeIfExists(rewritePath(s.path)))
			s.renamed = nil
			if err != nil {
				return &notAppliedError{fmt.Errorf("keyvault: remove the new file of a rewrite whose rename did not land: %w", err)}
			}
		default:
			return s.notCurrent(err)
		}
	}
	if s.unsynced {
		if err := s.syncRename(); err != nil {
			return s.refused(fmt.Sprintf("the rename that put its file in place is not known durable, its directory's sync failing (%v)", err),
				"check the file system that holds it")
		}
	}
	return nil
}

// current checks, before a commit, that the store's path names the file
// it commits into. The caller holds mu.
func (s *BoltStore) current() error {
	cur, err := s.fs.Stat(s.path)
	if err == nil && os.SameFile(cur, s.info) {
		return nil
	}
	return s.notCurrent(err)
}

// notCurrent is the refusal of a commit while the store's path is not
// known to name the file it has open (err: why it cannot be looked up).
// Reads go on from that file: it holds every commit the store
// acknowledged, whatever name it has, and at most one more, the commit
// whose rename answered an error, which the caller was told may have
// landed and the vault's view does not hold either. A destroy whose
// rename is in doubt so leaves the version served until writes resume,
// as a destroy that failed would.
func (s *BoltStore) notCurrent(err error) error {
	rewrite := ""
	if s.renamed != nil {
		rewrite = fmt.Sprintf(" (a rewrite's rename of %s over it failed, and may have landed)", rewritePath(s.path))
	}
	if err != nil {
		return s.refused(fmt.Sprintf("it cannot tell which file its path names%s: %v", rewrite, err),
			"check that the file system that holds it answers; writes resume once it does")
	}
	return s.refused("its path names another file than the one it has open"+rewrite,
		"it was replaced or moved while handshaked runs: put the file back, or restart handshaked to serve the file the path names")
}

// refused is the error of a commit the store refused before writing
// anything (UNAVAILABLE, and not applied), why, and what the operator
// should check.
func (s *BoltStore) refused(why, check string) error {
	return &notAppliedError{fmt.Errorf("keyvault: the key store %s takes no writes: %s; %s; keys are still served from the file it has open: %w",
		s.path, why, check, ErrUnavailable)}
}

// adopt makes f the store's file, in place of the one its path no longer
// names, unsynced until its rename is known durable. The caller holds mu
// for writing.
func (s *BoltStore) adopt(f boltFile) {
	// The old file is unlinked and every commit is durable in the new
	// one, so closing the old one can only fail to release resources.
	_ = s.db.Close()
	s.boltFile, s.unsynced = f, true
}

// syncRename makes durable the rename that put the store's file in place.
func (s *BoltStore) syncRename() error {
	if err := s.fs.SyncDir(filepath.Dir(s.path)); err != nil {
		return err
	}
	s.unsynced = false
	return nil
}

// unwritable explains a commit the file system refused for want of room or
// of write access (a full disk or quota, a file system remounted read-only
// after I/O errors): the operator's to mend, not the caller's mistake nor
// the service's fault, and the store serves reads on and takes writes
// again once it can. Other errors are returned as they are.
func (s *BoltStore) unwritable(err error) error {
	var why string
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		why = "its disk is full (or its quota used up): free space on it"
	case errors.Is(err, syscall.EROFS), s.readOnly():
		why = "its file system is read-only: make it writable"
	default:
		return err
	}
	return fmt.Errorf("keyvault: the key store %s takes no writes, %s; keys are still served (%v): %w", s.path, why, err, ErrUnavailable)
}

// readOnly reports whether the store's file system refuses to open its
// file for writing as read-only. A commit's error does not always say so:
// bbolt formats a failed resize of the file with %s, which drops the EROFS.
// Neither statfs's ST_RDONLY nor access(2) tells it either where ext4 went
// read-only after an error (Linux 6 marks it emergency_ro, not read-only),
// while an open for writing fails there as on any read-only mount. A second
// descriptor leaves bbolt's lock alone: flock locks belong to the open file
// description, not to the file.
func (s *BoltStore) readOnly() bool {
	f, err := s.fs.OpenFile(s.path, os.O_WRONLY, 0)
	if err == nil {
		f.Close()
	}
	return errors.Is(err, syscall.EROFS)
}

// rewrite commits a write that erases records by copying every other record
// into a new file and renaming it over the old one. bbolt is copy-on-write:
// a deleted value stays in a freed page until the page happens to be reused,
// so deleting in place would leave the sealed private key in the file.
// The rename is the commit point: until then the old file is untouched.
func (s *BoltStore) rewrite(w Write) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return 0, ErrClosed
	}
	if err := s.settle(); err != nil {
		return 0, err
	}
	if err := s.current(); err != nil {
		return 0, err
	}
	if err := s.db.View(func(tx *bolt.Tx) error { return checkIf(tx, w.If) }); err != nil {
		return 0, err
	}
	tmp := rewritePath(s.path)
	if err := removeIfExists(tmp); err != nil {
		return 0, fmt.Errorf("keyvault: %w", err)
	}
	dst, err := openBoltDB(tmp, s.fs)
	if err != nil {
		return 0, &notAppliedError{errors.Join(s.unwritable(fmt.Errorf("keyvault: rewrite bolt store: %w", err)), removeIfExists(tmp))}
	}
	erased := make(map[RecordRef]bool, len(w.Erase))
	for _, ref := range w.Erase {
		erased[ref] = true
	}
	var rev int64
	err = s.db.View(func(src *bolt.Tx) error {
		return dst.db.Update(func(tx *bolt.Tx) error {
			err := forEachRecord(src, func(r Record) error {
				if erased[r.RecordRef] {
					return nil
				}
				r.Revision = recordRevision(src, r.RecordRef)
				return putRecord(tx, r)
			})
			if err == nil {
				err = putRevision(tx, entryStoreRev, storeRevision(src))
			}
			if err != nil {
				return err
			}
			rev, err = applyWrite(tx, w)
			return err
		})
	})
	// abandon leaves the new file, which the store's path does not name.
	abandon := func(err error) error { return errors.Join(err, dst.db.Close(), removeIfExists(tmp)) }
	if err != nil {
		// The file at s.path is untouched until the rename.
		return 0, &notAppliedError{abandon(s.unwritable(fmt.Errorf("keyvault: rewrite bolt store: %w", err)))}
	}
	err = s.fs.Rename(tmp, s.path)
	if err != nil {
		// Not known to be renamed, nor known not to be: POSIX keeps the
		// name unchanged only on errors other than EIO, and a network
		// file system may rename and lose the answer. The path tells.
		cur, serr := s.fs.Stat(s.path)
		switch {
		case serr == nil && os.SameFile(cur, dst.info):
			// Renamed: committed, as below.
		case serr == nil && os.SameFile(cur, s.info):
			return 0, abandon(s.inDoubt(fmt.Errorf("keyvault: rewrite bolt store: %w", err)))
		default:
			// Either file may be the one the path names: neither is
			// given up, and the next commit tells (settle).
			s.renamed = &dst
			which := "neither the old file nor the new one"
			if serr != nil {
				which = "unknown: " + serr.Error()
			}
			return 0, s.inDoubt(fmt.Errorf("keyvault: rewrite bolt store: %w; the file its path names is %s; it takes no writes until it can tell: "+
				"check that the file system that holds it answers", err, which))
		}
	}
	s.adopt(dst)
	if err == nil {
		err = s.syncRename()
	}
	if err != nil {
		// Committed, maybe not durably: the store reads the new file, and
		// after a crash may read the old one. The revision says it is
		// committed (a committedError in the vault), not failed for certain.
		return rev, fmt.Errorf("keyvault: rewrite bolt store: %w", err)
	}
	return rev, nil
}

// inDoubt is the error of a commit that failed where it may yet have
// landed (a rewrite's rename that failed, whose new file the store's path
// does not name or could not be seen to; an in-place commit that failed
// once its meta page could have been written): ErrUnavailable, which the
// vault takes so, and keeps a key it generated.
func (s *BoltStore) inDoubt(err error) error {
	err = s.unwritable(err)
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("keyvault: the key store %s cannot tell whether a commit took effect (%v): %w", s.path, err, ErrUnavailable)
}

func rewritePath(path string) string { return path + ".rewrite" }

// forEachRecord calls fn for every record in tx. Anything else found in the
// file is reported as corrupted: the vault never drops data silently.
func forEachRecord(tx *bolt.Tx, fn func(Record) error) error {
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		switch string(name) {
		case string(bucketRevisions):
			return nil // read with each record
		case string(bucketVault):
			return b.ForEach(func(k, v []byte) error {
				var ref RecordRef
				switch {
				case v == nil:
					return unknownEntry(name, k)
				case string(k) == string(entryCheck):
					ref = checkRef
				case string(k) == string(entryManifest):
					ref = manifestRef
				case len(k) == 5 && k[0] == prefixTicketKey && binary.BigEndian.Uint32(k[1:]) != 0:
					ref = ticketKeyRef(binary.BigEndian.Uint32(k[1:]))
				case string(k) == string(entryRotation):
					ref = rotationRef
				case len(k) >= 6 && k[0] == prefixForeign && !formatZeroKind(RecordKind(k[1])):
					ref = RecordRef{Kind: RecordKind(k[1]), Version: binary.BigEndian.Uint32(k[2:6]), ID: string(k[6:])}
				default:
					return unknownEntry(name, k)
				}
				return fn(Record{RecordRef: ref, Sealed: v})
			})
		case string(bucketKeys):
			return b.ForEach(func(id, v []byte) error {
				kb := b.Bucket(id)
				if v != nil || kb == nil {
					return unknownEntry(name, id)
				}
				return kb.ForEach(func(k, v []byte) error {
					ref, ok := parseEntry(string(id), k)
					if !ok || v == nil {
						return unknownEntry(id, k)
					}
					return fn(Record{RecordRef: ref, Sealed: v})
				})
			})
		}
		return unknownEntry(nil, name)
	})
}

func unknownEntry(bucket, key []byte) error {
	return fmt.Errorf("keyvault: bolt store: unexpected entry %.64q in bucket %.64q: %w", key, bucket, ErrCorrupted)
}

// parseEntry is the inverse of entryName.
func parseEntry(id string, k []byte) (RecordRef, bool) {
	if string(k) == string(entryKey) {
		return RecordRef{Kind: RecordKey, ID: id}, true
	}
	if len(k) != 5 {
		return RecordRef{}, false
	}
	n := binary.BigEndian.Uint32(k[1:])
	switch k[0] {
	case prefixVersion:
		return RecordRef{Kind: RecordVersion, ID: id, Version: n}, n != 0
	case prefixMaterial:
		return RecordRef{Kind: RecordMaterial, ID: id, Version: n}, n != 0
	}
	return RecordRef{}, false
}

// entryName returns the bucket path and entry name of ref.
func entryName(ref RecordRef) (buckets [][]byte, name []byte, err error) {
	switch ref.Kind {
	case RecordCheck:
		return [][]byte{bucketVault}, entryCheck, nil
	case RecordManifest:
		return [][]byte{bucketVault}, entryManifest, nil
	case RecordTicketKey:
		if ref.ID != "" || ref.Version == 0 {
			return nil, nil, fmt.Errorf("keyvault: bolt store: %v: %w", ref, ErrInvalidArgument)
		}
		return [][]byte{bucketVault}, binary.BigEndian.AppendUint32([]byte{prefixTicketKey}, ref.Version), nil
	case RecordKEKRotation:
		return [][]byte{bucketVault}, entryRotation, nil
	}
	if !formatZeroKind(ref.Kind) {
		return [][]byte{bucketVault}, foreignEntry(ref), nil
	}
	if ref.ID == "" {
		return nil, nil, fmt.Errorf("keyvault: bolt store: %v without key id: %w", ref, ErrInvalidArgument)
	}
	buckets = [][]byte{bucketKeys, []byte(ref.ID)}
	switch ref.Kind {
	case RecordKey:
		return buckets, entryKey, nil
	case RecordVersion, RecordMaterial:
		if ref.Version == 0 {
			return nil, nil, fmt.Errorf("keyvault: bolt store: %v: %w", ref, ErrInvalidArgument)
		}
		prefix := byte(prefixVersion)
		if ref.Kind == RecordMaterial {
			prefix = prefixMaterial
		}
		return buckets, binary.BigEndian.AppendUint32([]byte{prefix}, ref.Version), nil
	}
	return nil, nil, fmt.Errorf("keyvault: bolt store: %v: %w", ref, ErrInvalidArgument)
}

// foreignEntry is the entry name in bucket "vault" of a record of a kind
// this release does not name, whatever its id and version: the layout a
// later release's kinds have, so that this one reads them.
func foreignEntry(ref RecordRef) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{prefixForeign, byte(ref.Kind)}, ref.Version), ref.ID...)
}

// bucketFor returns the bucket holding ref and the entry's name. With create
// false, a missing bucket is returned as nil.
func bucketFor(tx *bolt.Tx, ref RecordRef, create bool) (*bolt.Bucket, []byte, error) {
	path, name, err := entryName(ref)
	if err != nil {
		return nil, nil, err
	}
	var b *bolt.Bucket
	for i, p := range path {
		switch {
		case create && i == 0:
			b, err = tx.CreateBucketIfNotExists(p)
		case create:
			b, err = b.CreateBucketIfNotExists(p)
		case i == 0:
			b = tx.Bucket(p)
		default:
			b = b.Bucket(p)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("keyvault: bolt store: %v: %w", ref, err)
		}
		if b == nil {
			return nil, name, nil
		}
	}
	return b, name, nil
}

// putRecord stores r with r.Revision as its revision.
func putRecord(tx *bolt.Tx, r Record) error {
	b, name, err := bucketFor(tx, r.RecordRef, true)
	if err != nil {
		return err
	}
	if err := b.Put(name, r.Sealed); err != nil {
		return err
	}
	return putRevision(tx, revisionEntry(r.RecordRef), r.Revision)
}

// applyWrite applies w in tx, as the commit of the next store revision,
// which it returns.
func applyWrite(tx *bolt.Tx, w Write) (int64, error) {
	rev := storeRevision(tx) + 1
	for _, ref := range w.Erase {
		b, name, err := bucketFor(tx, ref, false)
		if err != nil {
			return 0, err
		}
		if b != nil {
			if err := b.Delete(name); err != nil {
				return 0, err
			}
		}
		if b := tx.Bucket(bucketRevisions); b != nil {
			if err := b.Delete(revisionEntry(ref)); err != nil {
				return 0, err
			}
		}
	}
	for _, r := range w.Create {
		b, name, err := bucketFor(tx, r.RecordRef, true)
		if err != nil {
			return 0, err
		}
		if b.Get(name) != nil {
			return 0, fmt.Errorf("keyvault: %v: %w", r.RecordRef, ErrAlreadyExists)
		}
		r.Revision = rev
		if err := putRecord(tx, r); err != nil {
			return 0, err
		}
	}
	for _, r := range w.Put {
		r.Revision = rev
		if err := putRecord(tx, r); err != nil {
			return 0, err
		}
	}
	if err := putRevision(tx, entryStoreRev, rev); err != nil {
		return 0, err
	}
	return rev, nil
}

// checkIf fails with ErrConflict unless every record named in cond has the
// revision given, 0 meaning that it does not exist.
func checkIf(tx *bolt.Tx, cond map[RecordRef]int64) error {
	for _, ref := range slices.SortedFunc(maps.Keys(cond), compareRefs) {
		var got int64
		b, name, err := bucketFor(tx, ref, false)
		if err != nil {
			return err
		}
		if b != nil && b.Get(name) != nil {
			got = recordRevision(tx, ref)
		}
		if got != cond[ref] {
			return fmt.Errorf("keyvault: bolt store: %v is at revision %d, not %d: %w", ref, got, cond[ref], ErrConflict)
		}
	}
	return nil
}

// storeRevision returns the revision of the store's state in tx.
func storeRevision(tx *bolt.Tx) int64 {
	return readRevision(tx, entryStoreRev)
}

// recordRevision returns the revision of the commit that wrote ref, which
// exists in tx.
func recordRevision(tx *bolt.Tx, ref RecordRef) int64 {
	return readRevision(tx, revisionEntry(ref))
}

// readRevision reads an entry of the revisions bucket: 1 for a file written
// before revisions, so that none of its records looks missing to If.
func readRevision(tx *bolt.Tx, entry []byte) int64 {
	if b := tx.Bucket(bucketRevisions); b != nil {
		if v := b.Get(entry); len(v) == 8 {
			return int64(binary.BigEndian.Uint64(v))
		}
	}
	return 1
}

func putRevision(tx *bolt.Tx, entry []byte, rev int64) error {
	b, err := tx.CreateBucketIfNotExists(bucketRevisions)
	if err != nil {
		return err
	}
	return b.Put(entry, binary.BigEndian.AppendUint64(nil, uint64(rev)))
}

// revisionEntry names ref's entry in the revisions bucket.
func revisionEntry(ref RecordRef) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{byte(ref.Kind)}, ref.Version), ref.ID...)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
