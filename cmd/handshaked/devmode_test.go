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
	if block == nil {
		t.Fatalf("not PEM: %q", s)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// waitExit waits for a process that must refuse to start.
func waitExit(t *testing.T, p *process) string {
	t.Helper()
	select {
	case err := <-p.exited:
		if err == nil {
			t.Fatalf("handshaked exited 0; want a failure:\n%s", p.out())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("handshaked kept running:\n%s", p.out())
	}
	return p.out()
}

// TestDevelopmentInstance: with only a data directory, handshaked creates a
// private KEK, a sample key with a self-signed certificate, and says loudly
// that it is in development mode.
func TestDevelopmentInstance(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	if !strings.Contains(p.out(), "DEVELOPMENT MODE") {
		t.Fatalf("no development-mode warning:\n%s", p.out())
	}
	fi, err := os.Stat(filepath.Join(dataDir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode %v, want 0600", fi.Mode().Perm())
	}
	k, err := p.client(t).GetKey(context.Background(), &pb.GetKeyRequest{Key: sampleKeyID})
	if err != nil {
		t.Fatal(err)
	}
	chain := k.GetVersions()[0].GetCertificateChain()
	if len(chain) != 1 {
		t.Fatalf("sample key has %d certificates, want 1", len(chain))
	}
	cert, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
}

func TestRefusesNonLoopbackInDevelopmentMode(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-grpc-addr", "0.0.0.0:0")
	if out := waitExit(t, p); !strings.Contains(out, "not a loopback address") {
		t.Fatalf("unclear refusal:\n%s", out)
	}
}

// TestWrongKEKFailsAtStart: the data is intact but the key-encryption key is
// another one; the service must stop with a message that says so.
func TestWrongKEKFailsAtStart(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	p.cmd.Process.Kill()
	<-p.exited
	other := filepath.Join(t.TempDir(), "other-kek")
	os.WriteFile(other, []byte(hex.EncodeToString(make([]byte, 32))+"\n"), 0o600)
	out := waitExit(t, startProcess(t, dataDir, "-kek-file", other))
	if !strings.Contains(out, "key-encryption key") {
		t.Fatalf("wrong KEK not reported clearly:\n%s", out)
	}
}

// TestTamperedStoreFailsAtStart flips one bit inside every stored value in
// turn; each time the service must refuse to start rather than drop or
// misread the record.
func TestTamperedStoreFailsAtStart(t *testing.T) {
	dataDir := t.TempDir()
	p := startProcess(t, dataDir)
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	p.cmd.Process.Kill()
	<-p.exited
	dbPath := filepath.Join(dataDir, "keys.db")
	pristine, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	type loc struct{ bucket, key string }
	var values []loc
	db, err := bolt.Open(dbPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v != nil {
					values = append(values, loc{string(name), string(k)})
				}
				return nil
			})
		})
	})
	db.Close()
	if len(values) == 0 {
		t.Fatal("no stored values found")
	}
	for _, l := range values {
		if err := os.WriteFile(dbPath, pristine, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(dbPath, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(l.bucket))
			v := append([]byte(nil), b.Get([]byte(l.key))...)
			v[len(v)/2] ^= 0x01
			return b.Put([]byte(l.key), v)
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		out := waitExit(t, startProcess(t, dataDir))
		if !strings.Contains(strings.ToLower(out), "corrupt") && !strings.Contains(strings.ToLower(out), "tamper") && !strings.Contains(out, "key-encryption key") {
			t.Fatalf("tampered %s/%q not reported clearly:\n%s", l.bucket, l.key, out)
		}
	}
}

// TestHandshakeSessionFlags: the binary's session cap and lifetime reach the
// Handshake service.
func TestHandshakeSessionFlags(t *testing.T) {
	p := startProcess(t, t.TempDir(), "-max-handshake-sessions", "1", "-handshake-ttl", "1h")
	if p.grpcAddr == "" {
		t.Fatalf("did not start:\n%s", p.out())
	}
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := pb.NewHandshakeClient(conn)
	req := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: sampleKeyID}}}}
	out, err := hc.StartHandshake(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if ttl := time.Until(out.GetExpireTime().AsTime()); ttl < 50*time.Minute {
		t.Fatalf("session expires in %v, want about the configured hour", ttl)
	}
	if _, err := hc.StartHandshake(context.Background(), req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second session past a cap of 1: %v", err)
	}
	if out := waitExit(t, startProcess(t, t.TempDir(), "-max-handshake-sessions", "0")); !strings.Contains(out, "must be positive") {
		t.Fatalf("a zero cap must be refused clearly:\n%s", out)
	}
}
