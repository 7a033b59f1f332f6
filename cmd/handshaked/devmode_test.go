package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

func parsePublicKeyPEM(t *testing.T, s string) crypto.PublicKey {
	t.Helper()
	block, _ := pem.Decode([]byte(s))
	require.NotNil(t, block, "not PEM: %q", s)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	return pub
}

// waitExit waits for a process that must refuse to start.
func waitExit(t *testing.T, p *process) string {
	t.Helper()
	select {
	case err := <-p.exited:
		require.Error(t, err, "handshaked exited 0; want a failure:\n%s", p.out())
	case <-time.After(60 * time.Second):
		require.FailNow(t, "handshaked kept running", "%s", p.out())
	}
	return p.out()
}

// TestDevelopmentInstance: with only a data directory, handshaked creates a
// private KEK, a sample key with a self-signed certificate, and says loudly
// that it is in development mode, with its KEK in plain text beside the data.
func TestDevelopmentInstance(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	assert.Contains(t, p.out(), "DEVELOPMENT MODE", "no development-mode warning")
	assert.Contains(t, p.out(), "key-encryption key in plain text in "+filepath.Join(dataDir, "kek")+";")
	fi, err := os.Stat(filepath.Join(dataDir, "kek"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "KEK file mode")
	k, err := p.client(t).GetKey(context.Background(), &pb.GetKeyRequest{Key: sampleKeyID})
	require.NoError(t, err)
	chain := k.GetVersions()[0].GetCertificateChain()
	require.Len(t, chain, 1, "sample key's certificates")
	cert, err := x509.ParseCertificate(chain[0])
	require.NoError(t, err)
	assert.NoError(t, cert.VerifyHostname("localhost"))
	assert.NoError(t, cert.CheckSignatureFrom(cert), "self-signature")
}

// TestDevelopmentWarningKEKFromEnvironment: a development instance given
// its KEK in $HANDSHAKED_KEK says so, and creates no KEK file.
func TestDevelopmentWarningKEKFromEnvironment(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcessEnv(t, dataDir, []string{kekEnv + "=" + strings.Repeat("ab", 32)})
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	assert.Contains(t, p.out(), "key-encryption key in plain text from $"+kekEnv+";")
	assert.NoFileExists(t, filepath.Join(dataDir, "kek"))
}

func TestRefusesNonLoopbackInDevelopmentMode(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-grpc-addr", "0.0.0.0:0")
	assert.Contains(t, waitExit(t, p), "not a loopback address", "unclear refusal")
}

// TestWrongKEKFailsAtStart: the data is intact but the key-encryption key is
// another one; the service must stop with a message that says so.
func TestWrongKEKFailsAtStart(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	p.cmd.Process.Kill()
	<-p.exited
	other := filepath.Join(t.TempDir(), "other-kek")
	require.NoError(t, os.WriteFile(other, []byte(hex.EncodeToString(make([]byte, 32))+"\n"), 0o600))
	out := waitExit(t, startProcess(t, dataDir, "-kek-file", other))
	assert.Contains(t, out, "key-encryption key", "wrong KEK not reported clearly")
}

// TestTamperedStoreFailsAtStart flips one bit inside every stored value in
// turn; each time the service must refuse to start rather than drop or
// misread the record.
func TestTamperedStoreFailsAtStart(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	p.cmd.Process.Kill()
	<-p.exited
	dbPath := filepath.Join(dataDir, "keys.db")
	pristine, err := os.ReadFile(dbPath)
	require.NoError(t, err)
	type loc struct{ bucket, key string }
	var values []loc
	db, err := bolt.Open(dbPath, 0o600, nil)
	require.NoError(t, err)
	db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == "revisions" {
				return nil // the store's revision bookkeeping, not sealed records: a change makes a commit conflict, no more
			}
			return b.ForEach(func(k, v []byte) error {
				if v != nil {
					values = append(values, loc{string(name), string(k)})
				}
				return nil
			})
		})
	})
	db.Close()
	require.NotEmpty(t, values, "no stored values found")
	for _, l := range values {
		require.NoError(t, os.WriteFile(dbPath, pristine, 0o600))
		db, err := bolt.Open(dbPath, 0o600, nil)
		require.NoError(t, err)
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(l.bucket))
			v := append([]byte(nil), b.Get([]byte(l.key))...)
			v[len(v)/2] ^= 0x01
			return b.Put([]byte(l.key), v)
		})
		db.Close()
		require.NoError(t, err)
		out := waitExit(t, startProcess(t, dataDir))
		reported := strings.Contains(strings.ToLower(out), "corrupt") || strings.Contains(strings.ToLower(out), "tamper") || strings.Contains(out, "key-encryption key")
		assert.True(t, reported, "tampered %s/%q not reported clearly:\n%s", l.bucket, l.key, out)
	}
}

// TestHandshakeSessionFlags: the binary's session cap and lifetime reach the
// Handshake service.
func TestHandshakeSessionFlags(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-max-handshake-sessions", "1", "-handshake-ttl", "1h")
	require.NotEmpty(t, p.grpcAddr, "did not start:\n%s", p.out())
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := pb.NewHandshakeClient(conn)
	req := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: sampleKeyID}}}}
	out, err := hc.StartHandshake(context.Background(), req)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Until(out.GetExpireTime().AsTime()), 50*time.Minute, "session expiry, want about the configured hour")
	_, err = hc.StartHandshake(context.Background(), req)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "second session past a cap of 1: %v", err)
	assert.Contains(t, waitExit(t, startProcess(t, t.TempDir(), "-max-handshake-sessions", "0")), "must be positive", "a zero cap must be refused clearly")
}
