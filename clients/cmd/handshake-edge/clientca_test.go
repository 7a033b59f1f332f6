package main

import (
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/testpki"
)

// TestFollowsClientCA: handshake-edge, running all along, gives each new
// connection's handshake the -client-ca bundle its file holds then. A
// client certificate from a new CA is refused until the bundle has old and
// new (renamed over), then both are accepted; once the bundle holds the
// new CA only (written in place), the old CA's is refused, but in a
// handshake that started before. A bundle cut short keeps the one in
// force, with a warning, rather than the roots it kept before the cut.
func TestFollowsClientCA(t *testing.T) {
	f := newFixture(t)
	oldCA, err := testpki.NewCA("web clients CA 1")
	require.NoError(t, err)
	newCA, err := testpki.NewCA("web clients CA 2")
	require.NoError(t, err)
	oldClient, err := oldCA.Client("client-old", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	newClient, err := newCA.Client("client-new", false, time.Now().Add(time.Hour))
	require.NoError(t, err)

	file := filepath.Join(t.TempDir(), "clients.pem")
	renameOver := func(b []byte) {
		require.NoError(t, os.WriteFile(file+".new", b, 0o600))
		require.NoError(t, os.Rename(file+".new", file))
	}
	renameOver(oldCA.PEM)
	addr, log := f.start(t, "-client-auth", "require", "-client-ca", file)

	// get fetches the page over a new connection with the client's
	// certificate, sent whatever CAs the edge names (crypto/tls would
	// otherwise send none the edge does not name): the refusal is the
	// engine's verification against the bundle in force. In TLS 1.3 a
	// refused certificate shows at the first read. midway runs once the
	// edge has asked for the certificate, before the client sends it.
	getMidway := func(client *testpki.Leaf, midway func()) error {
		return f.pageWith(addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				midway()
				return &client.TLS, nil
			}})
	}
	get := func(client *testpki.Leaf) error { return getMidway(client, func() {}) }
	// refused is what a client whose certificate the edge refuses reads:
	// in TLS 1.3 the refusal (an alert, then the close) follows the
	// client's completed handshake. It reads without sending a request:
	// net/http, whose writer can meet the close before its reader has
	// the alert, may report its own closed connection instead.
	refused := func(client *testpki.Leaf) error {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: f.ecdsa.Name, RootCAs: f.ecdsa.Pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client.TLS, nil }})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	assert.NoError(t, get(oldClient), "the old CA, in the bundle")
	assert.ErrorContains(t, refused(newClient), "unknown certificate authority", "the new CA, not in the bundle yet")

	renameOver(append(append([]byte{}, oldCA.PEM...), newCA.PEM...))
	assert.NoError(t, get(newClient), "old+new: the new CA's certificate, without a restart")
	assert.NoError(t, get(oldClient), "old+new: the old CA's still")

	// A handshake already started keeps the bundle it started with: the
	// old CA's certificate, sent after the bundle became the new CA only
	// (written in place), is verified against old+new.
	assert.NoError(t, getMidway(oldClient, func() { assert.NoError(t, os.WriteFile(file, newCA.PEM, 0o600)) }),
		"the bundle changed mid-handshake")
	assert.NoError(t, get(newClient), "the new CA only")
	assert.ErrorContains(t, refused(oldClient), "unknown certificate authority", "the old CA, out of the bundle")

	// Cut short in the second certificate: a lax parse would keep the
	// first block (the old CA) alone.
	both := append(append([]byte{}, oldCA.PEM...), newCA.PEM...)
	renameOver(both[:len(oldCA.PEM)+len(newCA.PEM)/2])
	assert.NoError(t, get(newClient), "cut short: the bundle in force (new only) kept")
	assert.ErrorContains(t, refused(oldClient), "unknown certificate authority", "cut short: the bundle in force (new only) kept")
	assert.Contains(t, log.String(), `msg="client CA bundle (-client-ca): the changed file does not load, keeping the loaded one"`)
}

// BenchmarkClientCAs measures what following -client-ca costs each new
// connection when the bundle is unchanged (a stat, the configuration
// kept); compare with a handshake's time in BenchmarkRequests.
//
//	go test -run '^$' -bench ClientCAs -cpu 1,2 ./clients/cmd/handshake-edge/
func BenchmarkClientCAs(b *testing.B) {
	ca, err := testpki.NewCA("web clients CA")
	require.NoError(b, err)
	file := filepath.Join(b.TempDir(), "clients.pem")
	require.NoError(b, os.WriteFile(file, ca.PEM, 0o600))
	bundle, err := handshaked.FollowCABundle(file, "client CA bundle (-client-ca)", slog.Default())
	require.NoError(b, err)
	c := &clientCAs{bundle: bundle, base: &pb.HandshakeConfig{}}
	first := c.handshake()
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			if c.handshake() != first {
				b.Error("the configuration changed with the bundle unchanged")
				return
			}
		}
	})
}
