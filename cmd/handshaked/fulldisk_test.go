//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// inMountNamespace is the environment variable that tells a test binary
// it runs in a mount namespace of its own (smallDisk).
const inMountNamespace = "HANDSHAKED_TEST_MOUNT_NAMESPACE"

// smallDisk mounts a file system of size bytes at a new directory and
// returns it, ok, for as long as the test runs. The test runs in a child
// of this test binary with a mount namespace of its own, so that the mount
// is never seen outside it and cannot outlive it, not even a test binary
// killed (a -timeout, a SIGKILL) before its cleanups ran: the mount ends
// with the namespace's last process. Here, in the parent, smallDisk runs
// the child, reports its result as the test's, and returns ok false: the
// test returns. It skips the test where mounting is not allowed (not root,
// or no CAP_SYS_ADMIN).
func smallDisk(t *testing.T, size int) (string, bool) {
	t.Helper()
	if !ownMountNamespace(t) {
		return "", false
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("mount a %d-byte tmpfs: %v (needs root)", size, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir, true
}

// ownMountNamespace reports whether t runs in a mount namespace of its
// own. If it does not, it runs t in one (runInMountNamespace) and reports
// false: the test returns.
func ownMountNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inMountNamespace) == "1" {
		return true
	}
	runInMountNamespace(t)
	return false
}

// runInMountNamespace runs the test t in a child of this test binary, in
// a new mount namespace (Go makes its mounts private, so none propagates
// back), killed if this process dies first; the child's result is t's.
func runInMountNamespace(t *testing.T) {
	t.Helper()
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(d).String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), inMountNamespace+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that started the child.
	runtime.LockOSThread()
	out, err := cmd.CombinedOutput()
	runtime.UnlockOSThread()
	var exit *exec.ExitError
	switch {
	case errors.Is(err, syscall.EPERM):
		t.Skipf("a mount namespace of its own: %v (needs root)", err)
	case err != nil && !errors.As(err, &exit):
		t.Fatalf("run the test in a mount namespace of its own: %v", err)
	case err != nil:
		t.Fatalf("in a mount namespace of its own: %v\n%s", err, out)
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name())):
		t.Skipf("in a mount namespace of its own:\n%s", out)
	}
	t.Logf("in a mount namespace of its own:\n%s", out)
}

// mountedOutside reports whether dir is a mount point in the mount
// namespace of the process pid.
func mountedOutside(t *testing.T, pid int, dir string) bool {
	t.Helper()
	info, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(info), "\n") {
		// "36 35 98:0 /root /mnt/point rw,...": the fifth field
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
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
	disk, ok := smallDisk(t, 1<<20)
	if !ok {
		return
	}
	require.False(t, mountedOutside(t, os.Getppid(), disk), "the small disk is seen outside the test's mount namespace")
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
