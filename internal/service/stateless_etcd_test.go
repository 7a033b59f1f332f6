package service_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// startSharedReplicas starts n replicas of deployment "prod" on one new
// etcd cluster; the first one creates the vault.
func startSharedReplicas(t *testing.T, n int) []*servicetest.Server {
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	kek := make([]byte, 32)
	rand.Read(kek)
	var replicas []*servicetest.Server
	for i := range n {
		store, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/shared", RequestTimeout: 2 * time.Second, LeaseTTL: 2 * time.Second})
		require.NoError(t, err)
		open := keyvault.Open
		if i == 0 {
			open = keyvault.New
		}
		vault, err := open(ctx, store, kek)
		require.NoError(t, err)
		t.Cleanup(func() { vault.Close() })
		replicas = append(replicas, servicetest.StartOnVault(t, vault, service.Options{Handshake: service.HandshakeOptions{Deployment: "prod"}}))
	}
	return replicas
}

// TestListPagesAcrossReplicas: a listing's pages may each come from
// another replica, as a balancing client sends them: a page token one
// replica sealed opens on the other, and the pages cover every key once.
func TestListPagesAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	replicas := startSharedReplicas(t, 2)
	kva := pb.NewKeyVaultClient(replicas[0].Conn)
	want := map[string]bool{}
	for _, id := range []string{"k1", "k2", "k3", "k4", "k5"} {
		_, err := kva.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
		require.NoError(t, err)
		want[id] = true
	}
	got := map[string]bool{}
	token := ""
	for page := 0; ; page++ {
		require.Less(t, page, 10, "the listing does not end")
		resp, err := pb.NewKeyVaultClient(replicas[page%2].Conn).ListKeys(ctx, &pb.ListKeysRequest{PageSize: 2, PageToken: token})
		require.NoError(t, err, "page %d on replica %d", page, page%2)
		for _, k := range resp.GetKeys() {
			assert.False(t, got[k.GetId()], "%s listed twice", k.GetId())
			got[k.GetId()] = true
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	assert.Equal(t, want, got)
}

// TestStatelessOnSharedStore: two replicas on one etcd cluster. A stateless
// handshake started on one continues on the other with a key and a
// step-token key the other has just learnt of; a rotation mid-handshake
// does not switch its key; a disable on one replica ends the handshakes
// in flight on the other once the call returns.
func TestStatelessOnSharedStore(t *testing.T) {
	ctx := context.Background()
	replicas := startSharedReplicas(t, 2)
	a, b := replicas[0], replicas[1]
	ha, hb := pb.NewHandshakeClient(a.Conn), pb.NewHandshakeClient(b.Conn)

	key := a.ServerKey(t, "k", "p256-sec1.pem", "k.test")
	cfg := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "k"}}}
	st := &tokenStepper{hcs: []pb.HandshakeClient{ha, hb}, start: &pb.StartHandshakeRequest{Config: cfg}}
	state, r := runClient(t, &tls.Config{RootCAs: key.Pool, ServerName: key.Name, MinVersion: tls.VersionTLS13}, func() stepper { return st })
	require.True(t, state.HandshakeComplete)
	assert.Equal(t, "k", r.session.GetKey().GetKey())

	// Started on a with version 1; a rotates; b continues with version 1.
	hello := service.GoClientHello(t, key.Pool)
	started, err := ha.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: cfg, Input: hello, Stateless: true})
	require.NoError(t, err)
	kv := pb.NewKeyVaultClient(a.Conn)
	_, err = kv.RotateKey(ctx, &pb.RotateKeyRequest{Key: "k"})
	require.NoError(t, err)
	_, err = hb.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: started.GetId(), Input: []byte{21, 3, 3, 0, 2, 1, 0}, StateToken: started.GetStateToken()})
	require.NoError(t, err, "a rotation ended a handshake of the version before")

	// Disabled on a: refused on b the moment the call returned.
	v1 := &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "k", Version: 1}}}
	started, err = ha.StartHandshake(ctx, &pb.StartHandshakeRequest{Config: v1, Input: hello, Stateless: true})
	require.NoError(t, err)
	_, err = kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: "k", Version: 1})
	require.NoError(t, err)
	_, err = hb.StepHandshake(ctx, &pb.StepHandshakeRequest{Id: started.GetId(), Input: []byte{21, 3, 3, 0, 2, 1, 0}, StateToken: started.GetStateToken()})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
}
