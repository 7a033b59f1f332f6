package keyvault

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// readBolt runs fn on the bolt file at path, read-only, outside the vault.
func readBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(fn))
}

// webOfTwoVersions returns the path of a closed vault holding key "web"
// of two versions.
func webOfTwoVersions(t *testing.T) string {
	t.Helper()
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	_, err := v.Rotate(ctx, "web")
	require.NoError(t, err)
	require.NoError(t, v.Close())
	return path
}

// disableWebV1 disables version 1 of key "web" in the vault at path and
// returns the file then.
func disableWebV1(t *testing.T, path string) []byte {
	t.Helper()
	v := openTestVault(t, path, testKEK)
	_, err := v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	clean, err := os.ReadFile(path)
	require.NoError(t, err)
	return clean
}

// TestRollbackOfARecordIsRefused copies an older sealed record back with a
// plain bbolt Put, as anyone who can write the file can (an old copy sits in
// a free page of the file, or in a backup): a disabled version must not come
// back enabled.
func TestRollbackOfARecordIsRefused(t *testing.T) {
	path := webOfTwoVersions(t)
	var enabled, oldManifest []byte
	readBolt(t, path, func(tx *bolt.Tx) error {
		enabled, oldManifest = storedValue(tx, verRef("web", 1)), storedValue(tx, manifestRef)
		return nil
	})

	clean := disableWebV1(t, path)

	t.Run("version record", func(t *testing.T) {
		editBolt(t, path, func(tx *bolt.Tx) error {
			return putRecord(tx, Record{RecordRef: verRef("web", 1), Sealed: enabled})
		})
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, `key "web" version 1 is not the one revision`)
	})
	t.Run("version record and the manifest of its time", func(t *testing.T) {
		// Since then the version record changed and nothing else; rolling
		// back both is rolling back the whole store, which the file alone
		// cannot tell (the README's Security model says so). One change more
		// and the old manifest no longer fits.
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		v := openTestVault(t, path, testKEK)
		_, err := v.Create(ctx, "api", Ed25519, nil)
		require.NoError(t, err)
		v.Close()
		editBolt(t, path, func(tx *bolt.Tx) error {
			_, err := applyWrite(tx, Write{Put: []Record{
				{RecordRef: verRef("web", 1), Sealed: enabled},
				{RecordRef: manifestRef, Sealed: oldManifest},
			}})
			return err
		})
		_, err = openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		// The buckets of "web" and "api" are not the ones the old
		// manifest lists.
		assert.Regexp(t, `manifest bucket \d+ is not the one revision \d+ wrote`, err)
	})
	t.Run("untouched", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		v := openTestVault(t, path, testKEK)
		signFails(t, v, "web", 1, ErrFailedPrecondition)
		signOK(t, v, "web", 2)
	})
}

// TestRollbackOfABucketIsRefused copies an older sealed manifest bucket
// back, alone and with the older version record it lists (one key rolled
// back whole, its bucket consistent with it): the manifest lists every
// bucket's revision and digest, so an older bucket is refused as an older
// record is, and a disabled version does not come back enabled.
func TestRollbackOfABucketIsRefused(t *testing.T) {
	path := webOfTwoVersions(t)
	bucket := bucketRef(bucketOf(keyRef("web")))
	var enabled, oldBucket []byte
	readBolt(t, path, func(tx *bolt.Tx) error {
		enabled, oldBucket = storedValue(tx, verRef("web", 1)), storedValue(tx, bucket)
		return nil
	})
	require.NotNil(t, oldBucket, "the store holds %v", bucket)

	clean := disableWebV1(t, path)
	want := bucket.String() + " is not the one revision"

	t.Run("bucket", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		editBolt(t, path, func(tx *bolt.Tx) error { return putRecord(tx, Record{RecordRef: bucket, Sealed: oldBucket}) })
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, want)
	})
	t.Run("bucket and the version record it lists", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		editBolt(t, path, func(tx *bolt.Tx) error {
			_, err := applyWrite(tx, Write{Put: []Record{{RecordRef: bucket, Sealed: oldBucket}, {RecordRef: verRef("web", 1), Sealed: enabled}}})
			return err
		})
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, want)
	})
	t.Run("untouched", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		v := openTestVault(t, path, testKEK)
		signFails(t, v, "web", 1, ErrFailedPrecondition)
		signOK(t, v, "web", 2)
	})
}

// boltLeaf is one value in a bolt file: its bucket path and key.
type boltLeaf struct {
	buckets [][]byte
	key     []byte
}

// boltLeaves walks every bucket of the file at path, nested ones too, on
// bbolt's own terms (not the store's reading of it), and returns every value
// but the store revisions: bookkeeping of the store, not sealed records (a
// changed one makes the next change conflict and recompute, no more).
func boltLeaves(t *testing.T, path string) []boltLeaf {
	t.Helper()
	var leaves []boltLeaf
	var walk func(b *bolt.Bucket, at [][]byte) error
	walk = func(b *bolt.Bucket, at [][]byte) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return walk(b.Bucket(k), append(slices.Clone(at), bytes.Clone(k)))
			}
			leaves = append(leaves, boltLeaf{buckets: at, key: bytes.Clone(k)})
			return nil
		})
	}
	readBolt(t, path, func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if bytes.Equal(name, bucketRevisions) {
				return nil
			}
			return walk(b, [][]byte{bytes.Clone(name)})
		})
	})
	return leaves
}

// TestFlipEveryStoredValue flips one bit in each value of the file in turn,
// in every bucket at every depth: each flip must stop the vault from
// opening (a flipped check record reads as a wrong KEK).
func TestFlipEveryStoredValue(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "rsa", RSA2048)
	_, err := v.AttachChain(ctx, "rsa", 1, [][]byte{selfSigned(t, testKey(t, RSA2048))})
	require.NoError(t, err)
	_, err = v.Create(ctx, "web", ECDSAP256, map[string]string{"env": "prod"})
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	v.Close()
	clean, err := os.ReadFile(path)
	require.NoError(t, err)

	leaves := boltLeaves(t, path)
	// check, manifest, the manifest's buckets; rsa: key, v1, m1; web: key,
	// v1, v2, m2.
	buckets := countKind(storedRecords(t, path), RecordManifestBucket)
	require.NotZero(t, buckets)
	require.Len(t, leaves, 9+buckets)
	nested := 0
	for _, leaf := range leaves {
		if len(leaf.buckets) > 1 {
			nested++
		}
		t.Run(string(bytes.Join(append(leaf.buckets, leaf.key), []byte("/"))), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "vault.db")
			require.NoError(t, os.WriteFile(p, clean, 0o600))
			editBolt(t, p, func(tx *bolt.Tx) error {
				b := tx.Bucket(leaf.buckets[0])
				for _, name := range leaf.buckets[1:] {
					b = b.Bucket(name)
				}
				val := bytes.Clone(b.Get(leaf.key))
				val[len(val)/2] ^= 0x01
				return b.Put(leaf.key, val)
			})
			_, err := openVault(p, testKEK)
			if string(leaf.key) == string(entryCheck) {
				assert.ErrorIs(t, err, ErrWrongKEK)
			} else {
				assert.ErrorIs(t, err, ErrCorrupted)
			}
		})
	}
	assert.Equal(t, 7, nested, "values in per-key buckets")
}

func TestOpenRefusesAnEmptyStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	store, err := OpenBolt(path)
	require.NoError(t, err)
	_, err = Open(ctx, store, testKEK)
	assert.ErrorIs(t, err, ErrEmptyStore)
	require.NoError(t, store.Close())
	assert.Empty(t, boltLeaves(t, path), "Open wrote to an empty store")

	// New makes it a vault; Open then opens it.
	v := openTestVault(t, path, testKEK)
	importTestKey(t, v, "web", ECDSAP256)
	v.Close()
	store, err = OpenBolt(path)
	require.NoError(t, err)
	v, err = Open(ctx, store, testKEK)
	require.NoError(t, err)
	defer v.Close()
	signOK(t, v, "web", 1)
}

// makeV1Store turns the store at path into a v1 one, as written before
// manifests: every record resealed with v1 associated data, the v1 check
// record, no manifest.
func makeV1Store(t *testing.T, path string) {
	t.Helper()
	s, err := newSealer(testKEK)
	require.NoError(t, err)
	editBolt(t, path, func(tx *bolt.Tx) error {
		var w Write
		err := forEachRecord(tx, func(r Record) error {
			switch r.Kind {
			case RecordManifest, RecordManifestBucket:
				w.Erase = append(w.Erase, r.RecordRef)
			case RecordCheck:
				w.Put = append(w.Put, s.v1().seal(checkRef, checkPlaintextV1))
			default:
				plaintext, err := s.open(r)
				if err != nil {
					return err
				}
				w.Put = append(w.Put, s.v1().seal(r.RecordRef, plaintext))
			}
			return nil
		})
		if err != nil {
			return err
		}
		_, err = applyWrite(tx, w)
		return err
	})
}

// TestUpgradeFromAStoreWithoutManifest opens a v1 store (no manifest, v1
// associated data): it opens, is resealed as v2 with a manifest, and keeps
// no v1 record. A copy of a v1 record (from a backup made before the
// upgrade) put back with the v1 check record and without the manifest does
// not open among the v2 records written since: such a splice is refused,
// not taken for a v1 store.
func TestUpgradeFromAStoreWithoutManifest(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	_, err := v.Create(ctx, "api", Ed25519, nil)
	require.NoError(t, err)
	v.Close()
	makeV1Store(t, path)
	var v1Records []Record
	readBolt(t, path, func(tx *bolt.Tx) error {
		return forEachRecord(tx, func(r Record) error {
			r.Sealed = bytes.Clone(r.Sealed)
			v1Records = append(v1Records, r)
			return nil
		})
	})
	require.Len(t, v1Records, 7) // check; web and api: key, version, private key (a v1 store has no manifest, nor buckets)
	pre := filepath.Join(t.TempDir(), "before-upgrade.db")
	file, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(pre, file, 0o600))

	v = openTestVault(t, path, testKEK)
	signOK(t, v, "web", 1)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	v.Close()
	file, err = os.ReadFile(path)
	require.NoError(t, err)
	for _, r := range v1Records {
		assert.False(t, bytes.Contains(file, r.Sealed), "the v1 %v is still in the file", r.RecordRef)
	}
	readBolt(t, path, func(tx *bolt.Tx) error {
		assert.NotNil(t, storedValue(tx, manifestRef), "no manifest after the upgrade")
		return nil
	})
	clean := file

	t.Run("reopened", func(t *testing.T) {
		v := openTestVault(t, path, testKEK)
		signFails(t, v, "web", 1, ErrFailedPrecondition)
		_, err := v.Sign(ctx, "api", 0, tls.Ed25519, []byte("m"), false)
		assert.NoError(t, err)
	})
	t.Run("manifest dropped", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		editBolt(t, path, removeRecord(manifestRef))
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "manifest is missing")
	})
	t.Run("v1 records spliced back, manifest dropped", func(t *testing.T) {
		// The enabled v1 version record and the v1 check record, from a
		// copy made before the upgrade; the rest is as written since.
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		editBolt(t, path, func(tx *bolt.Tx) error {
			w := Write{Erase: []RecordRef{manifestRef}}
			for _, r := range v1Records {
				if r.RecordRef == checkRef || r.RecordRef == verRef("web", 1) {
					w.Put = append(w.Put, r)
				}
			}
			_, err := applyWrite(tx, w)
			return err
		})
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
	})
	t.Run("v1 check record with a manifest", func(t *testing.T) {
		require.NoError(t, os.WriteFile(path, clean, 0o600))
		i := slices.IndexFunc(v1Records, func(r Record) bool { return r.RecordRef == checkRef })
		editBolt(t, path, func(tx *bolt.Tx) error { return putRecord(tx, v1Records[i]) })
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "a v1 check record in a store with a manifest")
	})
	t.Run("the copy made before the upgrade", func(t *testing.T) {
		// Restoring the whole old file is the limit the README states: it
		// opens, as the store it was.
		v := openTestVault(t, pre, testKEK)
		signOK(t, v, "web", 1)
	})
}
