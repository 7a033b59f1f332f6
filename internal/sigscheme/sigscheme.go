// Package sigscheme is the one table of TLS signature schemes (RFC 8446
// §4.2.3, RFC 5246 §7.4.1.4.1): for each scheme its name, hash, signature
// algorithm and the curve TLS 1.3 binds it to, and which schemes a key can
// produce for a TLS version. The key vault, the handshake engine and the
// keyless client all read it, so they cannot disagree on what a scheme
// means.
package sigscheme

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	_ "crypto/sha256" // registers crypto.SHA256 for crypto.Hash.New
	_ "crypto/sha512" // registers crypto.SHA384 and crypto.SHA512
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Algorithm is the signature algorithm of a scheme.
type Algorithm int

const (
	PKCS1v15 Algorithm = iota + 1 // RSASSA-PKCS1-v1_5 (RFC 8017 §8.2)
	PSS                           // RSASSA-PSS with an rsaEncryption key (RFC 8017 §8.1)
	ECDSA                         // ECDSA, signature DER-encoded (RFC 8422 §5.4)
	Ed25519                       // PureEdDSA over the message (RFC 8032)
)

// Scheme is one TLS signature scheme.
type Scheme struct {
	ID tls.SignatureScheme
	// Name is the scheme's name in the IANA TLS SignatureScheme registry.
	Name      string
	Algorithm Algorithm
	// Hash is the hash of the message that is signed; 0 for Ed25519, which
	// signs the message itself.
	Hash crypto.Hash
	// Curve is the curve an ECDSA scheme names. TLS 1.3 binds the scheme to
	// it; TLS 1.2 does not (see ForKey).
	Curve elliptic.Curve
}

// schemes is the table, in the order a key offers them (most preferred
// first): RSASSA-PSS before PKCS #1 v1.5, the shortest sufficient hash first.
// The SHA-1 schemes are left out: RFC 9155 deprecates them in TLS 1.2 and
// RFC 8446 §4.2.3 forbids them in TLS 1.3.
var schemes = []Scheme{
	{tls.PSSWithSHA256, "rsa_pss_rsae_sha256", PSS, crypto.SHA256, nil},
	{tls.PSSWithSHA384, "rsa_pss_rsae_sha384", PSS, crypto.SHA384, nil},
	{tls.PSSWithSHA512, "rsa_pss_rsae_sha512", PSS, crypto.SHA512, nil},
	{tls.PKCS1WithSHA256, "rsa_pkcs1_sha256", PKCS1v15, crypto.SHA256, nil},
	{tls.PKCS1WithSHA384, "rsa_pkcs1_sha384", PKCS1v15, crypto.SHA384, nil},
	{tls.PKCS1WithSHA512, "rsa_pkcs1_sha512", PKCS1v15, crypto.SHA512, nil},
	{tls.ECDSAWithP256AndSHA256, "ecdsa_secp256r1_sha256", ECDSA, crypto.SHA256, elliptic.P256()},
	{tls.ECDSAWithP384AndSHA384, "ecdsa_secp384r1_sha384", ECDSA, crypto.SHA384, elliptic.P384()},
	{tls.ECDSAWithP521AndSHA512, "ecdsa_secp521r1_sha512", ECDSA, crypto.SHA512, elliptic.P521()},
	{tls.Ed25519, "ed25519", Ed25519, 0, nil},
}

// Lookup returns the scheme with code point id.
func Lookup(id tls.SignatureScheme) (Scheme, bool) {
	for _, s := range schemes {
		if s.ID == id {
			return s, true
		}
	}
	return Scheme{}, false
}

// ByName returns the scheme named name in the IANA registry
// ("ecdsa_secp256r1_sha256"), in any case.
func ByName(name string) (Scheme, bool) {
	for _, s := range schemes {
		if strings.EqualFold(s.Name, name) {
			return s, true
		}
	}
	return Scheme{}, false
}

func (s Scheme) String() string { return s.Name }

// SignerOpts returns what crypto.Signer.Sign needs to sign with s: the hash,
// or for RSASSA-PSS the options with the salt as long as the hash, which
// RFC 8446 §4.2.3 requires.
func (s Scheme) SignerOpts() crypto.SignerOpts {
	if s.Algorithm == PSS {
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: s.Hash}
	}
	return s.Hash
}

// Digest returns what a signer signs for message: its hash under s, or the
// message itself for Ed25519.
func (s Scheme) Digest(message []byte) []byte {
	if s.Hash == 0 {
		return message
	}
	h := s.Hash.New()
	h.Write(message)
	return h.Sum(nil)
}

// Key is what the table needs to know of a key: its type, and its size or
// curve. A key vault can state it for an algorithm without holding a key;
// the functions that take a crypto.PublicKey derive it.
type Key struct {
	Type x509.PublicKeyAlgorithm // x509.RSA, x509.ECDSA or x509.Ed25519
	// ModulusBytes is the length of an RSA modulus.
	ModulusBytes int
	// Curve is an ECDSA key's curve.
	Curve elliptic.Curve
}

// keyOf describes pub; the zero Key (which fits no scheme) for a key type
// the table does not know.
func keyOf(pub crypto.PublicKey) Key {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		return Key{Type: x509.RSA, ModulusBytes: pub.Size()}
	case *ecdsa.PublicKey:
		return Key{Type: x509.ECDSA, Curve: pub.Curve}
	case ed25519.PublicKey:
		return Key{Type: x509.Ed25519}
	}
	return Key{}
}

// Fits reports whether key k can produce s at TLS version vers
// (tls.VersionTLS12 or tls.VersionTLS13).
func (k Key) Fits(s Scheme, vers uint16) bool {
	switch k.Type {
	case x509.RSA:
		switch s.Algorithm {
		case PSS:
			// RFC 8017 §9.1.1: the encoded message needs at least
			// 2*hLen + 2 bytes when the salt is as long as the hash.
			return k.ModulusBytes >= 2*s.Hash.Size()+2
		case PKCS1v15:
			// RFC 8446 §4.2.3: rsa_pkcs1_* "are not defined for use in
			// signed TLS handshake messages" of TLS 1.3.
			return vers < tls.VersionTLS13
		}
	case x509.ECDSA:
		// RFC 8446 §4.2.3: in TLS 1.3 an ECDSA scheme names the curve. "ECDSA
		// signature schemes align with TLS 1.2's ECDSA hash/signature pairs.
		// However, the old semantics did not constrain the signing curve":
		// in TLS 1.2 a scheme names only the hash (RFC 5246 §7.4.1.4.1).
		return s.Algorithm == ECDSA && (vers < tls.VersionTLS13 || s.Curve == k.Curve) && knownCurve(k.Curve)
	case x509.Ed25519:
		return s.Algorithm == Ed25519
	}
	return false
}

// Schemes returns the schemes k can produce at TLS version vers, most
// preferred first; nil for a key the table does not know. An ECDSA key
// offers the scheme of its own curve first. For every key the TLS 1.2 list
// contains the TLS 1.3 one.
func (k Key) Schemes(vers uint16) []tls.SignatureScheme {
	var out []tls.SignatureScheme
	for _, s := range schemes {
		if s.Curve != nil && s.Curve == k.Curve && k.Fits(s, vers) {
			out = append(out, s.ID)
		}
	}
	for _, s := range schemes {
		if k.Fits(s, vers) && !slices.Contains(out, s.ID) {
			out = append(out, s.ID)
		}
	}
	return out
}

// knownCurve reports whether the table has a scheme for curve.
func knownCurve(curve elliptic.Curve) bool {
	for _, s := range schemes {
		if s.Curve != nil && s.Curve == curve {
			return true
		}
	}
	return false
}

// Fits reports whether a key with public key pub can produce scheme id for
// a signature in TLS version vers (tls.VersionTLS12 or tls.VersionTLS13).
func Fits(id tls.SignatureScheme, pub crypto.PublicKey, vers uint16) bool {
	s, ok := Lookup(id)
	return ok && keyOf(pub).Fits(s, vers)
}

// ForKey returns the schemes a key with public key pub can produce in TLS
// version vers, most preferred first (Key.Schemes).
func ForKey(pub crypto.PublicKey, vers uint16) []tls.SignatureScheme {
	return keyOf(pub).Schemes(vers)
}

// ForSignerOpts returns the scheme a crypto.Signer is asked for when
// crypto.Signer.Sign gets opts for a key with public key pub: a Signer sees
// a hash and, for RSA, whether PSS is wanted, which is what a scheme means
// in TLS 1.2. So an ECDSA key maps to the ECDSA scheme of opts' hash,
// whichever its curve (RFC 8446 §4.2.3); that scheme fits the key in TLS 1.2.
func ForSignerOpts(pub crypto.PublicKey, opts crypto.SignerOpts) (Scheme, error) {
	h := opts.HashFunc()
	var alg Algorithm
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		alg = PKCS1v15
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return Scheme{}, fmt.Errorf("RSA-PSS salt length %d: TLS uses the hash length", pss.SaltLength)
			}
			alg = PSS
		}
	case *ecdsa.PublicKey:
		if !knownCurve(pub.Curve) {
			return Scheme{}, fmt.Errorf("ECDSA curve %s is not supported", pub.Curve.Params().Name)
		}
		alg = ECDSA
	case ed25519.PublicKey:
		if h != 0 {
			return Scheme{}, errors.New("Ed25519ph (a prehashed message) is not supported")
		}
		if o, ok := opts.(*ed25519.Options); ok && o.Context != "" {
			return Scheme{}, errors.New("Ed25519 with a context is not supported")
		}
		alg = Ed25519
	default:
		return Scheme{}, fmt.Errorf("unsupported public key type %T", pub)
	}
	for _, s := range schemes {
		if s.Algorithm == alg && s.Hash == h && keyOf(pub).Fits(s, tls.VersionTLS12) {
			return s, nil
		}
	}
	return Scheme{}, fmt.Errorf("no TLS signature scheme signs with %v and hash %v", alg, h)
}

func (a Algorithm) String() string {
	switch a {
	case PKCS1v15:
		return "RSA PKCS #1 v1.5"
	case PSS:
		return "RSA-PSS"
	case ECDSA:
		return "ECDSA"
	case Ed25519:
		return "Ed25519"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// ErrVerify is the error of a signature that does not verify.
var ErrVerify = errors.New("signature does not verify")

// Verify checks sig over message with pub under s. The caller decides
// whether s fits pub for the TLS version at hand (Fits); Verify checks only
// that the key is of the scheme's algorithm.
func (s Scheme) Verify(pub crypto.PublicKey, message, sig []byte) error {
	if s.Algorithm == Ed25519 {
		k, ok := pub.(ed25519.PublicKey)
		if !ok {
			return fmt.Errorf("%v needs an Ed25519 key, not %T", s, pub)
		}
		if !ed25519.Verify(k, message, sig) {
			return fmt.Errorf("%v: %w", s, ErrVerify)
		}
		return nil
	}
	return s.VerifyDigest(pub, s.Digest(message), sig)
}

// VerifyDigest checks sig over digest, the hash of the message under s's
// hash; it refuses Ed25519, which signs the message itself.
func (s Scheme) VerifyDigest(pub crypto.PublicKey, digest, sig []byte) error {
	var err error
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch s.Algorithm {
		case PSS:
			err = rsa.VerifyPSS(k, s.Hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		case PKCS1v15:
			err = rsa.VerifyPKCS1v15(k, s.Hash, digest, sig)
		default:
			return fmt.Errorf("%v does not sign with an RSA key", s)
		}
	case *ecdsa.PublicKey:
		if s.Algorithm != ECDSA {
			return fmt.Errorf("%v does not sign with an ECDSA key", s)
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			err = ErrVerify
		}
	case ed25519.PublicKey:
		return fmt.Errorf("%v signs the message, not a digest", s)
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	if err != nil {
		return fmt.Errorf("%v: %w", s, ErrVerify)
	}
	return nil
}
