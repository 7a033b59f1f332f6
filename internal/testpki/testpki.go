// Package testpki issues certificates for tests of handshaked's mutual TLS:
// CAs, a server certificate for loopback, and client certificates naming
// an identity the way callers' certificates do (URI SAN, DNS SAN or CN).
// Keys are ECDSA P-256, cheap enough to make once per test package.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	CertPEM, KeyPEM []byte
	TLS             tls.Certificate
	Cert            *x509.Certificate
}

// NewCA makes a self-signed CA.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert, certPEM, err := sign(tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, PEM: certPEM, key: key}, nil
}

// Pool trusts the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Server issues a server certificate for localhost, 127.0.0.1 and ::1.
func (ca *CA) Server() (*Leaf, error) {
	return ca.ServerFor(time.Now().Add(24*time.Hour), x509.ExtKeyUsageServerAuth)
}

// ServerFor is Server's certificate valid until notAfter (in the past: an
// expired certificate) with the extended key usages eku.
func (ca *CA) ServerFor(notAfter time.Time, eku ...x509.ExtKeyUsage) (*Leaf, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: eku,
	}, notAfter)
}

// ServerNamed issues a server certificate for dnsName only, with no IP
// address: a client dialling an IP address must be told the name.
func (ca *CA) ServerNamed(dnsName string) (*Leaf, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: dnsName},
		DNSNames:    []string{dnsName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Now().Add(24*time.Hour))
}

// Client issues a client certificate whose identity is id: a URI SAN if id
// parses as a URI with a scheme, else a DNS SAN if dns, else the subject CN.
// notAfter in the past makes an expired certificate.
func (ca *CA) Client(id string, dns bool, notAfter time.Time) (*Leaf, error) {
	tmpl := &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if u, err := url.Parse(id); err == nil && u.Scheme != "" {
		tmpl.URIs = []*url.URL{u}
		tmpl.Subject.CommonName = "ignored-when-a-uri-san-is-present"
	} else if dns {
		tmpl.DNSNames = []string{id}
	} else {
		tmpl.Subject.CommonName = id
	}
	return ca.issue(tmpl, notAfter)
}

func (ca *CA) issue(tmpl *x509.Certificate, notAfter time.Time) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if notAfter.Before(tmpl.NotBefore) {
		tmpl.NotBefore = notAfter.Add(-time.Hour)
	}
	tmpl.NotAfter = notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	cert, certPEM, err := sign(tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &Leaf{CertPEM: certPEM, KeyPEM: keyPEM, TLS: pair, Cert: cert}, nil
}

func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, key *ecdsa.PrivateKey) (*x509.Certificate, []byte, error) {
	der, err := create(tmpl, parent, pub, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// SignCSR issues a server certificate for the key and DNS names of a
// certificate signing request (DER) whose signature verifies: how a test
// gives a key made inside the vault, whose private half it never sees, a
// chain its clients can verify. It returns the certificate, DER.
func (ca *CA) SignCSR(csrDER []byte) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("testpki: CSR signature: %w", err)
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		// TLS 1.2's RSA key exchange encrypts the premaster to the key,
		// which RFC 5280 (4.2.1.3) calls key encipherment; clients that
		// check key usage (NSS) refuse the exchange without it.
		usage |= x509.KeyUsageKeyEncipherment
	}
	return create(&x509.Certificate{
		Subject:     csr.Subject,
		DNSNames:    csr.DNSNames,
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    usage,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca.Cert, csr.PublicKey, ca.key)
}

// create signs tmpl, given a random serial number, as parent with key.
func create(tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	return der, nil
}

// SelfSignedServerTemplate is the template of a self-signed server
// certificate for dnsName, valid from an hour ago for a day: it is its own
// CA, so a client trusts it by putting it in its roots.
func SelfSignedServerTemplate(dnsName string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: dnsName},
		DNSNames:              []string{dnsName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
}
