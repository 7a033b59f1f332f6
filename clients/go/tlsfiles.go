package handshaked

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"weak"

	"google.golang.org/grpc/credentials"
)

// LoadCertPool reads the PEM certificates in file into a pool. Every
// CERTIFICATE block must parse and every block begun must end, so a bundle
// cut short or corrupted is an error rather than a pool missing the roots
// it lost (text around the blocks, as bundles' comments, is let be).
func LoadCertPool(file string) (*x509.CertPool, error) {
	pool, _, err := loadBundle(file)
	return pool, err
}

// loadBundle is LoadCertPool, with the file's bytes.
func loadBundle(file string) (*x509.CertPool, []byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	pool, err := parseBundle(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	return pool, b, nil
}

func parseBundle(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			if bytes.Contains(rest, []byte("-----BEGIN")) {
				return nil, fmt.Errorf("after %d certificate(s), a PEM block that does not decode (cut short?)", n)
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			continue // a bundle may carry other blocks, as AppendCertsFromPEM allows
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return pool, nil
}

// TLSConfigFromFiles is the TLS configuration for reaching handshaked over
// mutual TLS: roots from caFile and the caller's certificate from
// certFile/keyFile. Either part may be left empty.
//
// Both follow their files: every new connection's handshake checks whether
// a file changed (written in place, renamed over, or swapped in by a
// symlink as Kubernetes does for a mounted Secret) and, if so, loads it
// again, so a renewed certificate or a rotated CA bundle is used without a
// restart. A connection already open keeps the certificate and the roots
// it was opened with until it closes (handshaked ends every connection
// after at most 30 minutes). A file that does not load, such as a bundle
// cut short or a certificate renewed before its new key is written, leaves
// the previous one in use (with a warning at each connection) until it
// loads. The first load must succeed.
//
// The roots follow caFile on the connections that Dial makes with this
// configuration (WithTLS), or with a Clone of it, as long as its RootCAs is
// still the pool put there: each handshake is verified by crypto/tls, as
// strictly as with fixed roots, against the bundle in force. Anything else
// using the configuration (an HTTP client, grpc.Dial) verifies against the
// roots read here.
func TLSConfigFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{}
	if caFile != "" {
		ca, err := newCAFiles(caFile, "handshaked CA bundle", slog.Default())
		if err != nil {
			return nil, fmt.Errorf("CA bundle for handshaked: %w", err)
		}
		// A pool of the configuration's own: the bundle's is not the key
		// of followed, which it would keep alive.
		cfg.RootCAs = ca.current.Clone()
		followRoots(cfg.RootCAs, ca)
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

// followed maps the pool TLSConfigFromFiles put in a configuration's
// RootCAs to the bundle it came from, for Dial to give each handshake the
// roots in force. The key is weak: a pool no configuration holds any more
// takes its entry with it.
var followed sync.Map // weak.Pointer[x509.CertPool] -> *caFiles

func followRoots(pool *x509.CertPool, ca *caFiles) {
	key := weak.Make(pool)
	followed.Store(key, ca)
	runtime.AddCleanup(pool, func(key weak.Pointer[x509.CertPool]) { followed.Delete(key) }, key)
}

// followedRoots is the bundle that pool was put in a configuration for, or
// nil.
func followedRoots(pool *x509.CertPool) *caFiles {
	if pool == nil {
		return nil
	}
	if ca, ok := followed.Load(weak.Make(pool)); ok {
		return ca.(*caFiles)
	}
	return nil
}

// tlsCredentials are the transport credentials of Dial for cfg: gRPC's own,
// and when cfg's roots come from a CA bundle, gRPC's own again at each
// handshake on a copy of cfg with the bundle's roots in force. Verification
// stays crypto/tls's (chain to the roots, server name, validity, serverAuth
// usage); only the pool changes.
func tlsCredentials(cfg *tls.Config) credentials.TransportCredentials {
	creds := credentials.NewTLS(cfg)
	ca := followedRoots(cfg.RootCAs)
	if ca == nil {
		return creds
	}
	return &followingRoots{TransportCredentials: creds, base: cfg.Clone(), ca: ca}
}

// followingRoots are TLS credentials whose roots follow a CA bundle.
type followingRoots struct {
	credentials.TransportCredentials // for Info and the server side
	base                             *tls.Config
	ca                               *caFiles
}

func (f *followingRoots) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg := f.base.Clone()
	cfg.RootCAs = f.ca.roots()
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, raw)
}

func (f *followingRoots) Clone() credentials.TransportCredentials {
	return &followingRoots{TransportCredentials: f.TransportCredentials.Clone(), base: f.base, ca: f.ca}
}

// CABundle is a CA bundle kept in a PEM file and read again when the file
// changes, as TLSConfigFromFiles follows its roots: for a caller that
// needs the bundle's text (handshake-edge sends its -client-ca to the
// service in each handshake's configuration).
type CABundle struct{ ca *caFiles }

// FollowCABundle loads the bundle in file, as strictly as LoadCertPool;
// the first load must succeed. what names the bundle in log's lines.
func FollowCABundle(file, what string, log *slog.Logger) (*CABundle, error) {
	ca, err := newCAFiles(file, what, log)
	if err != nil {
		return nil, err
	}
	return &CABundle{ca}, nil
}

// PEM is the bundle in force: the file is checked first and, if it
// changed, read again. A changed file that does not load (cut short, a
// certificate that does not parse, the file missing) leaves the bundle in
// force, with a warning. The same text comes back, as the same string,
// for as long as the bundle stays.
func (b *CABundle) PEM() string {
	b.ca.mu.Lock()
	defer b.ca.mu.Unlock()
	b.ca.followLocked()
	return b.ca.pem
}

// caFiles is a CA bundle kept in a file, loaded again when it changes.
type caFiles struct {
	file, what string
	log        *slog.Logger

	mu      sync.Mutex
	current *x509.CertPool
	pem     string      // the text current was parsed from
	loaded  os.FileInfo // of the file current came from
}

func newCAFiles(file, what string, log *slog.Logger) (*caFiles, error) {
	ca := &caFiles{file: file, what: what, log: log}
	st, err := os.Stat(file)
	if err == nil {
		err = ca.load(st)
	}
	if err != nil {
		return nil, err
	}
	return ca, nil
}

// load reads the bundle, whose file was st just before, and makes it
// current. ca.mu is held, or ca is not shared yet.
func (ca *caFiles) load(st os.FileInfo) error {
	pool, pem, err := loadBundle(ca.file)
	if err != nil {
		return err
	}
	ca.current, ca.pem, ca.loaded = pool, string(pem), st
	return nil
}

// roots is the current pool, loaded again first if its file changed since.
func (ca *caFiles) roots() *x509.CertPool {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.followLocked()
	return ca.current
}

// followLocked loads the bundle again if its file changed since. ca.mu is
// held.
func (ca *caFiles) followLocked() {
	st, err := os.Stat(ca.file) // follows symlinks: a swapped target is a change
	if err != nil {
		ca.log.Warn(ca.what+": keeping the loaded one", "err", err)
		return
	}
	if unchanged(st, ca.loaded) {
		return
	}
	if err := ca.load(st); err != nil {
		ca.log.Warn(ca.what+": the changed file does not load, keeping the loaded one", "err", err)
		return
	}
	ca.log.Info(ca.what+" reloaded", "file", ca.file)
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
