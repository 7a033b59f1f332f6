package keyvault

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha256" // registers crypto.SHA256 for crypto.Hash.New
	_ "crypto/sha512" // registers crypto.SHA384 and crypto.SHA512
	"crypto/tls"
	"fmt"
	"slices"
	"strconv"
)

// Algorithm is the type and size of a key.
type Algorithm int

const (
	AlgorithmUnspecified Algorithm = iota
	RSA2048
	RSA3072
	RSA4096
	ECDSAP256
	ECDSAP384
	Ed25519
)

var algorithmNames = [...]string{
	AlgorithmUnspecified: "ALGORITHM_UNSPECIFIED",
	RSA2048:              "RSA_2048",
	RSA3072:              "RSA_3072",
	RSA4096:              "RSA_4096",
	ECDSAP256:            "ECDSA_P256",
	ECDSAP384:            "ECDSA_P384",
	Ed25519:              "ED25519",
}

func (a Algorithm) String() string {
	if a >= 0 && int(a) < len(algorithmNames) {
		return algorithmNames[a]
	}
	return "Algorithm(" + strconv.Itoa(int(a)) + ")"
}

// ParseAlgorithm is the inverse of Algorithm.String for the supported
// algorithms ("RSA_2048", ..., "ED25519").
func ParseAlgorithm(s string) (Algorithm, error) {
	for a := RSA2048; a <= Ed25519; a++ {
		if algorithmNames[a] == s {
			return a, nil
		}
	}
	return AlgorithmUnspecified, fmt.Errorf("keyvault: unknown algorithm %.40q: %w", s, ErrInvalidArgument)
}

func (a Algorithm) valid() bool { return a >= RSA2048 && a <= Ed25519 }

// VersionState is the lifecycle state of a key version.
type VersionState int

const (
	StateUnspecified VersionState = iota
	StateEnabled
	StateDisabled
	StateDestroyed
)

var stateNames = [...]string{
	StateUnspecified: "STATE_UNSPECIFIED",
	StateEnabled:     "ENABLED",
	StateDisabled:    "DISABLED",
	StateDestroyed:   "DESTROYED",
}

func (s VersionState) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "VersionState(" + strconv.Itoa(int(s)) + ")"
}

func parseVersionState(s string) (VersionState, bool) {
	for st := StateEnabled; st <= StateDestroyed; st++ {
		if stateNames[st] == s {
			return st, true
		}
	}
	return StateUnspecified, false
}

// DecryptMode selects the RSA decryption Vault.Decrypt performs.
type DecryptMode int

const (
	DecryptModeUnspecified DecryptMode = iota
	// DecryptRSAPKCS1TLSPremaster decrypts the premaster secret of a TLS 1.2
	// RSA key exchange with implicit rejection (RFC 5246 §7.4.7.1).
	DecryptRSAPKCS1TLSPremaster
	// DecryptRSAOAEPSHA256 is RSA-OAEP with SHA-256 for hash and MGF1 and an
	// empty label.
	DecryptRSAOAEPSHA256
)

func (m DecryptMode) String() string {
	switch m {
	case DecryptRSAPKCS1TLSPremaster:
		return "RSA_PKCS1_TLS_PREMASTER"
	case DecryptRSAOAEPSHA256:
		return "RSA_OAEP_SHA256"
	}
	return "DecryptMode(" + strconv.Itoa(int(m)) + ")"
}

// The TLS signature schemes (RFC 8446 §4.2.3) each algorithm can produce,
// most preferred first. rsa_pss_rsae_* and rsa_pkcs1_* both use an
// rsaEncryption key, so every RSA key fits all six.
var (
	rsaSchemes = []tls.SignatureScheme{
		tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512,
		tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512,
	}
	p256Schemes    = []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}
	p384Schemes    = []tls.SignatureScheme{tls.ECDSAWithP384AndSHA384}
	ed25519Schemes = []tls.SignatureScheme{tls.Ed25519}
)

func schemes(alg Algorithm) []tls.SignatureScheme {
	switch alg {
	case RSA2048, RSA3072, RSA4096:
		return rsaSchemes
	case ECDSAP256:
		return p256Schemes
	case ECDSAP384:
		return p384Schemes
	case Ed25519:
		return ed25519Schemes
	}
	return nil
}

// SchemesFor returns the TLS signature schemes a key of alg can sign with,
// most preferred first. The caller may modify the slice.
func SchemesFor(alg Algorithm) []tls.SignatureScheme {
	return slices.Clone(schemes(alg))
}

// PSS options for rsa_pss_rsae_*: RFC 8446 §4.2.3 requires the salt to be as
// long as the digest.
var (
	pssSHA256 = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	pssSHA384 = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384}
	pssSHA512 = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512}
)

// signerOpts returns what crypto.Signer.Sign needs for scheme. Its HashFunc
// is 0 for ed25519, which signs the message itself (RFC 8032 PureEdDSA).
func signerOpts(scheme tls.SignatureScheme) crypto.SignerOpts {
	switch scheme {
	case tls.PKCS1WithSHA256, tls.ECDSAWithP256AndSHA256:
		return crypto.SHA256
	case tls.PKCS1WithSHA384, tls.ECDSAWithP384AndSHA384:
		return crypto.SHA384
	case tls.PKCS1WithSHA512:
		return crypto.SHA512
	case tls.PSSWithSHA256:
		return pssSHA256
	case tls.PSSWithSHA384:
		return pssSHA384
	case tls.PSSWithSHA512:
		return pssSHA512
	}
	return crypto.Hash(0)
}

// generateKey makes a new private key of alg from the system's secure
// random source.
func generateKey(alg Algorithm) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	case ECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("keyvault: algorithm %v: %w", alg, ErrInvalidArgument)
	}
	if err != nil {
		return nil, fmt.Errorf("keyvault: generate %v key: %w", alg, err)
	}
	return key, nil
}

// algorithmOf tells which supported algorithm key is, if any.
func algorithmOf(key crypto.Signer) (Algorithm, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
		return AlgorithmUnspecified, fmt.Errorf("RSA keys of %d bits are not supported (2048, 3072 or 4096): %w", k.N.BitLen(), ErrInvalidArgument)
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
		return AlgorithmUnspecified, fmt.Errorf("ECDSA curve %s is not supported (P-256 or P-384): %w", k.Curve.Params().Name, ErrInvalidArgument)
	case ed25519.PrivateKey:
		return Ed25519, nil
	}
	return AlgorithmUnspecified, fmt.Errorf("unsupported key type %T: %w", key, ErrInvalidArgument)
}
