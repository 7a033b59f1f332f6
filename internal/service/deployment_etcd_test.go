package service_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestReplicaOfAnotherDeploymentIsNotReady: a replica of "x" whose etcd
// lease lapsed while a replica of "y" joined the key store refuses key use
// with UNAVAILABLE, naming both deployments, so that callers turn to
// another replica, and its API services report NOT_SERVING to health
// checks (readiness) while the server's own health stays SERVING
// (liveness: a restart would be refused at start, and the replica serves
// again by itself). Once no replica of "y" is live it is SERVING and
// signs again.
func TestReplicaOfAnotherDeploymentIsNotReady(t *testing.T) {
	ctx := t.Context()
	cluster := etcdtest.Start(t, 1)
	raw := cluster.Client(t, nil)
	bound := 200 * time.Millisecond
	store, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/renamed", RequestTimeout: 2 * time.Second,
		LeaseTTL: 2 * time.Second, StalenessBound: bound, Deployment: "x"})
	require.NoError(t, err)
	require.NoError(t, store.JoinDeployment(ctx))
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek, keyvault.WithStalenessBound(bound))
	require.NoError(t, err)
	t.Cleanup(func() { vault.Close() })
	s := servicetest.StartOnVault(t, vault, service.Options{Handshake: service.HandshakeOptions{Deployment: "x"}})
	kv := pb.NewKeyVaultClient(s.Conn)
	_, err = kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "web", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)
	signReq := &pb.SignRequest{Key: "web", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}}
	_, err = kv.Sign(ctx, signReq)
	require.NoError(t, err)

	health := healthpb.NewHealthClient(s.Conn)
	watchCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	watches := map[string]healthpb.Health_WatchClient{}
	for _, name := range []string{"handshake.v1.KeyVault", "handshake.v1.Handshake"} {
		w, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{Service: name})
		require.NoError(t, err)
		watches[name] = w
	}
	next := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for name, w := range watches {
			resp, err := w.Recv()
			require.NoError(t, err)
			assert.Equal(t, want, resp.GetStatus(), name)
		}
	}
	next(healthpb.HealthCheckResponse_SERVING)

	// A replica of "y" announced while x was cut off; then x's lease
	// lapsed.
	y, err := raw.Grant(ctx, 60)
	require.NoError(t, err)
	_, err = raw.Put(ctx, fmt.Sprintf("/renamed/deployments/%016x", int64(y.ID)), "y", clientv3.WithLease(y.ID))
	require.NoError(t, err)
	resp, err := raw.Get(ctx, "/renamed/deployments/", clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		if string(kv.Value) == "x" {
			_, err = raw.Revoke(ctx, clientv3.LeaseID(kv.Lease))
			require.NoError(t, err)
		}
	}
	next(healthpb.HealthCheckResponse_NOT_SERVING)
	own, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, own.GetStatus(), "the process is alive")
	_, err = kv.Sign(ctx, signReq)
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.ErrorContains(t, err, `are of deployment "y", and this one is started as "x"`)

	_, err = raw.Revoke(ctx, y.ID)
	require.NoError(t, err)
	next(healthpb.HealthCheckResponse_SERVING)
	require.Eventually(t, func() bool {
		_, err := kv.Sign(ctx, signReq)
		return err == nil
	}, 30*time.Second, time.Millisecond, "x signs again")
}
