package keyvault

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strconv"

	"github.com/handshaked/handshaked/internal/sigscheme"
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
	ECDSAP521
	Ed25519
)

var algorithmNames = [...]string{
	AlgorithmUnspecified: "ALGORITHM_UNSPECIFIED",
	RSA2048:              "RSA_2048",
	RSA3072:              "RSA_3072",
	RSA4096:              "RSA_4096",
	ECDSAP256:            "ECDSA_P256",
	ECDSAP384:            "ECDSA_P384",
	ECDSAP521:            "ECDSA_P521",
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

// SchemesFor returns the TLS signature schemes a key of alg can sign with,
// most preferred first: those it can produce in TLS 1.2, which include those
// of TLS 1.3 (see Vault.Sign). The caller may modify the slice.
func SchemesFor(alg Algorithm) []tls.SignatureScheme {
	return alg.sigschemeKey().Schemes(tls.VersionTLS12)
}

// sigschemeKey describes a key of alg to the scheme table.
func (a Algorithm) sigschemeKey() sigscheme.Key {
	switch a {
	case RSA2048:
		return sigscheme.Key{Type: x509.RSA, ModulusBytes: 2048 / 8}
	case RSA3072:
		return sigscheme.Key{Type: x509.RSA, ModulusBytes: 3072 / 8}
	case RSA4096:
		return sigscheme.Key{Type: x509.RSA, ModulusBytes: 4096 / 8}
	case ECDSAP256:
		return sigscheme.Key{Type: x509.ECDSA, Curve: elliptic.P256()}
	case ECDSAP384:
		return sigscheme.Key{Type: x509.ECDSA, Curve: elliptic.P384()}
	case ECDSAP521:
		return sigscheme.Key{Type: x509.ECDSA, Curve: elliptic.P521()}
	case Ed25519:
		return sigscheme.Key{Type: x509.Ed25519}
	}
	return sigscheme.Key{}
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
	case ECDSAP521:
		key, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
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

// algorithmOf tells which supported algorithm key is, if any, by its public
// key: a backend's key need not be one of the standard library's types.
func algorithmOf(key crypto.Signer) (Algorithm, error) {
	switch k := key.Public().(type) {
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
		return AlgorithmUnspecified, fmt.Errorf("RSA keys of %d bits are not supported (2048, 3072 or 4096): %w", k.N.BitLen(), ErrInvalidArgument)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		case elliptic.P521():
			return ECDSAP521, nil
		}
		return AlgorithmUnspecified, fmt.Errorf("ECDSA curve %s is not supported (P-256, P-384 or P-521): %w", k.Curve.Params().Name, ErrInvalidArgument)
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return AlgorithmUnspecified, fmt.Errorf("unsupported key type %T: %w", key, ErrInvalidArgument)
}
