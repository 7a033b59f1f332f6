package handshaked_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testpki"
)

// whoami answers GetKey with the identity (URI SAN) of the client
// certificate the connection was opened with.
type whoami struct{ pb.UnimplementedKeyVaultServer }

func (whoami) GetKey(ctx context.Context, _ *pb.GetKeyRequest) (*pb.Key, error) {
	p, _ := peer.FromContext(ctx)
	state := p.AuthInfo.(credentials.TLSInfo).State
	return &pb.Key{Id: state.PeerCertificates[0].URIs[0].String()}, nil
}

// droppingListener can close every connection it accepted, as a service
// restart or its connection age limit does: the client then reconnects.
type droppingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *droppingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *droppingListener) dropAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

// TestClientCertificateReload: one SDK client, never restarted, presents
// the certificate its files hold when it connects: renewed in place,
// swapped in through a symlink as Kubernetes updates a mounted Secret, and
// renamed over. A file missing, or a certificate written before its key
// (the pair does not match yet), does not break connecting: the previous
// pair goes on until the new one loads.
func TestClientCertificateReload(t *testing.T) {
	ca, err := testpki.NewCA("callers CA")
	require.NoError(t, err)
	server, err := ca.Server()
	require.NoError(t, err)
	issue := func(id string) *testpki.Leaf {
		leaf, err := ca.Client(id, false, time.Now().Add(time.Hour))
		require.NoError(t, err)
		return leaf
	}

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	lis := &droppingListener{Listener: raw}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{server.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	})))
	pb.RegisterKeyVaultServer(srv, whoami{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	// The files as a mounted Secret lays them out: names that are symlinks
	// through ..data to a directory of the current version.
	dir := t.TempDir()
	write := func(name string, b []byte) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600)) }
	version := func(v string, leaf *testpki.Leaf) {
		require.NoError(t, os.Mkdir(filepath.Join(dir, v), 0o700))
		write(filepath.Join(v, "tls.crt"), leaf.CertPEM)
		write(filepath.Join(v, "tls.key"), leaf.KeyPEM)
	}
	version("v1", issue("spiffe://example.org/edge/1"))
	require.NoError(t, os.Symlink("v1", filepath.Join(dir, "..data")))
	for _, name := range []string{"tls.crt", "tls.key"} {
		require.NoError(t, os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)))
	}
	write("ca.pem", ca.PEM)

	cfg, err := handshaked.TLSConfigFromFiles(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	require.NoError(t, err)
	c, err := handshaked.Dial(raw.Addr().String(), handshaked.WithTLS(cfg), handshaked.WithRetries(5, 20*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	identity := func() string {
		t.Helper()
		k, err := c.GetKey(context.Background(), "any")
		require.NoError(t, err)
		return k.GetId()
	}
	reconnected := func() string {
		t.Helper()
		lis.dropAll()
		return identity()
	}
	require.Equal(t, "spiffe://example.org/edge/1", identity())

	// Nothing changed: a new connection presents the same certificate.
	assert.Equal(t, "spiffe://example.org/edge/1", reconnected())

	// Renewed in place (through the symlinks), certificate then key.
	two := issue("spiffe://example.org/edge/2")
	write("tls.crt", two.CertPEM)
	write("tls.key", two.KeyPEM)
	assert.Equal(t, "spiffe://example.org/edge/1", identity(), "an open connection keeps its certificate")
	assert.Equal(t, "spiffe://example.org/edge/2", reconnected(), "renewed in place")

	// A new version swapped in atomically: ..data renamed to point at v3.
	version("v3", issue("spiffe://example.org/edge/3"))
	require.NoError(t, os.Symlink("v3", filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	assert.Equal(t, "spiffe://example.org/edge/3", reconnected(), "swapped in by the symlink")

	// Half-way through a renewal: the key missing, then the new
	// certificate with the old key.
	require.NoError(t, os.Remove(filepath.Join(dir, "v3/tls.key")))
	assert.Equal(t, "spiffe://example.org/edge/3", reconnected(), "a file missing: the previous pair goes on")
	four := issue("spiffe://example.org/edge/4")
	write("v3/tls.crt.new", four.CertPEM)
	require.NoError(t, os.Rename(filepath.Join(dir, "v3/tls.crt.new"), filepath.Join(dir, "v3/tls.crt")))
	write("v3/tls.key", issue("spiffe://example.org/edge/other").KeyPEM)
	assert.Equal(t, "spiffe://example.org/edge/3", reconnected(), "a pair that does not match yet: the previous one goes on")
	write("v3/tls.key.new", four.KeyPEM)
	require.NoError(t, os.Rename(filepath.Join(dir, "v3/tls.key.new"), filepath.Join(dir, "v3/tls.key")))
	assert.Equal(t, "spiffe://example.org/edge/4", reconnected(), "renamed over, once the key follows")
}

// echoKey answers GetKey with the id asked for.
type echoKey struct{ pb.UnimplementedKeyVaultServer }

func (echoKey) GetKey(_ context.Context, r *pb.GetKeyRequest) (*pb.Key, error) {
	return &pb.Key{Id: r.GetKey()}, nil
}

// reissuedService is a service over TLS whose certificate can be replaced,
// by one from another CA: connections opened after present the new one.
type reissuedService struct {
	lis  *droppingListener
	cert atomic.Pointer[tls.Certificate]
}

func startReissuedService(t *testing.T, leaf *testpki.Leaf) *reissuedService {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &reissuedService{lis: &droppingListener{Listener: raw}}
	s.serve(leaf)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cert.Load(), nil },
	})))
	pb.RegisterKeyVaultServer(srv, echoKey{})
	go srv.Serve(s.lis)
	t.Cleanup(srv.Stop)
	return s
}

func (s *reissuedService) serve(leaf *testpki.Leaf) { s.cert.Store(&leaf.TLS) }
func (s *reissuedService) addr() string             { return s.lis.Addr().String() }

// caller is an SDK client, never restarted, of a service whose certificate
// is re-issued, and which the test drops the connections of.
type caller struct {
	t   *testing.T
	svc *reissuedService
	c   *handshaked.Client
}

func newCaller(t *testing.T, svc *reissuedService, cfg *tls.Config) *caller {
	t.Helper()
	c, err := handshaked.Dial(svc.addr(), handshaked.WithTLS(cfg), handshaked.WithTimeout(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &caller{t: t, svc: svc, c: c}
}

// connects drops the caller's connections and waits for a call to go
// through on a new one; it returns the last error if none does. Calls
// failing meanwhile (on the dropped connection, or with the refusal of a
// connection made before) are tried again.
func (c *caller) connects() error {
	c.t.Helper()
	c.svc.lis.dropAll()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var k *pb.Key
		if k, err = c.c.GetKey(context.Background(), "k"); err == nil {
			require.Equal(c.t, "k", k.GetId())
			return nil
		}
	}
	return err
}

// refusal drops the caller's connections and returns the error of the
// next connection's handshake, nil if a call goes through instead.
func (c *caller) refusal() error {
	c.t.Helper()
	c.svc.lis.dropAll()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.c.GetKey(context.Background(), "k")
		// A connection still in its handshake when the drop came (one the
		// caller made again after an earlier drop) fails with EOF, or with
		// a reset when the drop beat the caller's read: not the refusal
		// waited for, which the next connection's handshake gives.
		msg := strings.TrimSuffix(status.Convert(err).Message(), `"`)
		cut := strings.HasSuffix(msg, "EOF") || strings.HasSuffix(msg, "connection reset by peer") || strings.HasSuffix(msg, "broken pipe")
		if err == nil || strings.Contains(err.Error(), "authentication handshake failed") && !cut {
			return err
		}
		require.True(c.t, time.Now().Before(deadline), "no new connection, last error: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCABundleRotation: a CA rotation as an operator runs it, with the
// callers never restarted. The service's certificate is re-issued by a new
// CA; the callers' bundle goes from the old CA to old+new (renamed over),
// then to the new one only (written in place), and they connect again at
// once. The bundle is what they trust: the new CA before it is in it, and
// the old one once it is out, are refused. A bundle that does not load
// (cut short, removed) leaves the roots in force.
func TestCABundleRotation(t *testing.T) {
	oldCA, err := testpki.NewCA("handshaked CA 1")
	require.NoError(t, err)
	newCA, err := testpki.NewCA("handshaked CA 2")
	require.NoError(t, err)
	oldCert, err := oldCA.Server()
	require.NoError(t, err)
	newCert, err := newCA.Server()
	require.NoError(t, err)

	dir := t.TempDir()
	bundle := filepath.Join(dir, "ca.pem")
	renameOver := func(pem []byte) {
		require.NoError(t, os.WriteFile(bundle+".new", pem, 0o600))
		require.NoError(t, os.Rename(bundle+".new", bundle))
	}
	renameOver(oldCA.PEM)
	svc := startReissuedService(t, oldCert)
	cfg, err := handshaked.TLSConfigFromFiles(bundle, "", "")
	require.NoError(t, err)
	c := newCaller(t, svc, cfg)
	require.NoError(t, c.connects())
	// A Clone given the name to expect (what handshakectl -server-name
	// sets) follows the bundle too.
	named := cfg.Clone()
	named.ServerName = "localhost"
	cn := newCaller(t, svc, named)
	require.NoError(t, cn.connects())

	svc.serve(newCert)
	assert.ErrorContains(t, c.refusal(), "x509: certificate signed by unknown authority", "the new CA, not in the bundle yet")

	renameOver(append(append([]byte{}, oldCA.PEM...), newCA.PEM...))
	assert.NoError(t, c.connects(), "old+new: the re-issued certificate")
	svc.serve(oldCert)
	assert.NoError(t, c.connects(), "old+new: a replica not re-issued yet")

	require.NoError(t, os.WriteFile(bundle, newCA.PEM, 0o600))
	assert.ErrorContains(t, c.refusal(), "x509: certificate signed by unknown authority", "the old CA, out of the bundle")
	svc.serve(newCert)
	assert.NoError(t, c.connects(), "new only")
	assert.NoError(t, cn.connects(), "new only, the copy with a server name")

	// A bundle cut short (the old CA whole, the new one half-written),
	// then none: the roots in force go on, exactly.
	require.NoError(t, os.WriteFile(bundle, append(append([]byte{}, oldCA.PEM...), newCA.PEM[:len(newCA.PEM)/2]...), 0o600))
	assert.NoError(t, c.connects(), "a bundle cut short keeps the roots in force")
	svc.serve(oldCert)
	assert.ErrorContains(t, c.refusal(), "unknown authority", "...not the certificates the cut bundle still has")
	require.NoError(t, os.Remove(bundle))
	svc.serve(newCert)
	assert.NoError(t, c.connects(), "a bundle removed keeps the roots in force")
}

// TestCABundleStillVerifies: with roots that follow their bundle, and after
// the bundle changed, a service's certificate is verified as strictly as
// with fixed roots: one from a CA not in the bundle, for another name,
// expired, or not for servers (clientAuth only) is refused, and the
// caller connects again once the service presents a good one.
func TestCABundleStillVerifies(t *testing.T) {
	first, err := testpki.NewCA("handshaked CA 1")
	require.NoError(t, err)
	ca, err := testpki.NewCA("handshaked CA 2")
	require.NoError(t, err)
	other, err := testpki.NewCA("someone else's CA")
	require.NoError(t, err)
	good, err := ca.Server()
	require.NoError(t, err)

	bundle := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(bundle, first.PEM, 0o600))
	svc := startReissuedService(t, good)
	cfg, err := handshaked.TLSConfigFromFiles(bundle, "", "")
	require.NoError(t, err)
	c := newCaller(t, svc, cfg)
	require.NoError(t, os.WriteFile(bundle, ca.PEM, 0o600))
	require.NoError(t, c.connects(), "the rotated bundle")

	issue := func(leaf *testpki.Leaf, err error) *testpki.Leaf {
		require.NoError(t, err)
		return leaf
	}
	hour := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name, refusal string
		leaf          *testpki.Leaf
	}{
		{"untrusted CA", "x509: certificate signed by unknown authority", issue(other.Server())},
		{"wrong name", "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs", issue(ca.ServerNamed("elsewhere.example"))},
		{"expired", "x509: certificate has expired or is not yet valid", issue(ca.ServerFor(time.Now().Add(-time.Minute), x509.ExtKeyUsageServerAuth))},
		{"clientAuth only", "x509: certificate specifies an incompatible key usage", issue(ca.ServerFor(hour, x509.ExtKeyUsageClientAuth))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc.serve(tc.leaf)
			assert.ErrorContains(t, c.refusal(), tc.refusal)
			svc.serve(good)
			assert.NoError(t, c.connects())
		})
	}
}
