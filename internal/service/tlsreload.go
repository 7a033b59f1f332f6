package service

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// TLSFiles name the service's own certificate chain and private key (PEM)
// and the CA bundle that client certificates are verified against.
type TLSFiles struct {
	CertFile, KeyFile, ClientCAFile string
}

func (f TLSFiles) paths() []string { return []string{f.CertFile, f.KeyFile, f.ClientCAFile} }

// tlsSource serves the TLS configuration of both listeners from the files,
// and loads them again on reload. A handshake takes the configuration in
// force when it starts; connections already up are not touched, so a reload
// drops nothing.
type tlsSource struct {
	files TLSFiles
	// refused is told about every client certificate that fails
	// verification, so the audit log can record the refused attempt.
	refused func(peer string, err error)
	cur     atomic.Pointer[tlsState]
}

type tlsState struct {
	cert  tls.Certificate
	roots *x509.CertPool
}

func newTLSSource(files TLSFiles, refused func(peer string, err error)) (*tlsSource, error) {
	s := &tlsSource{files: files, refused: refused}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// reload reads the files; on error the configuration in force is kept.
func (s *tlsSource) reload() error {
	st, err := loadTLS(s.files)
	if err != nil {
		return err
	}
	s.cur.Store(st)
	return nil
}

func loadTLS(files TLSFiles) (*tlsState, error) {
	if err := CheckPrivateFile("TLS key", files.KeyFile); err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(files.CertFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	clear(keyPEM) // the parsed key is all that stays in memory
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s and key %s: %w", files.CertFile, files.KeyFile, err)
	}
	caPEM, err := os.ReadFile(files.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("client CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA bundle %s: no PEM certificate in it", files.ClientCAFile)
	}
	return &tlsState{cert: cert, roots: roots}, nil
}

// CheckPrivateFile refuses a secret file (a private key, the key-encryption
// key, the key store) that anyone on the host can read: its secret must be
// treated as leaked, not served with.
func CheckPrivateFile(what, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return fmt.Errorf("%s %s is world-readable (mode %v): chmod o-r it, and treat what it holds as exposed", what, path, fi.Mode().Perm())
	}
	return nil
}

// configFor returns the GetConfigForClient of a listener speaking protos.
//
// The TLS layer requests a client certificate but does not verify it;
// VerifyConnection does, with crypto/x509, against the CA bundle in force.
// Doing it ourselves, rather than with ClientAuth set to verify, is what
// lets a refused certificate reach the audit log with the peer's address
// (the TLS layer reports its own verification failures to no one). A
// connection without a certificate is let through: health checks work
// without one, and every API call on it is refused as UNAUTHENTICATED
// (HTTP 401), which tells the caller what is missing.
func (s *tlsSource) configFor(protos []string) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		st := s.cur.Load()
		peer := ""
		if hello.Conn != nil {
			peer = hello.Conn.RemoteAddr().String()
		}
		return &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{st.cert},
			NextProtos:   protos,
			ClientAuth:   tls.RequestClientCert,
			VerifyConnection: func(cs tls.ConnectionState) error {
				err := verifyClient(st.roots, cs)
				if err != nil {
					s.refused(peer, err)
				}
				return err
			},
		}, nil
	}
}

// verifyClient verifies the client's certificate chain, if it sent one, for
// client authentication, and requires it to name an identity. It runs on
// resumed sessions too, so a resumed connection is held to the CA bundle in
// force now.
func verifyClient(roots *x509.CertPool, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("client certificate %q: %w", identityOf(leaf), err)
	}
	if identityOf(leaf) == "" {
		return errors.New("client certificate names no identity (no URI SAN, DNS SAN or subject CN)")
	}
	return nil
}
