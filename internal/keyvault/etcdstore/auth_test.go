package etcdstore_test

import (
	"crypto/rand"
	"crypto/tls"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/testpki"
)

// TestAuthRole: what an operator's etcd must allow. With authentication on
// and the user named by handshaked's client certificate granted a readwrite
// role on its prefix, the store does what the vault needs (reads,
// compare-and-swap commits, watches, leases for its announcement, waiting
// on the other replicas) but etcd refuses it the compaction that a destroy
// needs: the destroy fails saying what to grant, and once the user has the
// root role the next commit compacts. Outside its prefix the store is
// refused with a message saying what to grant. Defragmenting needs root.
func TestAuthRole(t *testing.T) {
	ca, err := testpki.NewCA("etcd auth CA")
	require.NoError(t, err)
	server, err := ca.Server()
	require.NoError(t, err)
	root, err := ca.Client("root", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	user, err := ca.Client("handshaked", false, time.Now().Add(time.Hour))
	require.NoError(t, err)
	c := etcdtest.Start(t, 1, etcdtest.WithServerTLS(etcdtest.ServerTLS{CertPEM: server.CertPEM, KeyPEM: server.KeyPEM, ClientCAPEM: ca.PEM}))
	tlsAs := func(l *testpki.Leaf) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{l.TLS}}
	}
	ctx := t.Context()

	// The operator's setup (etcdctl user add / role add / role
	// grant-permission --prefix / user grant-role / auth enable).
	admin := c.Client(t, tlsAs(root))
	noPassword := &clientv3.UserAddOptions{NoPassword: true}
	_, err = admin.UserAddWithOptions(ctx, "root", "", noPassword)
	require.NoError(t, err)
	_, err = admin.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = admin.RoleAdd(ctx, "handshaked-prod")
	require.NoError(t, err)
	_, err = admin.RoleGrantPermission(ctx, "handshaked-prod", "/handshaked/prod/", clientv3.GetPrefixRangeEnd("/handshaked/prod/"), clientv3.PermissionType(authpb.READWRITE))
	require.NoError(t, err)
	_, err = admin.UserAddWithOptions(ctx, "handshaked", "", noPassword)
	require.NoError(t, err)
	_, err = admin.UserGrantRole(ctx, "handshaked", "handshaked-prod")
	require.NoError(t, err)
	_, err = admin.AuthEnable(ctx)
	require.NoError(t, err)

	openAs := func(prefix string) (*etcdstore.Store, error) {
		return etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix, TLS: tlsAs(user), RequestTimeout: 2 * time.Second, LeaseTTL: 2 * time.Second})
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	store, err := openAs("/handshaked/prod/")
	require.NoError(t, err)
	v, err := keyvault.New(ctx, store, kek) // announces under a lease
	require.NoError(t, err)
	defer v.Close()
	_, err = v.Create(ctx, "web", keyvault.ECDSAP256, nil)
	require.NoError(t, err)
	_, err = v.Rotate(ctx, "web")
	require.NoError(t, err)
	_, err = v.SetVersionEnabled(ctx, "web", 1, false) // waits for the replicas
	require.NoError(t, err)
	_, err = v.DestroyVersion(ctx, "web", 1)
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, "compacting needs the root role")
	_, err = admin.Get(ctx, "/handshaked/prod/", clientv3.WithPrefix(), clientv3.WithRev(2))
	require.NoError(t, err, "not compacted")

	_, err = admin.UserGrantRole(ctx, "handshaked", "root")
	require.NoError(t, err)
	_, err = v.Create(ctx, "next", keyvault.ECDSAP256, nil) // the next commit compacts
	require.NoError(t, err)
	_, err = admin.Get(ctx, "/handshaked/prod/", clientv3.WithPrefix(), clientv3.WithRev(2))
	assert.ErrorIs(t, err, rpctypes.ErrCompacted, "the history of the destroyed version is compacted")
	k, err := v.Get(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, keyvault.StateDestroyed, k.Versions[0].State)
	_, err = admin.UserRevokeRole(ctx, "handshaked", "root")
	require.NoError(t, err)

	other, err := openAs("/handshaked/staging/")
	if err == nil {
		_, err = other.Scan(ctx, func(keyvault.Record) error { return nil })
		other.Close()
	}
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.ErrorContains(t, err, `handshaked's etcd user needs read and write on the keys under "/handshaked/staging/"`)

	_, err = c.Client(t, tlsAs(user)).Defragment(ctx, c.Endpoint(0))
	assert.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "defragmenting needs root")
	_, err = admin.Defragment(ctx, c.Endpoint(0))
	assert.NoError(t, err)
}
