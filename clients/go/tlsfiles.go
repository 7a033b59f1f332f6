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
		cfg.RootCAs = ca.current.pool.Clone()
		followRoots(cfg.RootCAs, ca)
	}
	if certFile != "" {
		kp, err := newKeyPairFiles(certFile, keyFile, slog.Default())
		if err != nil {
			return nil, fmt.Errorf("client certificate for handshaked: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get(), nil }
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
	cfg.RootCAs = f.ca.get().pool
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
func (b *CABundle) PEM() string { return b.ca.get().pem }

// caFiles is a CA bundle kept in a file, loaded again when it changes.
type caFiles = followedFiles[caBundle]

// caBundle is a CA bundle's pool and the text it was parsed from.
type caBundle struct {
	pool *x509.CertPool
	pem  string
}

func newCAFiles(file, what string, log *slog.Logger) (*caFiles, error) {
	return followFiles(what, log, nil, func() (caBundle, error) {
		pool, pem, err := loadBundle(file)
		return caBundle{pool, string(pem)}, err
	}, func(caBundle) []any { return []any{"file", file} }, file)
}

// keyPairFiles is a certificate and key kept in two files, loaded again
// when they change.
type keyPairFiles = followedFiles[*tls.Certificate]

func newKeyPairFiles(certFile, keyFile string, log *slog.Logger) (*keyPairFiles, error) {
	return followFiles("handshaked client certificate", log, []any{"cert", certFile, "key", keyFile}, func() (*tls.Certificate, error) {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		return &pair, err
	}, func(c *tls.Certificate) []any { return []any{"cert", certFile, "not_after", c.Leaf.NotAfter} }, certFile, keyFile)
}

// followedFiles is what read makes of files, read again when one of them
// has changed since (see unchanged). A change that does not read, such as
// a bundle cut short or a certificate renewed before its new key is
// written, leaves what was read before in force, with a warning each time
// it is asked for, until it reads.
type followedFiles[T any] struct {
	files []string
	what  string // names it in log lines
	log   *slog.Logger
	names []any // log attributes of a failed read
	read  func() (T, error)
	// reloaded are the log attributes of a new value.
	reloaded func(T) []any

	mu      sync.Mutex
	current T
	loaded  []os.FileInfo // of the files current came from
}

// followFiles reads files for the first time: that must succeed.
func followFiles[T any](what string, log *slog.Logger, names []any, read func() (T, error), reloaded func(T) []any, files ...string) (*followedFiles[T], error) {
	f := &followedFiles[T]{files: files, what: what, log: log, names: names, read: read, reloaded: reloaded}
	st, err := f.stamps()
	if err == nil {
		err = f.load(st)
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (f *followedFiles[T]) stamps() ([]os.FileInfo, error) {
	st := make([]os.FileInfo, len(f.files))
	for i, name := range f.files {
		fi, err := os.Stat(name) // follows symlinks: a swapped target is a change
		if err != nil {
			return nil, err
		}
		st[i] = fi
	}
	return st, nil
}

// load reads the files, which were st just before, and makes the result
// current. f.mu is held, or f is not shared yet.
func (f *followedFiles[T]) load(st []os.FileInfo) error {
	v, err := f.read()
	if err != nil {
		return err
	}
	f.current, f.loaded = v, st
	return nil
}

// get is the current value, read again first if a file changed since.
func (f *followedFiles[T]) get() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.stamps()
	if err != nil {
		// A file briefly missing mid-renewal: keep what works.
		f.log.Warn(f.what+": keeping the loaded one", "err", err)
		return f.current
	}
	changed := false
	for i := range st {
		changed = changed || !unchanged(st[i], f.loaded[i])
	}
	if !changed {
		return f.current
	}
	if err := f.load(st); err != nil {
		msg := ": the changed file does not load, keeping the loaded one"
		if len(f.files) > 1 {
			msg = ": the changed files do not load, keeping the loaded one"
		}
		f.log.Warn(f.what+msg, append(f.names, "err", err)...)
		return f.current
	}
	f.log.Info(f.what+" reloaded", f.reloaded(f.current)...)
	return f.current
}

// unchanged tells whether a file is still the one loaded: a file written in
// place changes its time or size, one renamed over it or swapped in through
// a symlink is another file.
func unchanged(now, loaded os.FileInfo) bool {
	return os.SameFile(now, loaded) && now.ModTime().Equal(loaded.ModTime()) && now.Size() == loaded.Size()
}
