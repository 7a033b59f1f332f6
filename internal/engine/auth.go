package engine

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// Signature schemes, RFC 8446, Section 4.2.3 and RFC 5246, Section 7.4.1.4.1.

// rsaSchemes lists RSA schemes in preference order with the smallest
// modulus (bytes) that fits an RSASSA-PSS signature with salt length equal
// to the hash length (RFC 8017, Section 9.1.1: emLen >= 2*hLen + 2).
// PKCS#1 v1.5 is TLS 1.2 only, RFC 8446, Section 4.2.3.
var rsaSchemes = []struct {
	scheme     tls.SignatureScheme
	minModulus int
	tls12Only  bool
}{
	{tls.PSSWithSHA256, 2*32 + 2, false},
	{tls.PSSWithSHA384, 2*48 + 2, false},
	{tls.PSSWithSHA512, 2*64 + 2, false},
	{tls.PKCS1WithSHA256, 0, true},
	{tls.PKCS1WithSHA384, 0, true},
	{tls.PKCS1WithSHA512, 0, true},
}

// schemesForKey returns the schemes pub can sign with at version vers. In
// TLS 1.3 an ECDSA scheme names the curve; in TLS 1.2 it does not.
func schemesForKey(vers uint16, pub crypto.PublicKey) []tls.SignatureScheme {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if vers < tls.VersionTLS13 {
			return []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512}
		}
		switch pub.Curve {
		case elliptic.P256():
			return []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}
		case elliptic.P384():
			return []tls.SignatureScheme{tls.ECDSAWithP384AndSHA384}
		case elliptic.P521():
			return []tls.SignatureScheme{tls.ECDSAWithP521AndSHA512}
		}
	case *rsa.PublicKey:
		var out []tls.SignatureScheme
		for _, s := range rsaSchemes {
			if pub.Size() >= s.minModulus && (vers < tls.VersionTLS13 || !s.tls12Only) {
				out = append(out, s.scheme)
			}
		}
		return out
	case ed25519.PublicKey:
		return []tls.SignatureScheme{tls.Ed25519}
	}
	return nil
}

// selectSignatureScheme picks, in the client's order of preference, a scheme
// the client accepts that pub can sign with.
func selectSignatureScheme(vers uint16, pub crypto.PublicKey, peer []tls.SignatureScheme) (tls.SignatureScheme, bool) {
	ours := schemesForKey(vers, pub)
	for _, s := range peer {
		if slices.Contains(ours, s) {
			return s, true
		}
	}
	return 0, false
}

// clientAuthSchemes are the schemes offered in CertificateRequest and
// accepted in the client's CertificateVerify.
func clientAuthSchemes(vers uint16) []tls.SignatureScheme {
	s := []tls.SignatureScheme{
		tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512,
		tls.Ed25519,
		tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512,
	}
	if vers < tls.VersionTLS13 {
		s = append(s, tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512)
	}
	return s
}

// schemeHash returns the hash a scheme signs with; 0 for Ed25519, which signs
// the message itself.
func schemeHash(s tls.SignatureScheme) crypto.Hash {
	switch s {
	case tls.PSSWithSHA256, tls.PKCS1WithSHA256, tls.ECDSAWithP256AndSHA256:
		return crypto.SHA256
	case tls.PSSWithSHA384, tls.PKCS1WithSHA384, tls.ECDSAWithP384AndSHA384:
		return crypto.SHA384
	case tls.PSSWithSHA512, tls.PKCS1WithSHA512, tls.ECDSAWithP521AndSHA512:
		return crypto.SHA512
	}
	return 0
}

// verifySignature checks a peer's signature over message with scheme, which
// the caller has already matched to pub's type with schemesForKey.
func verifySignature(scheme tls.SignatureScheme, pub crypto.PublicKey, message, sig []byte) error {
	if edPub, ok := pub.(ed25519.PublicKey); ok {
		if scheme != tls.Ed25519 || !ed25519.Verify(edPub, message, sig) {
			return errors.New("Ed25519 verification failure")
		}
		return nil
	}
	h := schemeHash(scheme)
	hh := h.New()
	hh.Write(message)
	digest := hh.Sum(nil)
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			return errors.New("ECDSA verification failure")
		}
		return nil
	case *rsa.PublicKey:
		switch scheme {
		case tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512:
			return rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		default:
			return rsa.VerifyPKCS1v15(pub, h, digest, sig)
		}
	}
	return fmt.Errorf("unsupported public key type %T", pub)
}

// verifyClientChain parses the client's chain and verifies it against the
// configured roots for client authentication. The alert mirrors the failure:
// unknown_ca, certificate_expired or bad_certificate (RFC 8446, Section 6.2).
// The parsed certificates come back even when they fail verification, for
// the trace.
func verifyClientChain(cfg *Config, chain [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, failWrap(alertBadCertificate, err, "cannot parse client certificate %d", i)
		}
		certs[i] = c
	}
	if schemesForKey(tls.VersionTLS12, certs[0].PublicKey) == nil {
		return certs, fail(alertUnsupportedCertificate, "client certificate has an unsupported %v key", certs[0].PublicKeyAlgorithm)
	}
	opts := x509.VerifyOptions{
		Roots:         cfg.ClientCAs,
		CurrentTime:   cfg.now(),
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, new(x509.UnknownAuthorityError)):
			return certs, failWrap(alertUnknownCA, err, "client certificate not issued by a trusted CA")
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return certs, failWrap(alertCertificateExpired, err, "client certificate expired or not yet valid")
		default:
			return certs, failWrap(alertBadCertificate, err, "client certificate rejected")
		}
	}
	return certs, nil
}
