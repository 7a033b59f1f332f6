//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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

// ext4Disk mounts a small ext4 file system (an image on a loop device,
// mounted errors=remount-ro) at a new directory in the test's mount
// namespace of its own (see smallDisk) and returns it with a function that
// makes ext4 record an error on it, which turns it read-only the way a disk's
// I/O errors do: files open for writing stay open, and their writes fail
// with EROFS. It skips where the tools or loop devices are missing.
func ext4Disk(t *testing.T) (dir string, fail func(), ok bool) {
	t.Helper()
	if !ownMountNamespace(t) {
		return "", nil, false
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 16<<20))
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v\n%s", err, out)
	}
	dir = t.TempDir()
	// mount(8) sets the loop device to detach itself once unmounted, and
	// the mount ends with the namespace.
	if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", img, dir).CombinedOutput(); err != nil {
		t.Skipf("mount an ext4 image on a loop device: %v\n%s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	src, err := exec.Command("findmnt", "-n", "-o", "SOURCE", dir).Output()
	require.NoError(t, err)
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(strings.TrimSpace(string(src))), "trigger_fs_error")
	return dir, func() { require.NoError(t, os.WriteFile(trigger, []byte("test"), 0)) }, true
}

// TestStoreOnAReadOnlyDisk: a bolt store whose file system turned
// read-only under it refuses writes with UNAVAILABLE (HTTP 503) saying what
// to do, as on a full disk, never INTERNAL (as it did when the commit had
// to grow the file: bbolt's resize error does not wrap the EROFS), and
// keeps serving its keys.
func TestStoreOnAReadOnlyDisk(t *testing.T) {
	disk, fail, ok := ext4Disk(t)
	if !ok {
		return
	}
	dataDir := filepath.Join(disk, "data")
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	kv := p.client(t)
	ctx := context.Background()
	// Seven keys leave the eighth's commit to grow bbolt's memory map and
	// the file (from 64 KiB to 128 KiB), whose errors bbolt formats with %s.
	for i := range 7 {
		_, err := kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: fmt.Sprintf("k-%d", i), Algorithm: pb.Algorithm_ALGORITHM_ED25519})
		require.NoError(t, err)
	}

	fail()
	_, err := kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: "after", Algorithm: pb.Algorithm_ALGORITHM_ED25519})
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	msg := status.Convert(err).Message()
	assert.Contains(t, msg, "takes no writes, its file system is read-only: make it writable")
	_, err = kv.Sign(ctx, &pb.SignRequest{Key: "k-0", Scheme: pb.SignatureScheme_SIGNATURE_SCHEME_ED25519, Input: &pb.SignRequest_Message{Message: []byte("m")}})
	assert.NoError(t, err, "keys are served on a read-only disk")
}
