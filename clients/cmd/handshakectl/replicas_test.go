package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// TestReplicaList: -handshaked takes the list of a deployment's replicas
// and reaches the key on whichever of them is up.
func TestReplicaList(t *testing.T) {
	replicas := servicetest.StartReplicas(t, 3, service.Options{}, func(s *servicetest.Server) {
		_, err := pb.NewKeyVaultClient(s.Conn).CreateKey(context.Background(), &pb.CreateKeyRequest{Id: "ctl-replicated", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
		require.NoError(t, err)
	})
	get := func() (string, error) {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), []string{"-handshaked", servicetest.ListTarget(replicas), "get", "ctl-replicated"}, nil, &stdout, &stderr)
		return stdout.String(), err
	}
	out, err := get()
	require.NoError(t, err)
	assert.Contains(t, out, "version 1\ted25519\tenabled")

	replicas[0].Kill()
	replicas[2].Kill()
	for range 5 {
		out, err := get()
		require.NoError(t, err, "one replica of three is up")
		assert.Contains(t, out, "version 1\ted25519\tenabled")
	}
	replicas[1].Kill()
	_, err = get()
	assert.ErrorContains(t, err, "Unavailable", "no replica up")
}
