package keyvault

import (
	"bytes"
	"crypto/tls"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestPersistence(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "rsa", RSA2048)
	if _, err := v.Create(ctx, "web", ECDSAP256, map[string]string{"env": "prod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Rotate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.SetVersionEnabled(ctx, "web", 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := v.AttachChain(ctx, "rsa", 1, [][]byte{selfSigned(t, testKey(t, RSA2048))}); err != nil {
		t.Fatal(err)
	}
	before, _, err := v.List(ctx, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Get(ctx, "web"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: got %v, want ErrClosed", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bolt file mode = %v, %v; want 0600", fi.Mode(), err)
	}

	v = openTestVault(t, path, testKEK)
	after, _, err := v.List(ctx, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("reopened vault has %d keys, want %d", len(after), len(before))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.ID != b.ID || !a.CreateTime.Equal(b.CreateTime) || a.Primary != b.Primary || len(a.Versions) != len(b.Versions) || !maps.Equal(a.Labels, b.Labels) {
			t.Fatalf("reopened key = %+v, want %+v", a, b)
		}
		for j := range b.Versions {
			bv, av := b.Versions[j], a.Versions[j]
			if av.State != bv.State || av.Algorithm != bv.Algorithm || av.Imported != bv.Imported ||
				!av.CreateTime.Equal(bv.CreateTime) || !publicKeyEqual(av.PublicKey, bv.PublicKey) ||
				!slices.EqualFunc(av.Chain, bv.Chain, bytes.Equal) {
				t.Fatalf("reopened version = %+v, want %+v", av, bv)
			}
		}
	}
	signOK(t, v, "web", 2)
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	if _, err := v.Sign(ctx, "rsa", 0, tls.PSSWithSHA256, []byte("m"), false); err != nil {
		t.Fatal(err)
	}
}

func TestWrongKEK(t *testing.T) {
	v, path := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	v.Close()

	_, err := openVault(path, bytes.Repeat([]byte{0x43}, kekSize))
	if !errors.Is(err, ErrWrongKEK) || !strings.Contains(err.Error(), "wrong key-encryption key") {
		t.Fatalf("wrong KEK: got %v", err)
	}
	if _, err := openVault(path, testKEK[:16]); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("short KEK: got %v, want ErrInvalidArgument", err)
	}
	openTestVault(t, path, testKEK) // the failed attempts released the file
}

// editBolt changes the bolt file at path with fn, outside the vault.
func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestTamperedRecords(t *testing.T) {
	ver := func(id string, n uint32) RecordRef { return RecordRef{Kind: RecordVersion, ID: id, Version: n} }
	mat := func(id string, n uint32) RecordRef { return RecordRef{Kind: RecordMaterial, ID: id, Version: n} }
	flip := func(ref RecordRef) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			b, name, err := bucketFor(tx, ref, false)
			if err != nil {
				return err
			}
			val := bytes.Clone(b.Get(name))
			val[len(val)/2] ^= 0x01
			return b.Put(name, val)
		}
	}
	move := func(from, to RecordRef) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			b, name, err := bucketFor(tx, from, false)
			if err != nil {
				return err
			}
			val := bytes.Clone(b.Get(name))
			tb, toName, err := bucketFor(tx, to, true)
			if err != nil {
				return err
			}
			return tb.Put(toName, val)
		}
	}
	remove := func(ref RecordRef) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			b, name, err := bucketFor(tx, ref, false)
			if err != nil {
				return err
			}
			return b.Delete(name)
		}
	}
	cases := []struct {
		name   string
		edit   func(tx *bolt.Tx) error
		record string // what the error must name
	}{
		{"flipped version record", flip(ver("web", 1)), `key "web" version 1`},
		{"flipped private key", flip(mat("web", 2)), `key "web" version 2 private key`},
		{"flipped key record", flip(RecordRef{Kind: RecordKey, ID: "api"}), `key "api"`},
		{"version record moved to another key", move(ver("web", 1), ver("api", 1)), `key "api" version 1`},
		{"private key moved to another version", move(mat("web", 1), mat("web", 2)), `key "web" version 2 private key`},
		{"version record moved to a new version", move(ver("web", 1), ver("web", 3)), `key "web" version 3`},
		{"newest version dropped", remove(ver("web", 2)), `key "web" version 2`},
		{"private key dropped", remove(mat("api", 1)), `key "api" version 1 private key`},
		{"key record dropped", remove(RecordRef{Kind: RecordKey, ID: "api"}), `key "api" version 1`},
		{"check record dropped", remove(checkRef), `check record`},
		{"unknown entry", func(tx *bolt.Tx) error {
			b, _, err := bucketFor(tx, RecordRef{Kind: RecordKey, ID: "web"}, false)
			if err != nil {
				return err
			}
			return b.Put([]byte("x"), []byte("y"))
		}, `"x"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, path := newTestVault(t)
			if _, err := v.Create(ctx, "web", ECDSAP256, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := v.Rotate(ctx, "web"); err != nil {
				t.Fatal(err)
			}
			if _, err := v.Create(ctx, "api", Ed25519, nil); err != nil {
				t.Fatal(err)
			}
			v.Close()
			editBolt(t, path, tc.edit)
			_, err := openVault(path, testKEK)
			if !errors.Is(err, ErrCorrupted) || !strings.Contains(err.Error(), tc.record) {
				t.Fatalf("got %v; want ErrCorrupted naming %s", err, tc.record)
			}
		})
	}
}

// sealedMaterial returns the sealed private key of key id version n as the
// store holds it.
func sealedMaterial(t *testing.T, path string, id string, n uint32) []byte {
	t.Helper()
	var sealed []byte
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		b, name, err := bucketFor(tx, RecordRef{Kind: RecordMaterial, ID: id, Version: n}, false)
		if err == nil && b != nil {
			sealed = bytes.Clone(b.Get(name))
		}
		return nil
	})
	return sealed
}

func TestDestroyErasesMaterial(t *testing.T) {
	v, path := newTestVault(t)
	if _, err := v.Create(ctx, "web", ECDSAP256, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Rotate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.SetVersionEnabled(ctx, "web", 1, false); err != nil {
		t.Fatal(err)
	}
	v.Close()
	sealed := sealedMaterial(t, path, "web", 1)
	if file, err := os.ReadFile(path); err != nil || len(sealed) == 0 || !bytes.Contains(file, sealed) {
		t.Fatalf("the sealed private key is not in the file before destruction (%v)", err)
	}

	v = openTestVault(t, path, testKEK)
	if _, err := v.DestroyVersion(ctx, "web", 1); err != nil {
		t.Fatal(err)
	}
	v.Close()

	// Checked before any other write: bbolt is copy-on-write, a later write
	// might reuse, and so hide, a freed page still holding the key.

	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(file, sealed) || sealedMaterial(t, path, "web", 1) != nil {
		t.Fatal("the destroyed version's sealed private key is still in the bolt file")
	}
	if _, err := os.Stat(rewritePath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rewrite left %s behind: %v", rewritePath(path), err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bolt file mode after rewrite = %v, %v; want 0600", fi.Mode(), err)
	}

	v = openTestVault(t, path, testKEK)
	key, err := v.Get(ctx, "web")
	if err != nil || key.Versions[0].State != StateDestroyed || key.Versions[1].State != StateEnabled {
		t.Fatalf("reopened = %+v, %v", key, err)
	}
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	signOK(t, v, "web", 2)
	// The store keeps working after the rewrite that erased the key.
	if _, err := v.Create(ctx, "api", Ed25519, nil); err != nil {
		t.Fatal(err)
	}
}
