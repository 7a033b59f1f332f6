package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// smallDisk mounts a file system of size bytes at a new directory, for as
// long as the test runs; it skips the test where mounting is not allowed
// (not root, or no CAP_SYS_ADMIN).
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("mount a %d-byte tmpfs: %v (needs root)", size, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes to dir until its file system is full, and returns the file
// that holds the room it took.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			return path
		}
	}
}

// TestStoreOnAFullDisk: a bolt store whose disk is full refuses the writes
// that need room with UNAVAILABLE (HTTP 503) saying what to do, never
// INTERNAL (as it did: "internal error", the cause only in the log), and
// keeps serving its keys; once there is room again it takes writes, a
// destroy included (which rewrites the file, and leaves no half-written
// copy behind), and a restart finds every acknowledged change.
func TestStoreOnAFullDisk(t *testing.T) {
	disk := smallDisk(t, 1<<20)
	dataDir := filepath.Join(disk, "data")
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	kv := p.client(t)
	ctx := context.Background()
	_, err := kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "before", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)
	_, err = kv.DisableKeyVersion(ctx, &pb.DisableKeyVersionRequest{Key: "before", Version: 1})
	require.NoError(t, err)
	_, err = kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "kept", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)

	filler := fill(t, disk)
	var full error
	for i := 0; full == nil; i++ {
		require.Less(t, i, 100, "a full disk took 100 keys")
		_, full = kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: fmt.Sprintf("full-%d", i), Algorithm: pb.Algorithm_ALGORITHM_RSA_2048,
			Labels: map[string]string{"pad": strings.Repeat("x", 200)}})
	}
	assert.Equal(t, codes.Unavailable, status.Code(full), "%v", full)
	assert.Contains(t, status.Convert(full).Message(), "takes no writes, its disk is full")
	assert.Contains(t, status.Convert(full).Message(), "free space on it")
	_, err = kv.DestroyKeyVersion(ctx, &pb.DestroyKeyVersionRequest{Key: "before", Version: 1})
	assert.Equal(t, codes.Unavailable, status.Code(err), "a destroy rewrites the file: %v", err)
	assert.NoFileExists(t, filepath.Join(dataDir, "keys.db.rewrite"), "the failed rewrite's copy")
	_, err = kv.Sign(ctx, &pb.SignRequest{Key: "kept", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}})
	assert.NoError(t, err, "keys are served on a full disk")

	require.NoError(t, os.Remove(filler))
	_, err = kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "after", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	require.NoError(t, err)
	_, err = kv.DestroyKeyVersion(ctx, &pb.DestroyKeyVersionRequest{Key: "before", Version: 1})
	require.NoError(t, err)
	p.stop(t)

	p = startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start again:\n%s", p.out())
	kv = p.client(t)
	k, err := kv.GetKey(ctx, &pb.GetKeyRequest{Key: "before"})
	require.NoError(t, err)
	assert.Equal(t, pb.KeyVersionState_KEY_VERSION_STATE_DESTROYED, k.GetVersions()[0].GetState())
	for _, id := range []string{"kept", "after"} {
		_, err = kv.Sign(ctx, &pb.SignRequest{Key: id, Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}})
		assert.NoError(t, err, "key %s after the restart", id)
	}
}
