package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// versionStates reads the state of each version of key id from the vault.
func versionStates(t *testing.T, srv *servicetest.Server, id string) map[uint32]pb.KeyVersionState {
	t.Helper()
	k, err := handshaked.New(srv.Conn).GetKey(context.Background(), id)
	require.NoError(t, err)
	states := map[uint32]pb.KeyVersionState{}
	for _, v := range k.GetVersions() {
		states[v.GetVersion()] = v.GetState()
	}
	return states
}

// TestEnableDisable: disable and enable change the state of exactly the
// version named, as the vault reports it afterwards, and say so.
func TestEnableDisable(t *testing.T) {
	srv := servicetest.Start(t, service.Options{})
	mustCtl(t, srv, nil, "create", "-algorithm", "p256", "state-ec")
	mustCtl(t, srv, nil, "rotate", "state-ec")
	mustCtl(t, srv, nil, "rotate", "state-ec") // versions 1, 2, 3; 3 is the primary
	const (
		enabled  = pb.KeyVersionState_KEY_VERSION_STATE_ENABLED
		disabled = pb.KeyVersionState_KEY_VERSION_STATE_DISABLED
	)
	require.Equal(t, map[uint32]pb.KeyVersionState{1: enabled, 2: enabled, 3: enabled}, versionStates(t, srv, "state-ec"))

	out := mustCtl(t, srv, nil, "disable", "state-ec", "2")
	assert.Contains(t, out, "version 2\tecdsa_p256\tdisabled")
	assert.Equal(t, map[uint32]pb.KeyVersionState{1: enabled, 2: disabled, 3: enabled}, versionStates(t, srv, "state-ec"))

	mustCtl(t, srv, nil, "disable", "state-ec", "1")
	assert.Equal(t, map[uint32]pb.KeyVersionState{1: disabled, 2: disabled, 3: enabled}, versionStates(t, srv, "state-ec"))

	out = mustCtl(t, srv, nil, "enable", "state-ec", "2")
	assert.Contains(t, out, "version 2\tecdsa_p256\tenabled")
	assert.Equal(t, map[uint32]pb.KeyVersionState{1: disabled, 2: enabled, 3: enabled}, versionStates(t, srv, "state-ec"))

	// Refused: a version that does not exist, a missing version argument.
	_, err := ctl(t, srv, nil, "enable", "state-ec", "9")
	assert.Error(t, err)
	_, err = ctl(t, srv, nil, "disable", "state-ec")
	assert.Error(t, err)
	assert.Equal(t, map[uint32]pb.KeyVersionState{1: disabled, 2: enabled, 3: enabled}, versionStates(t, srv, "state-ec"))
}
