package keyvault

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"maps"
	"os"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func TestPersistence(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "rsa", RSA2048)
	_, err := v.Create(ctx, "web", ECDSAP256, map[string]string{"env": "prod"})
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	_, err = v.AttachChain(ctx, "rsa", 1, [][]byte{selfSigned(t, testKey(t, RSA2048))})
	require.NoError(t, err)
	before, _, err := v.List(ctx, 0, "")
	require.NoError(t, err)
	require.NoError(t, v.Close())
	_, err = v.Get(ctx, "web")
	assert.ErrorIs(t, err, ErrClosed, "Get after Close")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "bolt file mode")

	v = openTestVault(t, path, testKEK)
	after, _, err := v.List(ctx, 0, "")
	require.NoError(t, err)
	require.Len(t, after, len(before))
	for i := range before {
		b, a := before[i], after[i]
		assert.Equal(t, b.ID, a.ID)
		assert.True(t, a.CreateTime.Equal(b.CreateTime), "create time of %s", b.ID)
		assert.Equal(t, b.Primary, a.Primary)
		assert.True(t, maps.Equal(a.Labels, b.Labels), "labels of %s", b.ID)
		require.Len(t, a.Versions, len(b.Versions))
		for j := range b.Versions {
			bv, av := b.Versions[j], a.Versions[j]
			assert.Equal(t, bv.State, av.State)
			assert.Equal(t, bv.Algorithm, av.Algorithm)
			assert.Equal(t, bv.Imported, av.Imported)
			assert.True(t, av.CreateTime.Equal(bv.CreateTime))
			assert.True(t, publicKeyEqual(av.PublicKey, bv.PublicKey))
			assert.True(t, slices.EqualFunc(av.Chain, bv.Chain, bytes.Equal))
		}
	}
	signOK(t, v, "web", 2)
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	_, err = v.Sign(ctx, "rsa", 0, tls.PSSWithSHA256, []byte("m"), false)
	assert.NoError(t, err)
}

func TestWrongKEK(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	v.Close()

	_, err := openVault(path, bytes.Repeat([]byte{0x43}, kekSize))
	assert.ErrorIs(t, err, ErrWrongKEK)
	assert.ErrorContains(t, err, "wrong key-encryption key")
	_, err = openVault(path, testKEK[:16])
	assert.ErrorIs(t, err, ErrInvalidArgument, "short KEK")
	openTestVault(t, path, testKEK) // the failed attempts released the file
}

// editBolt changes the bolt file at path with fn, outside the vault.
func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.Update(fn))
}

// resealManifest replaces the manifest of the bolt file at path with one
// that lists exactly the records the file holds, sealed under testKEK: what
// an attacker holding the KEK could do. A test that edits records and then
// calls it sees the checks behind the manifest refuse the edit, or not.
func resealManifest(t *testing.T, path string) {
	t.Helper()
	s, err := newSealer(testKEK)
	require.NoError(t, err)
	editBolt(t, path, func(tx *bolt.Tx) error {
		m := manifestRecord{Format: formatBuckets, Revision: 1 << 20, Records: []manifestEntry{bucketedSentinel}}
		buckets := make(map[uint32][]manifestEntry)
		var w Write
		err := forEachRecord(tx, func(r Record) error {
			switch r.Kind {
			case RecordManifest:
			case RecordManifestBucket:
				w.Erase = append(w.Erase, r.RecordRef)
			default:
				d := sha256.Sum256(r.Sealed)
				b := bucketOf(r.RecordRef)
				buckets[b] = append(buckets[b], manifestEntry{Kind: r.Kind, ID: r.ID, Version: r.Version, Revision: 1, SHA256: d[:]})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, b := range slices.Sorted(maps.Keys(buckets)) {
			rec, err := s.sealJSON(bucketRef(b), bucketRecord{Records: buckets[b]})
			if err != nil {
				return err
			}
			d := sha256.Sum256(rec.Sealed)
			m.Buckets = append(m.Buckets, bucketEntry{Bucket: b, Revision: 1, SHA256: d[:]})
			w.Put = append(w.Put, rec)
		}
		rec, err := s.sealJSON(manifestRef, m)
		if err != nil {
			return err
		}
		_, err = applyWrite(tx, Write{Erase: w.Erase, Put: append(w.Put, rec)})
		return err
	})
}

func storedValue(tx *bolt.Tx, ref RecordRef) []byte {
	b, name, err := bucketFor(tx, ref, false)
	if err != nil || b == nil {
		return nil
	}
	return bytes.Clone(b.Get(name))
}

func flipRecord(ref RecordRef) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		val := storedValue(tx, ref)
		if val == nil {
			return errors.New("no such record")
		}
		val[len(val)/2] ^= 0x01
		return putRecord(tx, Record{RecordRef: ref, Sealed: val})
	}
}

// copyRecords copies the sealed bytes of from[i] to to[i], replacing what is
// there.
func copyRecords(from, to []RecordRef) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		vals := make([][]byte, len(from))
		for i, ref := range from {
			if vals[i] = storedValue(tx, ref); vals[i] == nil {
				return errors.New("no such record")
			}
		}
		for i, ref := range to {
			if err := putRecord(tx, Record{RecordRef: ref, Sealed: vals[i]}); err != nil {
				return err
			}
		}
		return nil
	}
}

func removeRecord(ref RecordRef) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		_, err := applyWrite(tx, Write{Erase: []RecordRef{ref}})
		return err
	}
}

func verRef(id string, n uint32) RecordRef { return RecordRef{Kind: RecordVersion, ID: id, Version: n} }
func matRef(id string, n uint32) RecordRef {
	return RecordRef{Kind: RecordMaterial, ID: id, Version: n}
}
func keyRef(id string) RecordRef { return RecordRef{Kind: RecordKey, ID: id} }

// TestTamperedRecords edits the file as someone without the KEK can, once
// leaving the manifest as it is (the manifest refuses the edit) and once
// with a manifest resealed to fit (the checks behind it refuse it).
func TestTamperedRecords(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(tx *bolt.Tx) error
		stale    string // what the error must name with the manifest left as it is
		resealed string // and with a manifest fitting the edit
	}{
		{"flipped version record", flipRecord(verRef("web", 1)), `key "web" version 1`, `key "web" version 1`},
		{"flipped private key", flipRecord(matRef("web", 2)), `key "web" version 2 private key`, `key "web" version 2 private key`},
		{"flipped key record", flipRecord(keyRef("api")), `key "api"`, `key "api"`},
		{"version record moved to another key", copyRecords([]RecordRef{verRef("web", 1)}, []RecordRef{verRef("api", 1)}), `key "api" version 1`, `key "api" version 1`},
		{"private key moved to another version", copyRecords([]RecordRef{matRef("web", 1)}, []RecordRef{matRef("web", 2)}), `key "web" version 2 private key`, `key "web" version 2 private key`},
		{"version record moved to a new version", copyRecords([]RecordRef{verRef("web", 1)}, []RecordRef{verRef("web", 3)}), `key "web" version 3`, `key "web" version 3`},
		{"newest version dropped", removeRecord(verRef("web", 2)), `key "web" version 2`, `key "web" version 2`},
		{"private key dropped", removeRecord(matRef("api", 1)), `key "api" version 1 private key`, `key "api" version 1 private key`},
		{"key record dropped", removeRecord(keyRef("api")), `key "api" is missing`, `key "api" version 1 belongs to no key`},
		{"check record dropped", removeRecord(checkRef), `check record`, `check record`},
		{"unknown entry", func(tx *bolt.Tx) error {
			b, _, err := bucketFor(tx, keyRef("web"), false)
			if err != nil {
				return err
			}
			return b.Put([]byte("x"), []byte("y"))
		}, `"x"`, ""},
	}
	for _, tc := range cases {
		for _, reseal := range []bool{false, true} {
			if reseal && tc.resealed == "" {
				continue // the store refuses to read it: no manifest can list it
			}
			name := tc.name + map[bool]string{false: "/stale manifest", true: "/resealed manifest"}[reseal]
			t.Run(name, func(t *testing.T) {
				v, path := newTestVault(t)
				_, err := v.Create(ctx, "web", ECDSAP256, nil)
				require.NoError(t, err)
				_, err = v.Rotate(ctx, "web")
				require.NoError(t, err)
				_, err = v.Create(ctx, "api", Ed25519, nil)
				require.NoError(t, err)
				v.Close()
				editBolt(t, path, tc.edit)
				want := tc.stale
				if reseal {
					resealManifest(t, path)
					want = tc.resealed
				}
				_, err = openVault(path, testKEK)
				assert.ErrorIs(t, err, ErrCorrupted)
				assert.ErrorContains(t, err, want)
			})
		}
	}
	t.Run("manifest dropped", func(t *testing.T) {
		v, path := newTestVault(t)
		importTestKey(t, v, "web", ECDSAP256)
		v.Close()
		editBolt(t, path, removeRecord(manifestRef))
		_, err := openVault(path, testKEK)
		assert.ErrorIs(t, err, ErrCorrupted)
		assert.ErrorContains(t, err, "manifest is missing")
	})
}

// TestMovedRecordsOnlyAADRefuses copies records where every other check
// passes: "web" and "api" hold the same private key, and the manifest is
// resealed to fit. Only the key id and version number bound as associated
// data tell the records apart.
func TestMovedRecordsOnlyAADRefuses(t *testing.T) {
	cases := []struct {
		name     string
		from, to []RecordRef
		want     string
	}{
		{"key record to another key", []RecordRef{keyRef("web")}, []RecordRef{keyRef("api")}, `key "api"`},
		{"version record to another key", []RecordRef{verRef("web", 1)}, []RecordRef{verRef("api", 1)}, `key "api" version 1`},
		{"private key to another key", []RecordRef{matRef("web", 1)}, []RecordRef{matRef("api", 1)}, `key "api" version 1 private key`},
		{"version and private key to another version", []RecordRef{verRef("web", 1), matRef("web", 1)}, []RecordRef{verRef("web", 2), matRef("web", 2)}, `key "web" version 2`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, path := newTestVault(t)
			importTestKey(t, v, "web", ECDSAP256)
			importTestKey(t, v, "api", ECDSAP256)
			_, err := v.Rotate(ctx, "web")
			require.NoError(t, err)
			_, err = v.Rotate(ctx, "api")
			require.NoError(t, err)
			v.Close()
			editBolt(t, path, copyRecords(tc.from, tc.to))
			resealManifest(t, path)
			_, err = openVault(path, testKEK)
			assert.ErrorIs(t, err, ErrCorrupted)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

// sealedMaterial returns the sealed private key of key id version n as the
// store holds it.
func sealedMaterial(t *testing.T, path string, id string, n uint32) []byte {
	t.Helper()
	var sealed []byte
	readBolt(t, path, func(tx *bolt.Tx) error {
		sealed = storedValue(tx, matRef(id, n))
		return nil
	})
	return sealed
}

func TestDestroyErasesMaterial(t *testing.T) {
	v, path := newTestVault(t)
	_, err := v.Create(ctx, "web", ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false)
	require.NoError(t, err)
	v.Close()
	sealed := sealedMaterial(t, path, "web", 1)
	require.NotEmpty(t, sealed)
	file, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Contains(file, sealed), "the sealed private key is not in the file before destruction")

	v = openTestVault(t, path, testKEK)
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.NoError(t, err)
	v.Close()

	// Checked before any other write: bbolt is copy-on-write, a later write
	// might reuse, and so hide, a freed page still holding the key.
	file, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.False(t, bytes.Contains(file, sealed), "the destroyed version's sealed private key is still in the bolt file")
	assert.Nil(t, sealedMaterial(t, path, "web", 1))
	assert.NoFileExists(t, rewritePath(path), "the rewrite left its file behind")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "bolt file mode after rewrite")

	v = openTestVault(t, path, testKEK)
	key, err := v.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, StateDestroyed, key.Versions[0].State)
	assert.Equal(t, StateEnabled, key.Versions[1].State)
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	signOK(t, v, "web", 2)
	// The store keeps working after the rewrite that erased the key.
	_, err = v.Create(ctx, "api", Ed25519, nil)
	require.NoError(t, err)
}
