package etcdstore_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// announces counts a replica's Announce calls: keepUp makes one at each
// tick, refused or not.
type announces struct {
	*etcdstore.Store
	n atomic.Int64
}

func (s *announces) Announce(ctx context.Context, rev int64) error {
	s.n.Add(1)
	return s.Store.Announce(ctx, rev)
}

func (s *announces) wait(t *testing.T, n int64) {
	t.Helper()
	until := s.n.Load() + n
	require.Eventually(t, func() bool { return s.n.Load() >= until }, time.Minute, time.Millisecond)
}

// conflictErrors returns the ERROR records logged since the last take that
// say another deployment's replicas are live, and how many others.
func conflictErrors(logs *logRecords) (conflicts []string, others int) {
	for _, r := range logs.take(slog.LevelError) {
		if strings.Contains(r, "replicas of another deployment are live") {
			conflicts = append(conflicts, r)
		} else {
			others++
		}
	}
	return conflicts, others
}

// TestReplicaOfARenamedDeployment: a replica of "x" cut off from etcd
// past its lease (here its lease is revoked) while the operator renamed
// the deployment to "y" and started a replica of it. The replica of "x"
// announces nothing, refuses key use (UNAVAILABLE, naming both
// deployments), tells OnDeploymentConflict (readiness), and logs one
// ERROR however many ticks it retries; once the replica of "y" closed it
// is announced again, serves, and logs one INFO.
func TestReplicaOfARenamedDeployment(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	raw := c.Client(t, nil)
	logs := captureLog(t)
	sx := open(t, c, "/renamed", deployment("x"), shortBound)
	require.NoError(t, sx.JoinDeployment(ctx))
	xs := &announces{Store: sx}
	x := openVault(t, xs, keyvault.WithStalenessBound(200*time.Millisecond))
	_, err := x.Create(ctx, "web", keyvault.Ed25519, nil)
	require.NoError(t, err)
	require.NoError(t, sign(x, "web", 1))
	conflicts := make(chan error, 16)
	x.OnDeploymentConflict(func(err error) { conflicts <- err })
	require.NoError(t, <-conflicts, "no conflict at first")

	// The replica of "y" joined first (announceOther), then x's lease
	// lapsed: the order in which x finds "y" at its next tick.
	other := announceOther(t, raw, "/renamed/", "y")
	_, err = raw.Revoke(ctx, leaseOf(t, c, "/renamed/deployments/", "x"))
	require.NoError(t, err)
	var conflict error
	select {
	case conflict = <-conflicts:
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the replica of x did not find the conflict")
	}
	require.ErrorIs(t, conflict, keyvault.ErrDeploymentConflict)
	err = sign(x, "web", 1)
	require.ErrorIs(t, err, keyvault.ErrUnavailable, "key use stops")
	assert.ErrorIs(t, err, keyvault.ErrDeploymentConflict)
	assert.ErrorContains(t, err, `are of deployment "y", and this one is started as "x"`)

	// A real replica of "y" takes over from the stand-in.
	sy := open(t, c, "/renamed", deployment("y"), shortBound)
	require.NoError(t, sy.JoinDeployment(ctx))
	y, err := keyvault.Open(ctx, sy, vaultKEK, keyvault.WithStalenessBound(200*time.Millisecond))
	require.NoError(t, err)
	_, err = raw.Revoke(ctx, other)
	require.NoError(t, err)
	xs.wait(t, 8) // two staleness bounds of ticks, each refused
	assert.Equal(t, []string{"y"}, announcedValues(t, raw, "/renamed/deployments/"), "x announces nothing")
	assert.ErrorIs(t, sign(x, "web", 1), keyvault.ErrDeploymentConflict)
	assert.Empty(t, conflicts, "told once")
	errs, others := conflictErrors(logs)
	assert.Len(t, errs, 1, "logged once, not at every tick")
	assert.Zero(t, others, "no other ERROR for the same refusal")
	if len(errs) > 0 {
		assert.Contains(t, errs[0], "stop the replicas of one of the two deployments")
	}

	require.NoError(t, y.Close())
	select {
	case conflict = <-conflicts:
		require.NoError(t, conflict)
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the replica of x did not rejoin once y closed")
	}
	require.Eventually(t, func() bool { return sign(x, "web", 1) == nil }, 30*time.Second, time.Millisecond, "x serves again")
	assert.Equal(t, []string{"x"}, announcedValues(t, raw, "/renamed/deployments/"))
	var cleared []string
	for _, r := range logs.take(slog.LevelInfo) {
		if strings.Contains(r, "no replica of another deployment is live") {
			cleared = append(cleared, r)
		}
	}
	assert.Len(t, cleared, 1)
	xs.wait(t, 4)
	errs, _ = conflictErrors(logs)
	assert.Empty(t, errs)
}
