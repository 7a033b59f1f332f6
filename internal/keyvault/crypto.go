package keyvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"

	"github.com/handshaked/handshaked/internal/sigscheme"
)

// Sign signs input with a version of key id (0: the primary) using a TLS
// signature scheme that fits the key. If isDigest, input is the digest of
// the message under the scheme's hash; otherwise input is the message and
// the vault hashes it. ed25519 always signs the message itself.
//
// A scheme fits a key if the key can produce it in some TLS version, which
// is what it can produce in TLS 1.2: there an ECDSA scheme names only the
// hash, so a P-384 key signs ecdsa_secp256r1_sha256 as ECDSA over SHA-256
// (RFC 8446 §4.2.3, RFC 5246 §7.4.1.4.1). The signature is the same one a
// TLS 1.3 reading would give where both allow the scheme; the vault does not
// know the version a caller signs for, so the rule that narrows the choice
// for TLS 1.3 applies where the scheme is chosen: SignatureSchemes.
func (v *Vault) Sign(ctx context.Context, id string, version uint32, scheme tls.SignatureScheme, input []byte, isDigest bool) ([]byte, error) {
	sig, _, err := v.SignVersion(ctx, id, version, scheme, input, isDigest)
	return sig, err
}

// SignVersion is Sign, and it names the version it used, from the one
// lookup it makes (the zero UsedVersion when it found none): a caller that
// reports the version and its algorithm need not look the key up again
// for each signature.
func (v *Vault) SignVersion(ctx context.Context, id string, version uint32, scheme tls.SignatureScheme, input []byte, isDigest bool) ([]byte, UsedVersion, error) {
	ver, err := v.enabledVersion(ctx, id, version)
	used := ver.used()
	if err != nil {
		return nil, used, err
	}
	s, ok := sigscheme.Lookup(scheme)
	if !ok || !ver.alg.sigschemeKey().Fits(s, tls.VersionTLS12) {
		return nil, used, fmt.Errorf("keyvault: key %q version %d: signature scheme %v does not fit an %v key: %w", id, ver.number, scheme, ver.alg, ErrInvalidArgument)
	}
	opts := s.SignerOpts()
	hash := s.Hash
	switch {
	case isDigest && hash == 0:
		return nil, used, fmt.Errorf("keyvault: %v signs the message itself, not a digest: %w", scheme, ErrInvalidArgument)
	case isDigest && len(input) != hash.Size():
		return nil, used, fmt.Errorf("keyvault: a %v digest is %d bytes, not %d: %w", scheme, hash.Size(), len(input), ErrInvalidArgument)
	case !isDigest:
		input = s.Digest(input)
	}
	sig, err := ver.signer.Sign(rand.Reader, input, opts)
	if err != nil {
		return nil, used, fmt.Errorf("keyvault: key %q version %d: sign with %v: %w", id, ver.number, scheme, err)
	}
	return sig, used, nil
}

// SignatureSchemes returns the TLS signature schemes a version of key id (0:
// the primary) can produce in TLS version tlsVersion (tls.VersionTLS12 or
// tls.VersionTLS13), most preferred first: the key's answer to "which
// schemes can you sign with", as a handshake asks it before choosing one
// the client accepts (RFC 8446 §4.2.3 narrows ECDSA to the key's curve and
// leaves rsa_pkcs1 out in TLS 1.3).
func (v *Vault) SignatureSchemes(ctx context.Context, id string, version uint32, tlsVersion uint16) ([]tls.SignatureScheme, error) {
	if tlsVersion != tls.VersionTLS12 && tlsVersion != tls.VersionTLS13 {
		return nil, fmt.Errorf("keyvault: TLS version %#04x: signature schemes are for TLS 1.2 or 1.3: %w", tlsVersion, ErrInvalidArgument)
	}
	ver, err := v.enabledVersion(ctx, id, version)
	if err != nil {
		return nil, err
	}
	return ver.alg.sigschemeKey().Schemes(tlsVersion), nil
}

// premasterLen is the length of an RSA-encrypted premaster secret
// (RFC 5246 §7.4.7.1).
const premasterLen = 48

// Decrypt decrypts ciphertext with an RSA version of key id (0: the
// primary). In DecryptRSAPKCS1TLSPremaster mode it never fails for a
// ciphertext as long as the modulus: see decryptPremaster.
// expectedClientVersion is the client_version of the ClientHello, or 0 to
// skip the version check.
func (v *Vault) Decrypt(ctx context.Context, id string, version uint32, mode DecryptMode, ciphertext []byte, expectedClientVersion uint16) ([]byte, error) {
	if mode != DecryptRSAPKCS1TLSPremaster && mode != DecryptRSAOAEPSHA256 {
		return nil, fmt.Errorf("keyvault: decrypt mode %v: %w", mode, ErrInvalidArgument)
	}
	ver, err := v.enabledVersion(ctx, id, version)
	if err != nil {
		return nil, err
	}
	pub, isRSA := ver.signer.Public().(*rsa.PublicKey)
	key, canDecrypt := rsaPrivateOf(ver.signer)
	if !isRSA || !canDecrypt {
		return nil, fmt.Errorf("keyvault: key %q version %d is %v; decryption needs an RSA key: %w", id, ver.number, ver.alg, ErrInvalidArgument)
	}
	// The length is public (it is on the wire), so rejecting it tells an
	// attacker nothing.
	if len(ciphertext) != pub.Size() {
		return nil, fmt.Errorf("keyvault: key %q version %d: ciphertext is %d bytes, the modulus %d: %w", id, ver.number, len(ciphertext), pub.Size(), ErrInvalidArgument)
	}
	if mode == DecryptRSAOAEPSHA256 {
		plaintext, err := key.decryptOAEP(ctx, ciphertext)
		if err != nil {
			return nil, fmt.Errorf("keyvault: key %q version %d: decryption failed: %w", id, ver.number, ErrInvalidArgument)
		}
		return plaintext, nil
	}
	premaster, err := decryptPremaster(ctx, pub, key, ciphertext, expectedClientVersion)
	if err != nil {
		return nil, fmt.Errorf("keyvault: key %q version %d: %w", id, ver.number, err)
	}
	return premaster, nil
}

// rsaPrivate is the private-key part of RSA decryption, which differs by
// where the key is: in memory (softwareRSA) or in a backend that does the
// raw RSA operation only (rawRSA), where the vault removes the padding
// itself. What both share for a premaster, the substitute and the checks,
// is decryptPremaster's.
type rsaPrivate interface {
	// decryptOAEP decrypts RSA-OAEP with SHA-256 and an empty label. Every
	// invalid ciphertext fails with the same error, after the same work.
	decryptOAEP(ctx context.Context, ciphertext []byte) ([]byte, error)
	// rejectionKDK returns the key-derivation key of the substitute for
	// ciphertext: a function of ciphertext and a secret of the key.
	rejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error)
	// decryptSessionKey overwrites key with the message of ciphertext
	// (below the modulus) if its PKCS #1 v1.5 padding is valid and the
	// message len(key) bytes long, in constant time, and leaves key as it
	// is otherwise. Its errors depend on public values only.
	decryptSessionKey(ctx context.Context, ciphertext, key []byte) error
}

// rsaPrivateOf returns the premaster decryption of an RSA key.
func rsaPrivateOf(key crypto.Signer) (rsaPrivate, bool) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return softwareRSA{k}, true
	case RawRSAKey:
		return rawRSA{k}, true
	}
	return nil, false
}

// decryptPremaster is the server's side of RFC 5246 §7.4.7.1. A server that
// lets a client tell whether the PKCS #1 v1.5 padding, the length or the
// version of a decrypted premaster was right, by an error, an alert or its
// timing, is a Bleichenbacher oracle (Bleichenbacher 1998; ROBOT 2017):
// with enough queries an attacker decrypts any recorded ciphertext or signs
// with the key. So every ciphertext of the modulus' length yields 48 bytes
// and no error: the premaster if padding, length and version are right,
// else a substitute, and the handshake then fails at Finished as for any
// wrong premaster.
//
// The substitute is derived from the ciphertext and a secret of the key
// (rejectionSubstitute), not drawn at random: a random one would differ on
// every query of the same bad ciphertext while a good one always yields the
// same premaster, so asking twice would tell them apart. Both outcomes take
// the same path, with the same calls into the key's backend; nothing
// branches on secret data.
func decryptPremaster(ctx context.Context, pub *rsa.PublicKey, key rsaPrivate, ciphertext []byte, clientVersion uint16) ([]byte, error) {
	kdk, err := key.rejectionKDK(ctx, ciphertext)
	if err != nil {
		return nil, fmt.Errorf("implicit rejection key: %w", err)
	}
	substitute := rejectionSubstitute(kdk)
	clear(kdk)
	defer clear(substitute)
	premaster := bytes.Clone(substitute)

	// A value not below the modulus is no RSA ciphertext, which the
	// decryption reports as an error. The modulus is public, so this check
	// leaks nothing; such a ciphertext gets the substitute like any other
	// bad one.
	if new(big.Int).SetBytes(ciphertext).Cmp(pub.N) >= 0 {
		return premaster, nil
	}
	if err := key.decryptSessionKey(ctx, ciphertext, premaster); err != nil {
		return nil, fmt.Errorf("rsa decryption: %w", err)
	}
	if clientVersion != 0 {
		// The first two bytes are the client_version of the ClientHello;
		// a mismatch means a version rollback attack or a bad premaster.
		var want [2]byte
		binary.BigEndian.PutUint16(want[:], clientVersion)
		mismatch := 1 ^ subtle.ConstantTimeCompare(premaster[:2], want[:])
		subtle.ConstantTimeCopy(mismatch, premaster, substitute)
	}
	return premaster, nil
}

// softwareRSA decrypts with a private key in memory.
type softwareRSA struct{ priv *rsa.PrivateKey }

// rejectionKDK is KDK = HMAC-SHA256(SHA256(I2OSP(d, k)), ciphertext), the
// key-derivation key of draft-irtf-cfrg-rsa-guidance §7.1 (as OpenSSL 3.2
// computes it).
func (k softwareRSA) rejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error) {
	secret := rejectionSecret(k.priv)
	defer clear(secret[:])
	return rejectionKDKUnder(secret[:], ciphertext), nil
}

// rejectionSecret is SHA256(I2OSP(d, k)), the key under which an in-memory
// RSA key derives its KDKs.
func rejectionSecret(priv *rsa.PrivateKey) [sha256.Size]byte {
	d := priv.D.FillBytes(make([]byte, priv.Size()))
	defer clear(d)
	return sha256.Sum256(d)
}

// rejectionKDKUnder is HMAC-SHA256(secret, ciphertext).
func rejectionKDKUnder(secret, ciphertext []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write(ciphertext)
	return mac.Sum(nil)
}

// decryptSessionKey is crypto/rsa's, which keeps the padding check in
// constant time. Its errors depend on public values only (key size, FIPS
// 140-only mode).
func (k softwareRSA) decryptSessionKey(ctx context.Context, ciphertext, key []byte) error {
	return rsa.DecryptPKCS1v15SessionKey(nil, k.priv, ciphertext, key)
}

func (k softwareRSA) decryptOAEP(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return rsa.DecryptOAEP(sha256.New(), nil, k.priv, ciphertext, nil)
}

// rawRSA decrypts with a key of a backend that gives the raw RSA
// operation and keeps the rejection secret (an HMAC key) inside it: the
// private exponent is not available, so the KDK is HMAC-SHA256 under that
// secret instead. The padding is removed here, not by the backend, whose
// own PKCS #1 v1.5 decryption would report bad padding.
type rawRSA struct{ key RawRSAKey }

func (k rawRSA) rejectionKDK(ctx context.Context, ciphertext []byte) ([]byte, error) {
	return k.key.RejectionKDK(ctx, ciphertext)
}

func (k rawRSA) decryptOAEP(ctx context.Context, ciphertext []byte) ([]byte, error) {
	em, err := k.key.DecryptRaw(ctx, ciphertext)
	if err != nil {
		return nil, err
	}
	defer clear(em)
	if len(em) != len(ciphertext) {
		return nil, fmt.Errorf("the backend's raw RSA gave %d bytes, not %d", len(em), len(ciphertext))
	}
	return unpadOAEP(em)
}

var errOAEP = errors.New("rsa-oaep decryption error")

// unpadOAEP is EME-OAEP decoding (RFC 8017 §7.1.2 step 3) with SHA-256,
// MGF1-SHA-256 and an empty label, of em, which it overwrites. As crypto/rsa
// does, it checks the leading zero, the label hash and the 0x01 separator
// without branching on any of them and reports every failure alike, so that
// a caller cannot tell which one it was (Manger 2001).
func unpadOAEP(em []byte) ([]byte, error) {
	const hLen = sha256.Size
	if len(em) < 2*hLen+2 {
		return nil, errOAEP
	}
	lHash := sha256.Sum256(nil)
	seed, db := em[1:1+hLen], em[1+hLen:]
	mgf1XOR(seed, db)
	mgf1XOR(db, seed)
	valid := subtle.ConstantTimeByteEq(em[0], 0) & subtle.ConstantTimeCompare(db[:hLen], lHash[:])
	// db[hLen:] is PS (zeros) || 0x01 || M: find the first nonzero byte,
	// which must be 0x01, looking at every byte.
	looking, index, invalid := 1, 0, 0
	rest := db[hLen:]
	for i, b := range rest {
		isZero, isOne := subtle.ConstantTimeByteEq(b, 0), subtle.ConstantTimeByteEq(b, 1)
		index = subtle.ConstantTimeSelect(looking&isOne, i, index)
		looking = subtle.ConstantTimeSelect(isOne, 0, looking)
		invalid = subtle.ConstantTimeSelect(looking&^isZero, 1, invalid)
	}
	if valid&^invalid&^looking != 1 {
		return nil, errOAEP
	}
	return bytes.Clone(rest[index+1:]), nil
}

// mgf1XOR XORs out with MGF1-SHA-256 of seed (RFC 8017 §B.2.1).
func mgf1XOR(out, seed []byte) {
	var counter [4]byte
	h := sha256.New()
	for done := 0; done < len(out); {
		h.Reset()
		h.Write(seed)
		h.Write(counter[:])
		block := h.Sum(nil)
		done += subtle.XORBytes(out[done:], out[done:], block)
		binary.BigEndian.PutUint32(counter[:], binary.BigEndian.Uint32(counter[:])+1)
	}
}

func (k rawRSA) decryptSessionKey(ctx context.Context, ciphertext, key []byte) error {
	em, err := k.key.DecryptRaw(ctx, ciphertext)
	if err != nil {
		return err
	}
	defer clear(em)
	if len(em) != len(ciphertext) {
		return fmt.Errorf("the backend's raw RSA gave %d bytes, not %d", len(em), len(ciphertext))
	}
	return unpadSessionKey(em, key)
}

// unpadSessionKey copies the message of em, a PKCS #1 v1.5 encryption block
// (RFC 8017 §7.2.2 step 3: 0x00 || 0x02 || PS || 0x00 || M, PS at least 8
// nonzero bytes), into key if the block is valid and M len(key) bytes long,
// and leaves key as it is otherwise. It looks at every byte of em whatever
// they hold and branches on none of them, as crypto/rsa's
// DecryptPKCS1v15SessionKey does: with the message length fixed, the zero
// separator must be at len(em)-len(key)-1 and every byte between em[2] and
// it nonzero. The error is for lengths, which are public.
func unpadSessionKey(em, key []byte) error {
	sep := len(em) - len(key) - 1
	if sep < 2+8 {
		return fmt.Errorf("a %d-byte RSA block cannot hold a %d-byte message: %w", len(em), len(key), ErrInvalidArgument)
	}
	valid := subtle.ConstantTimeByteEq(em[0], 0) & subtle.ConstantTimeByteEq(em[1], 2) & subtle.ConstantTimeByteEq(em[sep], 0)
	for _, b := range em[2:sep] {
		valid &= 1 ^ subtle.ConstantTimeByteEq(b, 0)
	}
	subtle.ConstantTimeCopy(valid, key, em[sep+1:])
	return nil
}

// rejectionLabel names what the substitute is for, so that it is unrelated
// to any other value derived from the same key-derivation key.
var rejectionLabel = []byte("handshaked TLS premaster implicit rejection")

// rejectionSubstitute returns the 48 bytes a bad ciphertext decrypts to:
// the implicit-rejection construction of draft-irtf-cfrg-rsa-guidance §7.1
// (as OpenSSL 3.2 implements it), with the TLS premaster's fixed length,
// from the key-derivation key of the ciphertext (rsaPrivate.rejectionKDK):
// IRPRF(KDK, label, 384 bits), blocks HMAC-SHA256(KDK, I2OSP(i, 2) || label
// || I2OSP(384, 2)). It is computed for every ciphertext, valid or not, so
// its cost says nothing about validity.
func rejectionSubstitute(kdk []byte) []byte {
	const bits = premasterLen * 8
	prf := hmac.New(sha256.New, kdk)
	out := make([]byte, 0, 2*sha256.Size)
	for i := uint16(0); len(out) < premasterLen; i++ {
		prf.Reset()
		prf.Write(binary.BigEndian.AppendUint16(nil, i))
		prf.Write(rejectionLabel)
		prf.Write(binary.BigEndian.AppendUint16(nil, bits))
		out = prf.Sum(out)
	}
	substitute := bytes.Clone(out[:premasterLen])
	clear(out)
	return substitute
}

// CreateCSR returns a DER certificate signing request (PKCS #10) for a
// version of key id (0: the primary), signed by it inside the vault.
func (v *Vault) CreateCSR(ctx context.Context, id string, version uint32, subject pkix.Name, dnsNames []string, ips []net.IP) ([]byte, error) {
	ver, err := v.enabledVersion(ctx, id, version)
	if err != nil {
		return nil, err
	}
	template := &x509.CertificateRequest{Subject: subject, DNSNames: dnsNames, IPAddresses: ips}
	csr, err := x509.CreateCertificateRequest(rand.Reader, template, ver.signer)
	if err != nil {
		return nil, fmt.Errorf("keyvault: key %q version %d: create CSR: %v: %w", id, ver.number, err, ErrInvalidArgument)
	}
	return csr, nil
}

// CreateSelfSignedCertificate returns a DER certificate for template, issued
// and signed by a version of key id (0: the primary) inside the vault. A
// development instance uses it to give its sample key a certificate.
func (v *Vault) CreateSelfSignedCertificate(ctx context.Context, id string, version uint32, template *x509.Certificate) ([]byte, error) {
	ver, err := v.enabledVersion(ctx, id, version)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, ver.signer.Public(), ver.signer)
	if err != nil {
		return nil, fmt.Errorf("keyvault: key %q version %d: create certificate: %v: %w", id, ver.number, err, ErrInvalidArgument)
	}
	return der, nil
}
