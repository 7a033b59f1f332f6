package etcdstore_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

func deployment(name string) func(*etcdstore.Config) {
	return func(cfg *etcdstore.Config) { cfg.Deployment = name }
}

// announcedValues returns the values under prefix, sorted.
func announcedValues(t *testing.T, raw *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := raw.Get(t.Context(), prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	var values []string
	for _, kv := range resp.Kvs {
		values = append(values, string(kv.Value))
	}
	slices.Sort(values)
	return values
}

// announceOther stands for a replica of deployment name that joined the
// store under prefix while another was cut off from etcd: its
// announcement, under a lease of its own that the test revokes.
func announceOther(t *testing.T, raw *clientv3.Client, prefix, name string) clientv3.LeaseID {
	t.Helper()
	lease, err := raw.Grant(t.Context(), 60)
	require.NoError(t, err)
	_, err = raw.Put(t.Context(), fmt.Sprintf("%sdeployments/%016x", prefix, int64(lease.ID)), name, clientv3.WithLease(lease.ID))
	require.NoError(t, err)
	return lease.ID
}

// TestAnnounceOnANewLeaseJoinsTheDeployment: a replica of "x" whose lease
// lapsed (cut off from etcd past its TTL, here revoked) while a replica of
// "y" joined the store announces nothing on its new lease, neither its
// revision nor its deployment, and says why and what to do; once no
// replica of "y" is live it announces both. It used to put its deployment
// beside "y" unconditionally: a mixed deployment, which JoinDeployment
// refuses at start.
func TestAnnounceOnANewLeaseJoinsTheDeployment(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	raw := c.Client(t, nil)
	x := open(t, c, "/lapse", deployment("x"))
	require.NoError(t, x.JoinDeployment(ctx))
	require.NoError(t, x.Announce(ctx, 5))

	y := announceOther(t, raw, "/lapse/", "y")
	_, err := raw.Revoke(ctx, leaseOf(t, c, "/lapse/deployments/", "x"))
	require.NoError(t, err)
	err = x.Announce(ctx, 6)
	require.ErrorIs(t, err, keyvault.ErrDeploymentConflict)
	assert.ErrorIs(t, err, keyvault.ErrUnavailable, "key use balanced onto it is retried on another replica")
	assert.ErrorContains(t, err, `are of deployment "y", and this one is started as "x"`)
	assert.ErrorContains(t, err, "stop the replicas of one of the two deployments")
	assert.Equal(t, []string{"y"}, announcedValues(t, raw, "/lapse/deployments/"))
	assert.Empty(t, announcedValues(t, raw, "/lapse/replicas/"), "nothing announced")
	assert.Empty(t, announcedValues(t, raw, "/lapse/bounds/"))

	// Refused again at every attempt, while "y" is live.
	require.ErrorIs(t, x.Announce(ctx, 6), keyvault.ErrDeploymentConflict)

	_, err = raw.Revoke(ctx, y)
	require.NoError(t, err)
	require.NoError(t, x.Announce(ctx, 6))
	assert.Equal(t, []string{"x"}, announcedValues(t, raw, "/lapse/deployments/"))
	assert.Equal(t, []string{"6"}, announcedValues(t, raw, "/lapse/replicas/"))

	// A replica that names no deployment checks none (as JoinDeployment).
	anon := open(t, c, "/lapse")
	require.NoError(t, anon.JoinDeployment(ctx))
	require.NoError(t, anon.Announce(ctx, 6))
	assert.Equal(t, []string{"x"}, announcedValues(t, raw, "/lapse/deployments/"))
}

// TestReannouncingAtOnce: replicas of two deployments whose leases lapsed
// re-announce at once: exactly one is announced, with its deployment, and
// the other is refused. The check and the announcement are one
// transaction; read, then announced apart, both could pass. The replicas
// start their attempts together, many rounds, since the test cannot order
// the two requests of one attempt against the other's (see the note of
// the change).
func TestReannouncingAtOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	raw := c.Client(t, nil)
	for round := range 20 {
		prefix := fmt.Sprintf("/reannounce-%d/", round)
		a, b := open(t, c, prefix, deployment("a")), open(t, c, prefix, deployment("b"))
		// a announces first, b is a replica of "a" renamed: both lose
		// their leases and try again.
		require.NoError(t, a.Announce(ctx, 1))
		_, err := raw.Revoke(ctx, leaseOf(t, c, prefix+"deployments/", "a"))
		require.NoError(t, err)
		errs := make(chan error, 2)
		start := make(chan struct{})
		for _, s := range []*etcdstore.Store{a, b} {
			go func() {
				<-start
				errs <- s.Announce(ctx, 2)
			}()
		}
		close(start)
		var refused []error
		for range 2 {
			if err := <-errs; err != nil {
				refused = append(refused, err)
			}
		}
		require.Len(t, refused, 1, "round %d: one replica is announced, the other refused", round)
		require.ErrorIs(t, refused[0], keyvault.ErrDeploymentConflict)
		names := announcedValues(t, raw, prefix+"deployments/")
		require.Len(t, names, 1, "round %d: one deployment announced", round)
		assert.Equal(t, []string{"2"}, announcedValues(t, raw, prefix+"replicas/"), "round %d", round)
		assert.ErrorContains(t, refused[0], fmt.Sprintf("are of deployment %q", names[0]))
	}
}
