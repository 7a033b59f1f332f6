package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
)

// testServer is a real handshaked service on loopback sockets: a bbolt vault
// in a temporary directory, gRPC and REST listeners, and a gRPC client.
type testServer struct {
	vault *keyvault.Vault
	kv    pb.KeyVaultClient
	rest  string // base URL of the REST gateway
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	ctx := context.Background()
	store, err := keyvault.OpenBolt(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	vault, err := keyvault.New(ctx, store, kek)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := service.New(vault)
	if err != nil {
		t.Fatal(err)
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(grpcLis, httpLis) }()
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		vault.Close()
	})
	return &testServer{vault: vault, kv: pb.NewKeyVaultClient(conn), rest: "http://" + httpLis.Addr().String()}
}

// fixture reads a test key from testdata/keys (made by testdata/keys/gen.sh).
func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// restCall sends a JSON request through the gateway and decodes the JSON
// answer into out (when non-nil and the status is 200). It returns the HTTP
// status and the raw body.
func (s *testServer) restCall(t testing.TB, method, path string, body any, out any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, s.rest+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, raw
}

func mustRest(t testing.TB, s *testServer, method, path string, body, out any) {
	t.Helper()
	if code, raw := s.restCall(t, method, path, body, out); code != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, code, raw)
	}
}

func importFixture(t testing.TB, s *testServer, id, file string) *pb.Key {
	t.Helper()
	k, err := s.kv.ImportKey(context.Background(), &pb.ImportKeyRequest{Id: id, PrivateKeyPem: fixture(t, file)})
	if err != nil {
		t.Fatalf("import %s: %v", file, err)
	}
	return k
}

func uniqueID(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s-%x", prefix, b)
}
