package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// selfSigned returns a self-signed certificate for key, DER.
func selfSigned(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "example.com"},
		DNSNames:     []string{"example.com"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func signOK(t *testing.T, v *Vault, id string, version uint32) {
	t.Helper()
	msg := []byte("hello")
	sig, err := v.Sign(ctx, id, version, tls.ECDSAWithP256AndSHA256, msg, false)
	if err != nil {
		t.Fatalf("Sign %s v%d: %v", id, version, err)
	}
	key, err := v.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	n := version
	if n == 0 {
		n = key.Primary
	}
	if err := verifySignature(key.Versions[n-1].PublicKey, tls.ECDSAWithP256AndSHA256, msg, sig); err != nil {
		t.Fatalf("Sign %s v%d: %v", id, version, err)
	}
}

func signFails(t *testing.T, v *Vault, id string, version uint32, want error) {
	t.Helper()
	if _, err := v.Sign(ctx, id, version, tls.ECDSAWithP256AndSHA256, []byte("hello"), false); !errors.Is(err, want) {
		t.Fatalf("Sign %s v%d: got %v, want %v", id, version, err, want)
	}
}

func TestLifecycle(t *testing.T) {
	v, _ := newTestVault(t)
	key, err := v.Create(ctx, "web", ECDSAP256, map[string]string{"team": "edge"})
	if err != nil {
		t.Fatal(err)
	}
	if key.Primary != 1 || len(key.Versions) != 1 || key.Versions[0].Imported || key.Versions[0].Algorithm != ECDSAP256 || key.Labels["team"] != "edge" {
		t.Fatalf("Create = %+v", key)
	}
	signOK(t, v, "web", 0)

	key, err = v.Rotate(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if key.Primary != 2 || len(key.Versions) != 2 || key.Versions[1].Algorithm != ECDSAP256 ||
		publicKeyEqual(key.Versions[0].PublicKey, key.Versions[1].PublicKey) {
		t.Fatalf("Rotate = %+v", key)
	}
	signOK(t, v, "web", 0)
	signOK(t, v, "web", 1) // the old version keeps working after a rotation
	for _, c := range []struct{ in, want uint32 }{{0, 2}, {1, 1}, {2, 2}} {
		if got, err := v.ResolveVersion(ctx, "web", c.in); err != nil || got != c.want {
			t.Fatalf("ResolveVersion(%d) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	if _, err := v.ResolveVersion(ctx, "web", 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ResolveVersion of a missing version: %v", err)
	}

	if _, err := v.DestroyVersion(ctx, "web", 1); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("destroying an enabled version: got %v, want ErrFailedPrecondition", err)
	}
	key, err = v.SetVersionEnabled(ctx, "web", 1, false)
	if err != nil || key.Versions[0].State != StateDisabled || key.Versions[1].State != StateEnabled {
		t.Fatalf("disable v1 = %+v, %v", key, err)
	}
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	signOK(t, v, "web", 2)
	if _, err := v.CreateCSR(ctx, "web", 1, pkix.Name{CommonName: "x"}, nil, nil); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("CSR with a disabled version: got %v, want ErrFailedPrecondition", err)
	}

	if _, err := v.SetVersionEnabled(ctx, "web", 1, true); err != nil {
		t.Fatal(err)
	}
	signOK(t, v, "web", 1)
	if _, err := v.SetVersionEnabled(ctx, "web", 1, false); err != nil {
		t.Fatal(err)
	}

	key, err = v.DestroyVersion(ctx, "web", 1)
	if err != nil {
		t.Fatal(err)
	}
	if d := key.Versions[0]; d.State != StateDestroyed || d.PublicKey == nil {
		t.Fatalf("destroyed version = %+v; want its metadata kept", d)
	}
	signFails(t, v, "web", 1, ErrFailedPrecondition)
	for _, enabled := range []bool{true, false} {
		if _, err := v.SetVersionEnabled(ctx, "web", 1, enabled); !errors.Is(err, ErrFailedPrecondition) {
			t.Fatalf("SetVersionEnabled(%v) on a destroyed version: got %v, want ErrFailedPrecondition", enabled, err)
		}
	}
	if _, err := v.DestroyVersion(ctx, "web", 1); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("destroying twice: got %v, want ErrFailedPrecondition", err)
	}
	if _, err := v.AttachChain(ctx, "web", 1, [][]byte{selfSigned(t, testKey(t, ECDSAP256))}); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("attaching to a destroyed version: got %v, want ErrFailedPrecondition", err)
	}
	signOK(t, v, "web", 2)

	// Version 0 is the primary: disabling it disables version 2.
	key, err = v.SetVersionEnabled(ctx, "web", 0, false)
	if err != nil || key.Versions[1].State != StateDisabled {
		t.Fatalf("disable v0 = %+v, %v", key, err)
	}
	signFails(t, v, "web", 0, ErrFailedPrecondition)
	if _, err := v.SetVersionEnabled(ctx, "web", 3, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing version: got %v, want ErrNotFound", err)
	}
}

func TestCreate(t *testing.T) {
	v, _ := newTestVault(t)
	for _, alg := range []Algorithm{ECDSAP256, ECDSAP384, Ed25519} {
		id := strings.ToLower(strings.ReplaceAll(alg.String(), "_", "-"))
		key, err := v.Create(ctx, id, alg, nil)
		if err != nil {
			t.Fatal(err)
		}
		scheme := SchemesFor(alg)[0]
		sig, err := v.Sign(ctx, id, 1, scheme, []byte("m"), false)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifySignature(key.Versions[0].PublicKey, scheme, []byte("m"), sig); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Create(ctx, "ed25519", Ed25519, nil); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate id: got %v, want ErrAlreadyExists", err)
	}
	for _, alg := range []Algorithm{AlgorithmUnspecified, Ed25519 + 1, -1} {
		if _, err := v.Create(ctx, "x", alg, nil); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("algorithm %v: got %v, want ErrInvalidArgument", alg, err)
		}
	}
}

func TestValidation(t *testing.T) {
	v, _ := newTestVault(t)
	for _, id := range []string{"a", "web-1", "0", strings.Repeat("a", 63), "a-b-c"} {
		if err := validateID(id); err != nil {
			t.Errorf("validateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "-a", "a-", "A", "a_b", "a.b", "a/b", "é", strings.Repeat("a", 64), "a\x00"} {
		if _, err := v.Create(ctx, id, Ed25519, nil); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Create(%q): got %v, want ErrInvalidArgument", id, err)
		}
	}
	tooMany := map[string]string{}
	for i := range maxLabels + 1 {
		tooMany[fmt.Sprintf("l%d", i)] = "v"
	}
	for _, labels := range []map[string]string{
		tooMany, {"": "v"}, {"Team": "v"}, {"1team": "v"}, {"team.x": "v"}, {strings.Repeat("a", 64): "v"},
		{"team": strings.Repeat("v", 256)}, {"team": "a\nb"}, {"team": "\xff"},
	} {
		if _, err := v.Create(ctx, "x", Ed25519, labels); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Create with labels %.40v: got %v, want ErrInvalidArgument", labels, err)
		}
	}
	if _, err := v.Create(ctx, "x", Ed25519, map[string]string{"team_a": "Payments & Co", "b-2": ""}); err != nil {
		t.Errorf("valid labels: %v", err)
	}
}

func TestAlgorithmNames(t *testing.T) {
	for alg := RSA2048; alg <= Ed25519; alg++ {
		got, err := ParseAlgorithm(alg.String())
		if err != nil || got != alg {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", alg.String(), got, err)
		}
	}
	if RSA2048.String() != "RSA_2048" || Ed25519.String() != "ED25519" || ECDSAP384.String() != "ECDSA_P384" {
		t.Error("algorithm names differ from the contract")
	}
	if _, err := ParseAlgorithm("ALGORITHM_UNSPECIFIED"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ParseAlgorithm(unspecified): %v", err)
	}
}

func TestList(t *testing.T) {
	v, _ := newTestVault(t)
	var ids []string
	for i := range 7 {
		id := fmt.Sprintf("key-%d", 6-i) // created out of order
		ids = append(ids, id)
		if _, err := v.Create(ctx, id, Ed25519, nil); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(ids)

	var got []string
	token := ""
	pages := 0
	for {
		keys, next, err := v.List(ctx, 3, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(keys) > 3 {
			t.Fatalf("page of %d keys, want at most 3", len(keys))
		}
		for _, k := range keys {
			got = append(got, k.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || !slices.Equal(got, ids) {
		t.Fatalf("listed %v in %d pages, want %v in 3", got, pages, ids)
	}

	all, next, err := v.List(ctx, 0, "")
	if err != nil || len(all) != 7 || next != "" {
		t.Fatalf("List(0) = %d keys, %q, %v", len(all), next, err)
	}
	for _, bad := range []string{"!!!", "QUJD", "a b"} { // "QUJD" decodes to the invalid id "ABC"
		if _, _, err := v.List(ctx, 3, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("List with token %q: got %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestAttachChain(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "web", ECDSAP256)
	leaf := selfSigned(t, testKey(t, ECDSAP256))
	other := selfSigned(t, testKey(t, Ed25519))

	key, err := v.AttachChain(ctx, "web", 0, [][]byte{leaf, other})
	if err != nil {
		t.Fatal(err)
	}
	if c := key.Versions[0].Chain; len(c) != 2 || !bytes.Equal(c[0], leaf) || !bytes.Equal(c[1], other) {
		t.Fatalf("attached chain = %d certificates", len(c))
	}
	for name, chain := range map[string][][]byte{
		"mismatched leaf": {other},
		"unparsable":      {leaf, []byte("not a certificate")},
		"empty":           nil,
		"too long":        slices.Repeat([][]byte{leaf}, maxChainCerts+1),
	} {
		if _, err := v.AttachChain(ctx, "web", 0, chain); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
	// The failed attempts left the first chain in place.
	key, _ = v.Get(ctx, "web")
	if len(key.Versions[0].Chain) != 2 {
		t.Fatal("a rejected chain replaced the attached one")
	}
	// Snapshots are copies.
	key.Versions[0].Chain[0][0] ^= 0xff
	key, _ = v.Get(ctx, "web")
	if !bytes.Equal(key.Versions[0].Chain[0], leaf) {
		t.Fatal("modifying a snapshot changed the vault")
	}
}

// failingStore fails every Commit while fail is set.
type failingStore struct {
	Store
	fail atomic.Bool
}

func (s *failingStore) Commit(ctx context.Context, w Write) (int64, error) {
	if s.fail.Load() {
		return 0, errors.New("disk full")
	}
	return s.Store.Commit(ctx, w)
}

func TestFailedWriteChangesNothing(t *testing.T) {
	bs, err := OpenBolt(t.TempDir() + "/vault.db")
	if err != nil {
		t.Fatal(err)
	}
	store := &failingStore{Store: bs}
	v, err := New(ctx, store, testKEK)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	importTestKey(t, v, "web", ECDSAP256)
	if _, err := v.Rotate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.SetVersionEnabled(ctx, "web", 1, false); err != nil {
		t.Fatal(err)
	}
	want, _ := v.Get(ctx, "web")

	store.fail.Store(true)
	for name, op := range map[string]func() error{
		"Create":  func() error { _, err := v.Create(ctx, "api", Ed25519, nil); return err },
		"Import":  func() error { _, err := v.Import(ctx, "api", pemOf(t, testKey(t, Ed25519), "pkcs8"), nil); return err },
		"Rotate":  func() error { _, err := v.Rotate(ctx, "web"); return err },
		"Disable": func() error { _, err := v.SetVersionEnabled(ctx, "web", 2, false); return err },
		"Enable":  func() error { _, err := v.SetVersionEnabled(ctx, "web", 1, true); return err },
		"Destroy": func() error { _, err := v.DestroyVersion(ctx, "web", 1); return err },
		"Attach": func() error {
			_, err := v.AttachChain(ctx, "web", 1, [][]byte{selfSigned(t, testKey(t, ECDSAP256))})
			return err
		},
	} {
		if err := op(); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("%s with a failing store: got %v", name, err)
		}
	}
	got, _ := v.Get(ctx, "web")
	if got.Primary != want.Primary || got.Versions[0].State != StateDisabled || got.Versions[1].State != StateEnabled || got.Versions[0].Chain != nil {
		t.Fatalf("failed writes changed the key: %+v", got)
	}
	if _, err := v.Get(ctx, "api"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed Create left key api: %v", err)
	}
	signOK(t, v, "web", 2)
	signFails(t, v, "web", 1, ErrFailedPrecondition)

	store.fail.Store(false)
	if _, err := v.Create(ctx, "api", Ed25519, nil); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrent runs key operations while the key changes; run with -race.
func TestConcurrent(t *testing.T) {
	v, _ := newTestVault(t)
	if _, err := v.Create(ctx, "web", ECDSAP256, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := v.Sign(ctx, "web", 1, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
				if err != nil && !errors.Is(err, ErrFailedPrecondition) {
					t.Error(err)
					return
				}
				if _, _, err := v.List(ctx, 10, ""); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 10 {
		if _, err := v.Rotate(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if _, err := v.SetVersionEnabled(ctx, "web", 1, i%2 == 1); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Create(ctx, fmt.Sprintf("k%d", i), Ed25519, nil); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	key, err := v.Get(ctx, "web")
	if err != nil || key.Primary != 11 || key.Versions[0].State != StateEnabled {
		t.Fatalf("after concurrent changes: %+v, %v", key, err)
	}
}
