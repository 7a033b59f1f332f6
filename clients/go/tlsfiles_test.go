package handshaked_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

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
