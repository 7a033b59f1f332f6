package keyvault

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// importSeeds are valid PEMs of every supported kind.
func importSeeds(tb testing.TB) map[string][]byte {
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}})
	return map[string][]byte{
		"pkcs1-rsa2048":          pemOf(tb, testKey(tb, RSA2048), "pkcs1"),
		"pkcs8-rsa2048":          pemOf(tb, testKey(tb, RSA2048), "pkcs8"),
		"pkcs8-p256":             pemOf(tb, testKey(tb, ECDSAP256), "pkcs8"),
		"pkcs8-ed25519":          pemOf(tb, testKey(tb, Ed25519), "pkcs8"),
		"sec1-p256":              pemOf(tb, testKey(tb, ECDSAP256), "sec1"),
		"sec1-p384-with-params":  append(ecParams, pemOf(tb, testKey(tb, ECDSAP384), "sec1")...),
		"pkcs8-p384-with-banner": append([]byte("key for example.com\n"), pemOf(tb, testKey(tb, ECDSAP384), "pkcs8")...),
	}
}

func TestImport(t *testing.T) {
	v, _ := newTestVault(t)
	want := map[string]Algorithm{
		"pkcs1-rsa2048": RSA2048, "pkcs8-rsa2048": RSA2048, "pkcs8-p256": ECDSAP256, "pkcs8-ed25519": Ed25519,
		"sec1-p256": ECDSAP256, "sec1-p384-with-params": ECDSAP384, "pkcs8-p384-with-banner": ECDSAP384,
	}
	for name, data := range importSeeds(t) {
		t.Run(name, func(t *testing.T) {
			key, err := v.Import(ctx, name, data, map[string]string{"source": name})
			if err != nil {
				t.Fatal(err)
			}
			ver := key.Versions[0]
			if ver.Algorithm != want[name] || !ver.Imported || ver.State != StateEnabled || key.Primary != 1 || key.Labels["source"] != name {
				t.Fatalf("imported key = %+v", key)
			}
			if !publicKeyEqual(testKey(t, ver.Algorithm).Public(), ver.PublicKey) {
				t.Fatal("imported key has another public key")
			}
		})
	}
}

func TestImportRejects(t *testing.T) {
	v, _ := newTestVault(t)
	p256 := testKey(t, ECDSAP256)
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := pemOf(t, p256, "pkcs8")
	block, _ := pem.Decode(good)
	encryptedHeaders := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{
		"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,0123456789ABCDEF0123456789ABCDEF",
	}, Bytes: block.Bytes})
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t, p256)})
	truncated := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: block.Bytes[:len(block.Bytes)/2]})

	cases := map[string][]byte{
		"empty":             nil,
		"garbage":           []byte("this is not a key"),
		"no end":            good[:len(good)-20],
		"truncated DER":     truncated,
		"encrypted pkcs8":   pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: block.Bytes}),
		"encrypted headers": encryptedHeaders,
		"certificate":       cert,
		"key and cert":      append(bytes.Clone(good), cert...),
		"two keys":          append(bytes.Clone(good), good...),
		"pkcs8 in pkcs1":    pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: block.Bytes}),
		"p521":              pemOf(t, p521, "pkcs8"),
		"too large":         append(bytes.Repeat([]byte(" "), maxPEMSize), good...),
	}
	// The standard library parses RSA-1024; the vault's size check refuses it.
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	cases["rsa1024"] = pemOf(t, rsa1024, "pkcs1")
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			id := strings.ToLower(strings.ReplaceAll(name, " ", "-"))
			_, err := v.Import(ctx, id, data, nil)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if _, err := v.Get(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a failed import left key %q: %v", id, err)
			}
			// No error may quote the key.
			if body := block.Bytes; bytes.Contains([]byte(err.Error()), body[len(body)-16:]) {
				t.Fatal("error quotes key bytes")
			}
		})
	}
}

func TestImportDuplicateID(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "dup", Ed25519)
	if _, err := v.Import(ctx, "dup", pemOf(t, testKey(t, ECDSAP256), "pkcs8"), nil); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("got %v, want ErrAlreadyExists", err)
	}
	key, err := v.Get(ctx, "dup")
	if err != nil || key.Versions[0].Algorithm != Ed25519 {
		t.Fatalf("Get = %+v, %v; want the first key untouched", key, err)
	}
}

func FuzzImport(f *testing.F) {
	for _, data := range importSeeds(f) {
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("\x00\xff garbage"))

	v, _ := newTestVault(f)
	var n atomic.Uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		id := "fuzz-" + strconv.FormatUint(n.Add(1), 10)
		key, err := v.Import(ctx, id, data, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("Import error %v does not wrap ErrInvalidArgument", err)
			}
			if _, err := v.Get(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a failed import left key %q: %v", id, err)
			}
			return
		}
		got, err := v.Get(ctx, id)
		if err != nil || got.Primary != 1 || len(got.Versions) != 1 || got.Versions[0].Algorithm != key.Versions[0].Algorithm {
			t.Fatalf("Get after Import = %+v, %v", got, err)
		}
		ver := got.Versions[0]
		scheme := SchemesFor(ver.Algorithm)[0]
		msg := []byte("fuzz")
		sig, err := v.Sign(ctx, id, 0, scheme, msg, false)
		if err != nil {
			t.Fatalf("Sign with an imported key: %v", err)
		}
		if err := verifySignature(ver.PublicKey, scheme, msg, sig); err != nil {
			t.Fatalf("imported key signs wrongly: %v", err)
		}
	})
}
