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
	bolt "go.etcd.io/bbolt"

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

	// Cut the file short of what its last commit wrote: bolt grows a file
	// ahead of its pages, so a cut through the free space at its end
	// leaves a whole store.
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true})
	require.NoError(t, err)
	var need int64
	require.NoError(t, bdb.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil }))
	require.NoError(t, bdb.Close())
	require.NoError(t, os.Truncate(db, need/2))
	out = waitExit(t, startProcess(t, s.dataDir, s.args()...))
	assert.Contains(t, out, "the file is damaged (truncated or not a bolt file)")
	assert.NotContains(t, out, "panic")
}
