package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/testenv"
	"github.com/handshaked/handshaked/internal/testpki"
)

// ctlEnv builds handshakectl into a directory of its own and returns the
// environment that puts it on PATH and points it at a production instance
// as its admin.
func ctlEnv(t *testing.T, s *prodSetup, grpcAddr string) []string {
	t.Helper()
	goTool := testenv.LookPath(t, "go")
	bin := t.TempDir()
	out, err := exec.Command(goTool, "build", "-o", filepath.Join(bin, "handshakectl"), "../../clients/cmd/handshakectl").CombinedOutput()
	require.NoError(t, err, "build handshakectl:\n%s", out)
	cert, key := filepath.Join(s.dir, "admin.crt"), filepath.Join(s.dir, "admin.key")
	require.NoError(t, os.WriteFile(cert, s.admin.CertPEM, 0o600))
	require.NoError(t, os.WriteFile(key, s.admin.KeyPEM, 0o600))
	return append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HANDSHAKED_ADDR="+grpcAddr, "HANDSHAKED_CA="+s.ca,
		"HANDSHAKED_CERT="+cert, "HANDSHAKED_KEY="+key, "HANDSHAKED_SERVER_NAME=localhost")
}

// runBlock runs a README block with bash in dir.
func runBlock(t *testing.T, name, dir string, env []string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+readmeBlock(t, name))
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "README %s block:\n%s", name, out)
	return string(out)
}

// TestREADMEVaultLifecycle runs the README's KEK rotation, backup and
// restore commands verbatim against production instances: the rotation
// rewraps the running vault, the instance restarts with the new KEK from
// the file the README moves into place and refuses the old one, and the
// snapshot restores into a fresh instance started with the KEK, whose keys
// sign.
func TestREADMEVaultLifecycle(t *testing.T) {
	for _, tool := range []string{"bash", "openssl"} {
		testenv.LookPath(t, tool)
	}
	ctx := context.Background()
	s := newProdSetup(t)
	p := startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	for _, k := range []struct {
		id  string
		alg pb.Algorithm
	}{{"life-ec", pb.Algorithm_ALGORITHM_ECDSA_P256}, {"life-ed", pb.Algorithm_ALGORITHM_ED25519}} {
		_, err := s.kv(t, p.grpcAddr, s.admin).CreateKey(ctx, &pb.CreateKeyRequest{Id: k.id, Algorithm: k.alg})
		require.NoError(t, err)
	}
	env := ctlEnv(t, s, p.grpcAddr)

	out := runBlock(t, "kek-rotation", s.dir, env)
	assert.Contains(t, out, "opens with the new KEK only")
	kekFile, err := os.ReadFile(s.kekFile)
	require.NoError(t, err)
	newKEK := strings.TrimSpace(string(kekFile))
	require.NotEqual(t, s.kekHex, newKEK, "the README's rotation leaves the new KEK in the -kek-file")
	runBlock(t, "backup", s.dir, env)
	require.FileExists(t, filepath.Join(s.dir, "vault.snapshot"))
	assert.NotContains(t, p.out(), newKEK, "the new KEK is in the log")
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	oldFile := filepath.Join(s.dir, "kek.old")
	require.NoError(t, os.WriteFile(oldFile, []byte(s.kekHex+"\n"), 0o600))
	refused := waitExit(t, startProcess(t, s.dataDir, append(s.args(), "-kek-file", oldFile)...))
	assert.Contains(t, refused, "wrong key-encryption key", "the old KEK after the rotation")
	assert.Contains(t, refused, "only the new KEK opens the store")
	p = startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "restart with the new KEK:\n%s", p.out())
	verifyKeysAs(t, s, p.grpcAddr, "life-ec", "life-ed")

	// A fresh instance with the snapshot's KEK.
	fresh := newProdSetup(t)
	require.NoError(t, os.WriteFile(fresh.kekFile, []byte(newKEK+"\n"), 0o600))
	q := startProcess(t, fresh.dataDir, fresh.args()...)
	require.NotEmpty(t, q.grpcAddr, "fresh instance:\n%s", q.out())
	out = runBlock(t, "restore", s.dir, ctlEnv(t, s, q.grpcAddr))
	assert.Contains(t, out, "restored 2 keys")
	assert.Contains(t, out, "life-ec\tprimary version 1")
	verifyKeysAs(t, s, q.grpcAddr, "life-ec", "life-ed")
}

// verifyKeysAs is verifyKeys over mutual TLS as the admin.
func verifyKeysAs(t *testing.T, s *prodSetup, addr string, ids ...string) {
	t.Helper()
	verifyKeys(t, s.kv(t, addr, s.admin), ids)
}

// TestInterruptedKEKRotationAtStart: a KEK rotation cut short (its call's
// deadline) and then the process killed leaves a store that opens with
// either KEK. Started with the retiring KEK, handshaked serves and says how
// to finish; started with the new one, it finishes the rotation by itself,
// after which the old KEK is refused.
func TestInterruptedKEKRotationAtStart(t *testing.T) {
	ctx := context.Background()
	s := newProdSetup(t)
	p := startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	kv := s.kv(t, p.grpcAddr, s.admin)
	var ids []string
	for i := range 300 {
		id := fmt.Sprintf("k%d", i)
		_, err := kv.CreateKey(ctx, &pb.CreateKeyRequest{Id: id, Algorithm: pb.Algorithm_ALGORITHM_ED25519})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	admin := pb.NewAdminClient(s.conn(t, p.grpcAddr, s.admin))
	// Shorter and shorter deadlines until one lands inside the rotation.
	var newKEK []byte
	for d := 64 * time.Millisecond; ; d = max(d/2, time.Millisecond) {
		newKEK = make([]byte, 32)
		rand.Read(newKEK)
		cctx, cancel := context.WithTimeout(ctx, d)
		_, err := admin.RotateKEK(cctx, &pb.RotateKEKRequest{NewKek: newKEK})
		cancel()
		st, serr := admin.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
		require.NoError(t, serr)
		if st.GetRetiringKekId() != "" {
			require.Error(t, err)
			break
		}
		if st.GetKekId() == keyvault.KEKID(newKEK) {
			// Completed (the answer may have missed its deadline): that
			// KEK is the one to rotate from now.
			s.kekHex = hex.EncodeToString(newKEK)
		}
	}
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	require.NoError(t, os.WriteFile(s.kekFile, []byte(s.kekHex+"\n"), 0o600))
	p = startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "mid-rotation, start with the retiring KEK:\n%s", p.out())
	assert.Contains(t, p.out(), "finish it with handshakectl kek-rotate")
	verifyKeysAs(t, s, p.grpcAddr, ids[0], ids[len(ids)-1])
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	require.NoError(t, os.WriteFile(s.kekFile, []byte(hex.EncodeToString(newKEK)+"\n"), 0o600))
	p = startProcess(t, s.dataDir, s.args()...)
	require.NotEmpty(t, p.grpcAddr, "mid-rotation, start with the new KEK:\n%s", p.out())
	assert.Contains(t, p.out(), "resuming an interrupted KEK rotation")
	admin = pb.NewAdminClient(s.conn(t, p.grpcAddr, s.admin))
	require.Eventually(t, func() bool {
		st, err := admin.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
		return err == nil && st.GetRetiringKekId() == ""
	}, 30*time.Second, 20*time.Millisecond, "the rotation did not finish:\n%s", p.out())
	verifyKeysAs(t, s, p.grpcAddr, ids...)
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited

	require.NoError(t, os.WriteFile(s.kekFile, []byte(s.kekHex+"\n"), 0o600))
	assert.Contains(t, waitExit(t, startProcess(t, s.dataDir, s.args()...)), "wrong key-encryption key", "the old KEK once the rotation finished")
}

// conn is a mutual-TLS connection to addr as leaf.
func (s *prodSetup) conn(t *testing.T, addr string, leaf *testpki.Leaf) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(leaf))))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}
