package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testpki"
)

// mtlsFront stands for handshaked's mutual-TLS listener in front of the
// fixture's service: it verifies the edge's client certificate, records the
// identity it names and relays the bytes. It can close every connection, as
// a service restart or its connection age limit does, and present another
// certificate to the connections after, as a service re-issued does.
type mtlsFront struct {
	cert       atomic.Pointer[tls.Certificate]
	mu         sync.Mutex
	identities []string
	conns      []net.Conn
}

func startMTLSFront(t *testing.T, ca *testpki.CA, backend string) (*mtlsFront, string) {
	t.Helper()
	server, err := ca.Server()
	require.NoError(t, err)
	f := &mtlsFront{}
	f.cert.Store(&server.TLS)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.cert.Load(), nil },
		ClientAuth:     tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(), NextProtos: []string{"h2"}})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.relay(c.(*tls.Conn), backend)
		}
	}()
	t.Cleanup(f.dropAll)
	return f, l.Addr().String()
}

func (f *mtlsFront) relay(c *tls.Conn, backend string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return
	}
	b, err := net.Dial("tcp", backend)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	f.identities = append(f.identities, c.ConnectionState().PeerCertificates[0].URIs[0].String())
	f.conns = append(f.conns, c, b)
	f.mu.Unlock()
	go func() { io.Copy(b, c); b.Close() }()
	io.Copy(c, b)
	c.Close()
}

func (f *mtlsFront) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func (f *mtlsFront) lastIdentity() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.identities) == 0 {
		return ""
	}
	return f.identities[len(f.identities)-1]
}

// page fetches the echo page from the edge at addr, over a new connection.
func (f *fixture) page(addr string) error {
	return f.pageWith(addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool})
}

// pageWith is page with the client's TLS configuration cfg.
func (f *fixture) pageWith(addr string, cfg *tls.Config) error {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("https://" + addr + "/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return err
}

// TestReloadsClientCertificate: handshake-edge, running all along, presents
// to handshaked the client certificate its -handshaked-cert/-key files hold
// when it reconnects: a renewed certificate (renamed over the old files, as
// certificate tools do) is used without a restart, and TLS clients keep
// getting their pages.
func TestReloadsClientCertificate(t *testing.T) {
	f := newFixture(t)
	ca, err := testpki.NewCA("handshaked callers CA")
	require.NoError(t, err)
	front, addr := startMTLSFront(t, ca, f.srv.GRPCAddr)
	dir := t.TempDir()
	in := func(name string) string { return filepath.Join(dir, name) }
	renew := func(id string) {
		leaf, err := ca.Client(id, false, time.Now().Add(time.Hour))
		require.NoError(t, err)
		for name, b := range map[string][]byte{"edge.crt": leaf.CertPEM, "edge.key": leaf.KeyPEM} {
			require.NoError(t, os.WriteFile(in(name+".new"), b, 0o600))
			require.NoError(t, os.Rename(in(name+".new"), in(name)))
		}
	}
	renew("spiffe://example.org/edge/before")
	require.NoError(t, os.WriteFile(in("ca.pem"), ca.PEM, 0o600))
	edgeAddr, _ := f.start(t, "-handshaked", addr,
		"-handshaked-ca", in("ca.pem"), "-handshaked-cert", in("edge.crt"), "-handshaked-key", in("edge.key"))

	require.NoError(t, f.page(edgeAddr))
	assert.Equal(t, "spiffe://example.org/edge/before", front.lastIdentity())

	renew("spiffe://example.org/edge/renewed")
	front.dropAll()
	// The handshake that meets the dropped connection may fail; the edge
	// reconnects for the next.
	if err := f.page(edgeAddr); err != nil {
		require.NoError(t, f.page(edgeAddr), "after the reconnection (the first try: %v)", err)
	}
	assert.Equal(t, "spiffe://example.org/edge/renewed", front.lastIdentity(), "the renewed certificate, without a restart")
}

// TestFollowsCABundle: handshake-edge, running all along, trusts for
// handshaked's certificate the roots its -handshaked-ca file holds when it
// reconnects. handshaked's certificate re-issued by a new CA is refused
// until the bundle has it; the bundle replaced by old+new, then by the new
// CA only (renamed over), is taken without a restart, and TLS clients get
// their pages again.
func TestFollowsCABundle(t *testing.T) {
	f := newFixture(t)
	callers, err := testpki.NewCA("handshaked callers CA")
	require.NoError(t, err)
	oldCA, err := testpki.NewCA("handshaked CA 1")
	require.NoError(t, err)
	newCA, err := testpki.NewCA("handshaked CA 2")
	require.NoError(t, err)
	front, addr := startMTLSFront(t, callers, f.srv.GRPCAddr)
	reissue := func(ca *testpki.CA) {
		leaf, err := ca.Server()
		require.NoError(t, err)
		front.cert.Store(&leaf.TLS)
		front.dropAll()
	}
	reissue(oldCA)

	dir := t.TempDir()
	in := func(name string) string { return filepath.Join(dir, name) }
	bundle := func(pems ...[]byte) {
		var b []byte
		for _, p := range pems {
			b = append(b, p...)
		}
		require.NoError(t, os.WriteFile(in("ca.pem.new"), b, 0o600))
		require.NoError(t, os.Rename(in("ca.pem.new"), in("ca.pem")))
	}
	bundle(oldCA.PEM)
	leaf, err := callers.Client("spiffe://example.org/edge", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(in("edge.crt"), leaf.CertPEM, 0o600))
	require.NoError(t, os.WriteFile(in("edge.key"), leaf.KeyPEM, 0o600))
	edgeAddr, log := f.start(t, "-handshaked", addr,
		"-handshaked-ca", in("ca.pem"), "-handshaked-cert", in("edge.crt"), "-handshaked-key", in("edge.key"))

	// pages waits for the edge to reach the service again: the handshake
	// that meets a dropped connection, or the edge waiting to reconnect
	// after a refusal, may fail a page or two.
	pages := func() error {
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if err = f.page(edgeAddr); err == nil {
				return nil
			}
		}
		return err
	}
	require.NoError(t, f.page(edgeAddr))

	reissue(newCA)
	for range 3 {
		assert.Error(t, f.page(edgeAddr), "handshaked's certificate from a CA not in the bundle yet")
	}
	assert.Contains(t, log.String(), "x509: certificate signed by unknown authority")

	bundle(oldCA.PEM, newCA.PEM)
	assert.NoError(t, pages(), "old+new: the re-issued certificate, without a restart")
	bundle(newCA.PEM)
	front.dropAll()
	assert.NoError(t, pages(), "the new CA only")
	reissue(oldCA)
	for range 3 {
		assert.Error(t, f.page(edgeAddr), "the old CA, out of the bundle")
	}
}
