package keyvault

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSignRejects(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "ec", ECDSAP256)
	_, err := v.Sign(ctx, "ec", 0, tls.ECDSAWithP256AndSHA256, make([]byte, 31), true)
	assert.ErrorIs(t, err, ErrInvalidArgument, "short digest")
	_, err = v.Sign(ctx, "ec", 0, tls.ECDSAWithP256AndSHA256, make([]byte, 48), true)
	assert.ErrorIs(t, err, ErrInvalidArgument, "long digest")
	_, err = v.Sign(ctx, "ec", 2, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	assert.ErrorIs(t, err, ErrNotFound, "missing version")
	_, err = v.Sign(ctx, "nope", 0, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	assert.ErrorIs(t, err, ErrNotFound, "missing key")
	_, err = v.Sign(ctx, "Bad_ID", 0, tls.ECDSAWithP256AndSHA256, []byte("m"), false)
	assert.ErrorIs(t, err, ErrInvalidArgument, "invalid id")
}

// encryptPremaster returns a TLS 1.2 premaster for clientVersion and its
// RSA encryption.
func encryptPremaster(t *testing.T, pub *rsa.PublicKey, clientVersion uint16) (premaster, ciphertext []byte) {
	t.Helper()
	premaster = make([]byte, premasterLen)
	rand.Read(premaster)
	premaster[0], premaster[1] = byte(clientVersion>>8), byte(clientVersion)
	ciphertext, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	require.NoError(t, err)
	return premaster, ciphertext
}

// wantSubstitute is the test's own statement of the implicit-rejection
// substitute (draft-irtf-cfrg-rsa-guidance §7.1, the TLS premaster's 384
// bits): IRPRF(HMAC-SHA256(SHA256(I2OSP(d, k)), C), label, 384).
func wantSubstitute(priv *rsa.PrivateKey, ciphertext []byte) []byte {
	dh := sha256.Sum256(priv.D.FillBytes(make([]byte, priv.Size())))
	kdkMAC := hmac.New(sha256.New, dh[:])
	kdkMAC.Write(ciphertext)
	kdk := kdkMAC.Sum(nil)
	var out []byte
	for i := range 2 {
		m := hmac.New(sha256.New, kdk)
		m.Write([]byte{0, byte(i)})
		m.Write([]byte("handshaked TLS premaster implicit rejection"))
		m.Write(binary.BigEndian.AppendUint16(nil, 384))
		out = m.Sum(out)
	}
	return out[:premasterLen]
}

func TestDecryptPremaster(t *testing.T) {
	v, _ := newTestVault(t)
	priv := testKey(t, RSA2048).(*rsa.PrivateKey)
	pub := importTestKey(t, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	other := importTestKey(t, v, "rsa-other", RSA3072)
	premaster, ciphertext := encryptPremaster(t, pub, tls.VersionTLS12)

	decryptWith := func(t *testing.T, id string, ct []byte, clientVersion uint16) []byte {
		t.Helper()
		got, err := v.Decrypt(ctx, id, 0, DecryptRSAPKCS1TLSPremaster, ct, clientVersion)
		require.NoError(t, err)
		require.Len(t, got, premasterLen)
		return got
	}
	decrypt := func(t *testing.T, ct []byte, clientVersion uint16) []byte {
		t.Helper()
		return decryptWith(t, "rsa", ct, clientVersion)
	}
	// rejected checks that a rejected ciphertext yields the substitute the
	// draft derives from it and the key, unrelated to the premaster, and
	// the same on every query: a caller asking twice learns nothing.
	rejected := func(t *testing.T, ct []byte, clientVersion uint16) []byte {
		t.Helper()
		a, b := decrypt(t, ct, clientVersion), decrypt(t, ct, clientVersion)
		assert.NotEqual(t, premaster, a, "a rejected ciphertext yielded the premaster")
		assert.Equal(t, a, b, "the same rejected ciphertext yielded different bytes on two queries")
		assert.Equal(t, wantSubstitute(priv, ct), a, "the substitute is not HMAC-derived from the key and the ciphertext")
		return a
	}

	t.Run("valid", func(t *testing.T) {
		assert.Equal(t, premaster, decrypt(t, ciphertext, tls.VersionTLS12))
		assert.Equal(t, premaster, decrypt(t, ciphertext, tls.VersionTLS12), "a valid ciphertext queried twice")
	})
	t.Run("no version check", func(t *testing.T) {
		assert.Equal(t, premaster, decrypt(t, ciphertext, 0))
	})
	t.Run("version mismatch", func(t *testing.T) {
		// The padding is valid here, so only the version check selects the
		// substitute; it is the same one a bad padding of this ciphertext
		// would give: one derivation serves both rejections.
		rejected(t, ciphertext, tls.VersionTLS11)
	})
	t.Run("corrupted ciphertext", func(t *testing.T) {
		seen := map[string]bool{}
		for _, i := range []int{0, 1, 100, len(ciphertext) - 1} {
			ct := bytes.Clone(ciphertext)
			ct[i] ^= 0x01
			got := rejected(t, ct, tls.VersionTLS12)
			assert.False(t, seen[string(got)], "two different bad ciphertexts yielded the same substitute")
			seen[string(got)] = true
		}
	})
	t.Run("plaintext of wrong length", func(t *testing.T) {
		for _, n := range []int{0, 47, 49} {
			plaintext := make([]byte, n)
			copy(plaintext, premaster)
			ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, plaintext)
			require.NoError(t, err)
			rejected(t, ct, tls.VersionTLS12)
		}
	})
	t.Run("not below the modulus", func(t *testing.T) {
		rejected(t, bytes.Repeat([]byte{0xff}, len(ciphertext)), tls.VersionTLS12)
	})
	t.Run("another key", func(t *testing.T) {
		// The substitute is a secret of the key: another key's substitute for
		// the same bytes differs (here a 3072-bit key, so the ciphertext is
		// padded to its length).
		ct := append(make([]byte, other.Versions[0].PublicKey.(*rsa.PublicKey).Size()-len(ciphertext)), ciphertext...)
		ct[len(ct)-1] ^= 1
		a := decryptWith(t, "rsa-other", ct, tls.VersionTLS12)
		assert.Equal(t, a, decryptWith(t, "rsa-other", ct, tls.VersionTLS12))
		assert.NotEqual(t, wantSubstitute(priv, ct[len(ct)-len(ciphertext):]), a)
	})
	t.Run("wrong ciphertext length", func(t *testing.T) {
		for _, ct := range [][]byte{nil, ciphertext[1:], append(bytes.Clone(ciphertext), 0)} {
			_, err := v.Decrypt(ctx, "rsa", 0, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12)
			assert.ErrorIs(t, err, ErrInvalidArgument, "%d bytes", len(ct))
		}
	})
}

func TestDecryptOAEP(t *testing.T) {
	v, _ := newTestVault(t)
	pub := importTestKey(t, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	msg := []byte("a data key")
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
	require.NoError(t, err)
	got, err := v.Decrypt(ctx, "rsa", 1, DecryptRSAOAEPSHA256, ct, 0)
	require.NoError(t, err)
	assert.Equal(t, msg, got)
	ct[10] ^= 1
	_, err = v.Decrypt(ctx, "rsa", 1, DecryptRSAOAEPSHA256, ct, 0)
	assert.ErrorIs(t, err, ErrInvalidArgument, "corrupted")
	_, err = v.Decrypt(ctx, "rsa", 1, DecryptModeUnspecified, ct, 0)
	assert.ErrorIs(t, err, ErrInvalidArgument, "unspecified mode")
}

func TestDecryptNeedsRSA(t *testing.T) {
	v, _ := newTestVault(t)
	importTestKey(t, v, "ec", ECDSAP256)
	for _, mode := range []DecryptMode{DecryptRSAPKCS1TLSPremaster, DecryptRSAOAEPSHA256} {
		_, err := v.Decrypt(ctx, "ec", 0, mode, make([]byte, 256), 0)
		assert.ErrorIs(t, err, ErrInvalidArgument, "%v with an EC key", mode)
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
			require.NoError(t, err)
			csr, err := x509.ParseCertificateRequest(der)
			require.NoError(t, err)
			require.NoError(t, csr.CheckSignature())
			assert.True(t, publicKeyEqual(csr.PublicKey, key.Versions[0].PublicKey), "CSR carries another public key")
			assert.Equal(t, "example.com", csr.Subject.CommonName)
			assert.Equal(t, dnsNames, csr.DNSNames)
			assert.True(t, slices.EqualFunc(csr.IPAddresses, ips, net.IP.Equal), "CSR IPs = %v", csr.IPAddresses)
		})
	}
}

// BenchmarkDecryptPremasterRSA2048 compares the vault's premaster
// decryption (implicit rejection with the derived substitute included; the
// raw RSA operation OpenSSL's with the openssl build tag) with crypto/rsa's
// decryption alone, and the substitute's derivation alone, in the same run.
func BenchmarkDecryptPremasterRSA2048(b *testing.B) {
	v, _ := newTestVault(b)
	pub := importTestKey(b, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	priv := testKey(b, RSA2048).(*rsa.PrivateKey)
	premaster := make([]byte, premasterLen)
	premaster[0], premaster[1] = 3, 3
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, premaster)
	require.NoError(b, err)
	b.Run("crypto-rsa", func(b *testing.B) {
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			key := make([]byte, premasterLen)
			for pb.Next() {
				if err := rsa.DecryptPKCS1v15SessionKey(nil, priv, ct, key); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("substitute-only", func(b *testing.B) {
		for b.Loop() {
			kdk, _ := softwareRSA{priv}.rejectionKDK(ctx, ct)
			rejectionSubstitute(kdk)
		}
	})
	b.Run("vault", func(b *testing.B) {
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := v.Decrypt(ctx, "rsa", 0, DecryptRSAPKCS1TLSPremaster, ct, tls.VersionTLS12); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkSignRSA2048PSS compares the vault's RSA-PSS signature (OpenSSL's
// with the openssl build tag) with crypto/rsa's in the same run.
func BenchmarkSignRSA2048PSS(b *testing.B) {
	v, _ := newTestVault(b)
	importTestKey(b, v, "rsa", RSA2048)
	priv := testKey(b, RSA2048).(*rsa.PrivateKey)
	digest := sha256.Sum256([]byte("transcript"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	b.Run("crypto-rsa", func(b *testing.B) {
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := priv.Sign(rand.Reader, digest[:], opts); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("vault", func(b *testing.B) {
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := v.Sign(ctx, "rsa", 0, tls.PSSWithSHA256, digest[:], true); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// reportCPU returns a function that reports the process' CPU time (user
// and system) per operation since reportCPU: on a busy machine a
// benchmark's ns/op is mostly waiting for a core, its CPU time per
// operation is not.
func reportCPU(b *testing.B) func() {
	start := processCPU(b)
	return func() { b.ReportMetric(float64(processCPU(b)-start)/float64(b.N), "cpu-ns/op") }
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// TestDisabledVersionDoesNoKeyWork: no private-key operation uses a disabled
// or destroyed version, named by number or as the primary (version 0).
func TestDisabledVersionDoesNoKeyWork(t *testing.T) {
	v, _ := newTestVault(t)
	pub := importTestKey(t, v, "rsa", RSA2048).Versions[0].PublicKey.(*rsa.PublicKey)
	_, pkcs1 := encryptPremaster(t, pub, tls.VersionTLS12)
	oaep, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, []byte("data key"), nil)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}}
	ops := func(version uint32) map[string]func() error {
		return map[string]func() error{
			"Sign": func() error {
				_, err := v.Sign(ctx, "rsa", version, tls.PSSWithSHA256, []byte("m"), false)
				return err
			},
			"Decrypt premaster": func() error {
				_, err := v.Decrypt(ctx, "rsa", version, DecryptRSAPKCS1TLSPremaster, pkcs1, tls.VersionTLS12)
				return err
			},
			"Decrypt OAEP": func() error {
				_, err := v.Decrypt(ctx, "rsa", version, DecryptRSAOAEPSHA256, oaep, 0)
				return err
			},
			"CreateCSR": func() error {
				_, err := v.CreateCSR(ctx, "rsa", version, pkix.Name{CommonName: "x"}, nil, nil)
				return err
			},
			"CreateSelfSignedCertificate": func() error {
				_, err := v.CreateSelfSignedCertificate(ctx, "rsa", version, tmpl)
				return err
			},
		}
	}
	check := func(state string, want error) {
		t.Helper()
		for _, version := range []uint32{0, 1} {
			for name, op := range ops(version) {
				if want == nil {
					assert.NoError(t, op(), "%s with %s version %d", name, state, version)
				} else {
					assert.ErrorIs(t, op(), want, "%s with %s version %d", name, state, version)
				}
			}
		}
	}
	check("enabled", nil)
	_, err = v.SetVersionEnabled(ctx, "rsa", 1, false)
	require.NoError(t, err)
	check("disabled", ErrFailedPrecondition)
	_, err = v.DestroyVersion(ctx, "rsa", 1)
	require.NoError(t, err)
	check("destroyed", ErrFailedPrecondition)
}
