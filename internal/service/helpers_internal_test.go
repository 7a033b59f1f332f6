package service

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/keyvault"
)

// vaultWithKey opens a vault in a temporary directory, closed when tb
// ends, holding the test key fixture (testdata/keys) as key id.
func vaultWithKey(tb testing.TB, id, fixture string) (*keyvault.Vault, *keyvault.Key) {
	tb.Helper()
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(tb.TempDir(), "keys.db"))
	require.NoError(tb, err)
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	require.NoError(tb, err)
	tb.Cleanup(func() { vault.Close() })
	pemKey, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", fixture))
	require.NoError(tb, err)
	k, err := vault.Import(ctx, id, pemKey, nil)
	require.NoError(tb, err)
	return vault, k
}

// AttachSelfSigned gives version 1 of key id a self-signed certificate
// for localhost, and returns a pool that trusts it. (Exported for the
// package's external tests.)
func AttachSelfSigned(b testing.TB, vault *keyvault.Vault, id string) *x509.CertPool {
	b.Helper()
	ctx := context.Background()
	der, err := vault.CreateSelfSignedCertificate(ctx, id, 1, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	require.NoError(b, err)
	_, err = vault.AttachChain(ctx, id, 1, [][]byte{der})
	require.NoError(b, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(b, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

// GoClientHello is the first flight of a Go crypto/tls client that trusts
// pool.
func GoClientHello(b testing.TB, pool *x509.CertPool) []byte {
	b.Helper()
	c, srv := net.Pipe()
	defer srv.Close()
	go tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "localhost"}).Handshake()
	hdr := make([]byte, 5)
	_, err := io.ReadFull(srv, hdr)
	require.NoError(b, err)
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	_, err = io.ReadFull(srv, body)
	require.NoError(b, err)
	c.Close()
	return append(hdr, body...)
}

// SetStreamWorkers sets how many gRPC workers servers started from now on
// get (0: none), so a benchmark compares both in one run; it returns the
// previous value.
func SetStreamWorkers(n int) int {
	old := streamWorkers
	streamWorkers = n
	return old
}

// HTTPHandler is the handler of s's REST listener and the context the
// listener gives the requests of a connection from 127.0.0.1, for
// benchmarks that call it in process.
func (s *Server) HTTPHandler() (http.Handler, context.Context) {
	return s.http.Handler, s.http.ConnContext(context.Background(), loopbackConn{})
}

// loopbackConn is a connection's addresses, all a ConnContext reads.
type loopbackConn struct{ net.Conn }

func (loopbackConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (loopbackConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080} }
