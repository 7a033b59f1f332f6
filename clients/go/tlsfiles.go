package handshaked

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// LoadCertPool reads the PEM certificates in file into a pool.
func LoadCertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}

// TLSConfigFromFiles is the TLS configuration for reaching handshaked over
// mutual TLS: roots from caFile and the caller's certificate from
// certFile/keyFile. Either part may be left empty.
//
// The client certificate follows its files: every new connection's
// handshake checks whether either file changed (a renewal written in place,
// renamed over, or swapped in by a symlink as Kubernetes does for a mounted
// Secret) and, if so, loads the pair again, so a renewed certificate is used
// without a restart. A connection already open keeps the certificate it was
// opened with until it closes (handshaked ends every connection after at
// most 30 minutes). A pair that does not load, such as a certificate
// renewed before its new key is written, leaves the previous one in use
// (with a warning at each connection) until the pair loads. The first load must succeed. The roots in
// caFile are read once.
func TLSConfigFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{}
	if caFile != "" {
		pool, err := LoadCertPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if certFile != "" {
		kp := &keyPairFiles{certFile: certFile, keyFile: keyFile, log: slog.Default()}
		st, err := kp.stamps()
		if err == nil {
			err = kp.load(st)
		}
		if err != nil {
			return nil, fmt.Errorf("client certificate for handshaked: %w", err)
		}
		cfg.GetClientCertificate = kp.clientCertificate
	}
	return cfg, nil
}

// keyPairFiles is a certificate and key kept in two files, loaded again
// when they change.
type keyPairFiles struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	current *tls.Certificate
	loaded  [2]os.FileInfo // of the files current came from
}

// unchanged tells whether a file is still the one loaded: a file written in
// place changes its time or size, one renamed over it or swapped in through
// a symlink is another file.
func unchanged(now, loaded os.FileInfo) bool {
	return os.SameFile(now, loaded) && now.ModTime().Equal(loaded.ModTime()) && now.Size() == loaded.Size()
}

func (k *keyPairFiles) stamps() ([2]os.FileInfo, error) {
	var st [2]os.FileInfo
	for i, name := range []string{k.certFile, k.keyFile} {
		fi, err := os.Stat(name) // follows symlinks: a swapped target is a change
		if err != nil {
			return st, err
		}
		st[i] = fi
	}
	return st, nil
}

// load reads the pair, whose files were st just before, and makes it
// current. k.mu is held, or k is not shared yet.
func (k *keyPairFiles) load(st [2]os.FileInfo) error {
	pair, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return err
	}
	k.current, k.loaded = &pair, st
	return nil
}

// clientCertificate is tls.Config.GetClientCertificate: the current pair,
// loaded again first if its files changed since.
func (k *keyPairFiles) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, err := k.stamps()
	if err != nil {
		// A file briefly missing mid-renewal: keep what works.
		k.log.Warn("handshaked client certificate: keeping the loaded one", "err", err)
		return k.current, nil
	}
	if unchanged(st[0], k.loaded[0]) && unchanged(st[1], k.loaded[1]) {
		return k.current, nil
	}
	if err := k.load(st); err != nil {
		k.log.Warn("handshaked client certificate: the changed files do not load, keeping the loaded one",
			"cert", k.certFile, "key", k.keyFile, "err", err)
		return k.current, nil
	}
	k.log.Info("handshaked client certificate reloaded", "cert", k.certFile, "not_after", k.current.Leaf.NotAfter)
	return k.current, nil
}
