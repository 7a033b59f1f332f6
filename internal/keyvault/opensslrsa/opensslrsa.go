//go:build openssl

// Package opensslrsa does the private-key operations of an in-memory RSA
// key with OpenSSL's libcrypto (3.0 or later): PKCS #1 v1.5 and PSS
// signatures through EVP_PKEY_sign, and the raw RSA decryption primitive
// (RSADP), on which the vault removes the padding itself. OpenSSL's
// assembly Montgomery multiplication signs RSA-2048 about twice as fast as
// crypto/rsa on x86-64; its private-key operations run in constant time
// with blinding, as crypto/rsa's do.
//
// It needs cgo and libcrypto, so it is built only with the openssl build
// tag; the default build stays static and cgo-free.
package opensslrsa

/*
#cgo LDFLAGS: -lcrypto
#include <openssl/opensslv.h>
#if OPENSSL_VERSION_NUMBER < 0x30000080L
#error "opensslrsa needs OpenSSL 3.0.8 or later"
#endif
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

// Each helper is one cgo call that leaves the calling thread's error queue
// empty, so that no error of one goroutine's operation shows in another's:
// goroutines share threads. It returns 0 on success, else OpenSSL's error
// code (or -1 if OpenSSL queued none).
static unsigned long hs_failed(void) {
	unsigned long e = ERR_peek_last_error();
	ERR_clear_error();
	return e ? e : (unsigned long)-1;
}

static unsigned long hs_load(const unsigned char *der, long len, EVP_PKEY **out) {
	*out = d2i_PrivateKey(EVP_PKEY_RSA, NULL, &der, len);
	return *out ? 0 : hs_failed();
}

static const EVP_MD *hs_md(int hash) {
	switch (hash) {
	case 1: return EVP_sha1();
	case 224: return EVP_sha224();
	case 256: return EVP_sha256();
	case 384: return EVP_sha384();
	case 512: return EVP_sha512();
	}
	return NULL;
}

// hs_sign signs a digest of hash (hs_md) with PKCS #1 v1.5 padding, or
// with PSS if pss, MGF1 over the same hash and a salt of saltlen bytes
// (or an RSA_PSS_SALTLEN_* value).
static unsigned long hs_sign(EVP_PKEY *pkey, int hash, int pss, int saltlen,
		const unsigned char *tbs, size_t tbslen, unsigned char *sig, size_t *siglen) {
	const EVP_MD *md = hs_md(hash);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	int ok = md != NULL && ctx != NULL && EVP_PKEY_sign_init(ctx) > 0 &&
		EVP_PKEY_CTX_set_rsa_padding(ctx, pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) > 0 &&
		EVP_PKEY_CTX_set_signature_md(ctx, md) > 0 &&
		(!pss || (EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0 && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, saltlen) > 0)) &&
		EVP_PKEY_sign(ctx, sig, siglen, tbs, tbslen) > 0;
	EVP_PKEY_CTX_free(ctx);
	return ok ? 0 : hs_failed();
}

// hs_decrypt_raw is RSADP with no padding: out gets as many bytes as the
// modulus.
static unsigned long hs_decrypt_raw(EVP_PKEY *pkey, const unsigned char *in, size_t inlen,
		unsigned char *out, size_t *outlen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	int ok = ctx != NULL && EVP_PKEY_decrypt_init(ctx) > 0 &&
		EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) > 0 &&
		EVP_PKEY_decrypt(ctx, out, outlen, in, inlen) > 0;
	EVP_PKEY_CTX_free(ctx);
	return ok ? 0 : hs_failed();
}
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"runtime"
	"unsafe"
)

// Key is an RSA private key held by libcrypto. Its memory is libcrypto's:
// EVP_PKEY_free, when the Key is garbage collected, cleanses the private
// components (BN_clear_free) before freeing them. Its methods are safe for
// concurrent use.
type Key struct {
	pkey *C.EVP_PKEY
	pub  *rsa.PublicKey
}

// minVersion is the oldest libcrypto New accepts, 3.0.8: older ones
// unblind an RSA decryption in time that depends on the result, a
// Bleichenbacher oracle over the network (CVE-2022-4304). The process may
// run with another libcrypto than it was built against, so New checks the
// one it runs with.
const minVersion = 0x30000080

// checkVersion fails for a libcrypto older than minVersion, of version
// number num (OPENSSL_VERSION_NUMBER's form) and name.
func checkVersion(num uint64, name string) error {
	if num < minVersion {
		return fmt.Errorf("opensslrsa: %s is older than 3.0.8, whose RSA decryption has a timing oracle (CVE-2022-4304)", name)
	}
	return nil
}

// New copies priv into libcrypto. The caller may clear or drop priv after.
func New(priv *rsa.PrivateKey) (*Key, error) {
	if err := checkVersion(uint64(C.OpenSSL_version_num()), Version()); err != nil {
		return nil, err
	}
	der := x509.MarshalPKCS1PrivateKey(priv)
	defer clear(der)
	var pkey *C.EVP_PKEY
	if e := C.hs_load((*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)), &pkey); e != 0 {
		// OpenSSL's reason names what failed to decode, never a value.
		return nil, fmt.Errorf("opensslrsa: load the private key: %w", opensslError(e))
	}
	k := &Key{pkey: pkey, pub: &rsa.PublicKey{N: new(big.Int).Set(priv.N), E: priv.E}}
	runtime.AddCleanup(k, func(p *C.EVP_PKEY) { C.EVP_PKEY_free(p) }, pkey)
	return k, nil
}

// Public returns the key's public half (*rsa.PublicKey).
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Size is the modulus' length in bytes.
func (k *Key) Size() int { return k.pub.Size() }

// errHash is for a hash OpenSSL is not asked to sign with here.
var errHash = errors.New("opensslrsa: unsupported hash")

// Sign signs digest, the digest of the message under opts.HashFunc(), as
// crypto/rsa's PrivateKey.Sign does: RSASSA-PSS (RFC 8017 §8.1) if opts is
// *rsa.PSSOptions, RSASSA-PKCS1-v1_5 (§8.2) otherwise. OpenSSL draws the
// PSS salt and the blinding from its own DRBG, so random is not read.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	hash := opts.HashFunc()
	var id C.int
	switch hash {
	case crypto.SHA1:
		id = 1
	case crypto.SHA224:
		id = 224
	case crypto.SHA256:
		id = 256
	case crypto.SHA384:
		id = 384
	case crypto.SHA512:
		id = 512
	default:
		return nil, fmt.Errorf("%w %v", errHash, hash)
	}
	if len(digest) != hash.Size() {
		return nil, fmt.Errorf("opensslrsa: a %v digest is %d bytes, not %d", hash, hash.Size(), len(digest))
	}
	var pss, saltLen C.int
	if o, ok := opts.(*rsa.PSSOptions); ok {
		pss = 1
		switch o.SaltLength {
		case rsa.PSSSaltLengthEqualsHash:
			saltLen = C.RSA_PSS_SALTLEN_DIGEST
		case rsa.PSSSaltLengthAuto:
			// crypto/rsa signs with the longest salt that fits.
			saltLen = C.RSA_PSS_SALTLEN_MAX
		default:
			if o.SaltLength < 0 {
				return nil, fmt.Errorf("opensslrsa: PSS salt length %d", o.SaltLength)
			}
			saltLen = C.int(o.SaltLength)
		}
	}
	sig := make([]byte, k.Size())
	sigLen := C.size_t(len(sig))
	e := C.hs_sign(k.pkey, id, pss, saltLen, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &sigLen)
	runtime.KeepAlive(k) // k.pkey is freed once k is unreachable
	if e != 0 {
		return nil, fmt.Errorf("opensslrsa: sign: %w", opensslError(e))
	}
	return sig[:sigLen], nil
}

// DecryptRaw returns RSADP (RFC 8017 §5.1.2) of ciphertext, which is as
// long as the modulus and below it: the padded message, as many bytes as
// the modulus, with no check of its padding. Its errors depend on public
// values only (lengths, a ciphertext not below the modulus).
func (k *Key) DecryptRaw(ciphertext []byte) ([]byte, error) {
	if len(ciphertext) != k.Size() {
		return nil, fmt.Errorf("opensslrsa: ciphertext is %d bytes, the modulus %d", len(ciphertext), k.Size())
	}
	out := make([]byte, k.Size())
	outLen := C.size_t(len(out))
	e := C.hs_decrypt_raw(k.pkey, (*C.uchar)(unsafe.Pointer(&ciphertext[0])), C.size_t(len(ciphertext)),
		(*C.uchar)(unsafe.Pointer(&out[0])), &outLen)
	runtime.KeepAlive(k)
	if e != 0 {
		clear(out)
		return nil, fmt.Errorf("opensslrsa: raw decryption: %w", opensslError(e))
	}
	return out[:outLen], nil
}

// Version is the version of the libcrypto the process runs with, such as
// "OpenSSL 3.0.19 27 Jan 2026".
func Version() string { return C.GoString(C.OpenSSL_version(C.OPENSSL_VERSION)) }

// opensslError is an error of libcrypto's error code e.
func opensslError(e C.ulong) error {
	if e == ^C.ulong(0) {
		return errors.New("libcrypto failed without a reason")
	}
	var buf [256]C.char
	C.ERR_error_string_n(e, &buf[0], C.size_t(len(buf)))
	return errors.New(C.GoString(&buf[0]))
}
