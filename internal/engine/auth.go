package engine

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/handshaked/handshaked/internal/sigscheme"
)

// Signature schemes, RFC 8446, Section 4.2.3 and RFC 5246, Section 7.4.1.4.1.
// What a scheme means, and which schemes a public key fits in a version, is
// the sigscheme table, shared with the key vault and the keyless client.

// keySchemes returns the schemes the key of certificate idx can produce at
// version vers: what the key says through KeyOps (a key may do less than its
// type allows, as an HSM key without RSA-PSS does), limited to what the
// certificate's public key fits, since that is what the client verifies with.
func (h *Handshake) keySchemes(idx int, vers uint16) ([]tls.SignatureScheme, error) {
	if h.keys == nil {
		return nil, errNoKeyOps
	}
	cert := &h.cfg.Certificates[idx]
	schemes, err := h.keys.SignatureSchemes(h.ctx, cert.KeyRef, vers)
	if err != nil {
		return nil, failWrap(alertInternalError, keyOpsError{err}, "asking the key of %s for its signature schemes", cert.subject)
	}
	return slices.DeleteFunc(slices.Clone(schemes), func(s tls.SignatureScheme) bool {
		return !sigscheme.Fits(s, cert.leaf.PublicKey, vers)
	}), nil
}

// selectSignatureScheme picks, in the client's order of preference, a scheme
// the client accepts that the key can produce.
func selectSignatureScheme(key, peer []tls.SignatureScheme) (tls.SignatureScheme, bool) {
	for _, s := range peer {
		if slices.Contains(key, s) {
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

// verifySignature checks a peer's signature over message with scheme, which
// the caller has already matched to pub with sigscheme.Fits.
func verifySignature(scheme tls.SignatureScheme, pub crypto.PublicKey, message, sig []byte) error {
	s, ok := sigscheme.Lookup(scheme)
	if !ok {
		return fmt.Errorf("unsupported signature scheme %v", scheme)
	}
	return s.Verify(pub, message, sig)
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
	if sigscheme.ForKey(certs[0].PublicKey, tls.VersionTLS12) == nil {
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
