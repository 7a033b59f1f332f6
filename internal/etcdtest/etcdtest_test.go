package etcdtest_test

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func put(ctx context.Context, t *testing.T, c *etcdtest.Cluster, key string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := c.Client(t, nil).Put(ctx, key, "v")
	return err
}

// A three-member cluster is one Raft group: it writes with one member
// stopped, not with two, and again once a second member is back.
func TestClusterQuorum(t *testing.T) {
	c := etcdtest.Start(t, 3)
	require.Equal(t, 3, c.Size())
	ctx := t.Context()
	cli := c.Client(t, nil)
	_, err := cli.Put(ctx, "a", "1")
	require.NoError(t, err)

	// Every member serves the same data: read through each one alone.
	for i := range c.Size() {
		one := etcdtest.ClientOf(t, nil, c.Endpoint(i))
		resp, err := one.Get(ctx, "a")
		require.NoError(t, err, "member %d", i)
		require.Len(t, resp.Kvs, 1)
		assert.Equal(t, "1", string(resp.Kvs[0].Value))
	}

	c.Stop(0)
	assert.NoError(t, put(ctx, t, c, "b"), "two of three members keep quorum")
	c.Stop(1)
	assert.Error(t, put(ctx, t, c, "c"), "one of three members has no quorum")
	c.Restart(1)
	assert.NoError(t, put(ctx, t, c, "d"))
	c.Restart(0)
	resp, err := etcdtest.ClientOf(t, nil, c.Endpoint(0)).Get(ctx, "d")
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "a restarted member catches up")
}

// With server TLS and a client CA, a client needs a certificate of that CA.
func TestClusterMutualTLS(t *testing.T) {
	ca, err := testpki.NewCA("etcd CA")
	require.NoError(t, err)
	server, err := ca.Server()
	require.NoError(t, err)
	client, err := ca.Client("handshaked", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	c := etcdtest.Start(t, 1, etcdtest.WithServerTLS(etcdtest.ServerTLS{CertPEM: server.CertPEM, KeyPEM: server.KeyPEM, ClientCAPEM: ca.PEM}))
	require.Contains(t, c.Endpoint(0), "https://")

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = c.Client(t, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS}}).Put(ctx, "k", "v")
	require.NoError(t, err)

	ctx, cancel = context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err = c.Client(t, &tls.Config{RootCAs: ca.Pool()}).Put(ctx, "k", "v")
	assert.Error(t, err, "a client without a certificate is refused")
}
