package keyvault

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
)

func TestSignRejects(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "ec", ECDSAP256)
	if _, err := v.Sign(ctx, "ec", 0, tls.ECDSAWithP256AndSHA256, make([]byte, 31), true); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("short digest: got %v, want ErrInvalidArgument", err)
	}
	if _, err := v.Sign(ctx, "ec", 0, tls.ECDSAWithP256AndSHA256, make([]byte, 48), true); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("long digest: got %v, want ErrInvalidArgument", err)
	}
	if _, err := v.Sign(ctx, "ec", 2, tls.ECDSAWithP256AndSHA256, []byte("m"), false); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing version: got %v, want ErrNotFound", err)
	}
	if _, err := v.Sign(ctx, "nope", 0, tls.ECDSAWithP256AndSHA256, []byte("m"), false); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing key: got %v, want ErrNotFound", err)
	}
	if _, err := v.Sign(ctx, "Bad_ID", 0, tls.ECDSAWithP256AndSHA256, []byte("m"), false); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("invalid id: got %v, want ErrInvalidArgument", err)
	}
}

// encryptPremaster returns a TLS 1.2 premaster for clientVersion and its
// RSA encryption.
func encryptPremaster(t *testing.T, pub *rsa.PublicKey, clientVersion uint16) (premaster, ciphertext []byte) {
	t.Helper()
	premaster = make([]byte, premasterLen)
	rand.Read(premaster)
	premaster[0], premaster[1] = byte(clientVersion>>8), byte(clientVersion)
	ciphertext, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	if err != nil {
		t.Fatal(err)
	}
	return premaster, ciphertext
}

func TestDecryptPremaster(t *testing.T) {
	v, _ := newTestVault(t)
	pub := importTestKey(t, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	premaster, ciphertext := encryptPremaster(t, pub, tls.VersionTLS12)

	decrypt := func(t *testing.T, ct []byte, clientVersion uint16) []byte {
		t.Helper()
		got, err := v.Decrypt(ctx, "rsa", 0, DecryptRSAPKCS1TLSPremaster, ct, clientVersion)
		if err != nil {
			t.Fatalf("Decrypt: %v", err)
		}
		if len(got) != premasterLen {
			t.Fatalf("Decrypt returned %d bytes, want %d", len(got), premasterLen)
		}
		return got
	}
	// random checks that a rejected ciphertext yields fresh random bytes,
	// unrelated to the premaster and different on every call.
	random := func(t *testing.T, ct []byte, clientVersion uint16) {
		t.Helper()
		a, b := decrypt(t, ct, clientVersion), decrypt(t, ct, clientVersion)
		if bytes.Equal(a, premaster) || bytes.Equal(a, b) {
			t.Fatal("a rejected ciphertext did not yield fresh random bytes")
		}
	}

	t.Run("valid", func(t *testing.T) {
		if got := decrypt(t, ciphertext, tls.VersionTLS12); !bytes.Equal(got, premaster) {
			t.Fatal("premaster differs")
		}
	})
	t.Run("no version check", func(t *testing.T) {
		if got := decrypt(t, ciphertext, 0); !bytes.Equal(got, premaster) {
			t.Fatal("premaster differs")
		}
	})
	t.Run("version mismatch", func(t *testing.T) {
		random(t, ciphertext, tls.VersionTLS11)
	})
	t.Run("corrupted ciphertext", func(t *testing.T) {
		for _, i := range []int{0, 1, 100, len(ciphertext) - 1} {
			ct := bytes.Clone(ciphertext)
			ct[i] ^= 0x01
			random(t, ct, tls.VersionTLS12)
		}
	})
	t.Run("plaintext of wrong length", func(t *testing.T) {
		for _, n := range []int{0, 47, 49} {
			plaintext := make([]byte, n)
			copy(plaintext, premaster)
			ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, plaintext)
			if err != nil {
				t.Fatal(err)
			}
			random(t, ct, tls.VersionTLS12)
		}
	})
	t.Run("not below the modulus", func(t *testing.T) {
		random(t, bytes.Repeat([]byte{0xff}, len(ciphertext)), tls.VersionTLS12)
	})
	t.Run("wrong ciphertext length", func(t *testing.T) {
		for _, ct := range [][]byte{nil, ciphertext[1:], append(bytes.Clone(ciphertext), 0)} {
			if _, err := v.Decrypt(ctx, "rsa", 0, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%d bytes: got %v, want ErrInvalidArgument", len(ct), err)
			}
		}
	})
}

func TestDecryptOAEP(t *testing.T) {
	v, _ := newTestVault(t)
	pub := importTestKey(t, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	msg := []byte("a data key")
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Decrypt(ctx, "rsa", 1, DecryptRSAOAEPSHA256, ct, 0)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Decrypt = %q, %v; want %q", got, err, msg)
	}
	ct[10] ^= 1
	if _, err := v.Decrypt(ctx, "rsa", 1, DecryptRSAOAEPSHA256, ct, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("corrupted: got %v, want ErrInvalidArgument", err)
	}
	if _, err := v.Decrypt(ctx, "rsa", 1, DecryptModeUnspecified, ct, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unspecified mode: got %v, want ErrInvalidArgument", err)
	}
}

func TestDecryptNeedsRSA(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "ec", ECDSAP256)
	for _, mode := range []DecryptMode{DecryptRSAPKCS1TLSPremaster, DecryptRSAOAEPSHA256} {
		if _, err := v.Decrypt(ctx, "ec", 0, mode, make([]byte, 256), 0); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%v with an EC key: got %v, want ErrInvalidArgument", mode, err)
		}
	}
}

func TestCreateCSR(t *testing.T) {
	v, _ := newTestVault(t)
	dnsNames := []string{"example.com", "www.example.com"}
	ips := []net.IP{net.ParseIP("192.0.2.1").To4(), net.ParseIP("2001:db8::1")}
	for _, alg := range []Algorithm{RSA2048, ECDSAP256, ECDSAP384, Ed25519} {
		t.Run(alg.String(), func(t *testing.T) {
			id := strings.ToLower(strings.ReplaceAll(alg.String(), "_", "-"))
			key := importTestKey(t, v, id, alg)
			der, err := v.CreateCSR(ctx, id, 0, pkix.Name{CommonName: "example.com", Organization: []string{"Example"}}, dnsNames, ips)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatal(err)
			}
			if !publicKeyEqual(csr.PublicKey, key.Versions[0].PublicKey) {
				t.Error("CSR carries another public key")
			}
			if csr.Subject.CommonName != "example.com" || !slices.Equal(csr.DNSNames, dnsNames) ||
				!slices.EqualFunc(csr.IPAddresses, ips, net.IP.Equal) {
				t.Errorf("CSR subject/SANs = %v %v %v", csr.Subject, csr.DNSNames, csr.IPAddresses)
			}
		})
	}
}

func BenchmarkDecryptPremasterRSA2048(b *testing.B) {
	v, _ := newTestVault(b)
	pub := importTestKey(b, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	premaster := make([]byte, premasterLen)
	premaster[0], premaster[1] = 3, 3
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Decrypt(ctx, "rsa", 0, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkSignECDSAP256(b *testing.B) {
	v, _ := newTestVault(b)
	importTestKey(b, v, "ec", ECDSAP256)
	digest := sha256.Sum256([]byte("transcript"))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Sign(ctx, "ec", 0, tls.ECDSAWithP256AndSHA256, digest[:], true); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
