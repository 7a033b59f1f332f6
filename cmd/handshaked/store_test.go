package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestProductionStore: production creates a vault only when asked (-init),
// and a damaged store or one another process holds stops it with a message
// saying which, not a panic.
func TestProductionStore(t *testing.T) {
	s := newProdSetup(t)
	noInit := slices.DeleteFunc(s.args(), func(a string) bool { return a == "-init" })
	db := filepath.Join(s.dataDir, "keys.db")
	stop := func(p *process) {
		t.Helper()
		require.NoError(t, p.cmd.Process.Kill())
		<-p.exited
	}

	out := waitExit(t, startProcess(t, s.dataDir, noInit...))
	assert.Contains(t, out, "does not exist: start with -init")
	assert.NoFileExists(t, db, "a refused start created the store")

	require.NoError(t, os.MkdirAll(s.dataDir, 0o700))
	require.NoError(t, os.WriteFile(db, nil, 0o600))
	out = waitExit(t, startProcess(t, s.dataDir, noInit...))
	assert.Contains(t, out, "holds no vault: start with -init")

	p := startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "did not start with -init:\n%s", p.out())
	_, err := s.kv(t, p.grpcAddr, s.admin).CreateKey(context.Background(), &pb.CreateKeyRequest{Id: "kept", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)

	// A second instance on the same store is refused, naming the first.
	out = waitExit(t, startProcess(t, s.dataDir, noInit...))
	assert.Contains(t, out, "another process has it open (pid "+strconv.Itoa(p.cmd.Process.Pid)+", ")
	assert.Contains(t, out, ", since ")
	assert.NotContains(t, out, "timeout")
	stop(p)

	p = startProcess(t, s.dataDir, noInit...)
	require.NotEmpty(t, p.grpcAddr, "did not start on its vault without -init:\n%s", p.out())
	_, err = s.kv(t, p.grpcAddr, s.admin).GetKey(context.Background(), &pb.GetKeyRequest{Key: "kept"})
	assert.NoError(t, err)
	stop(p)

	data, err := os.ReadFile(db)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(db, data[:len(data)/2], 0o600))
	out = waitExit(t, startProcess(t, s.dataDir, s.args()...))
	assert.Contains(t, out, "the file is damaged (truncated or not a bolt file)")
	assert.NotContains(t, out, "panic")
}
