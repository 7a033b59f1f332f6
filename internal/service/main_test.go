package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// testServer is a real handshaked service on loopback sockets: a bbolt vault
// in a temporary directory, gRPC and REST listeners, and a gRPC client.
type testServer struct {
	*servicetest.Server
	vault    *keyvault.Vault
	kv       pb.KeyVaultClient
	grpcAddr string
	rest     string // base URL of the REST gateway
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	return startServerWith(t, 0, 0)
}

// startServerWith sets the handshake session cap and lifetime (0: defaults).
func startServerWith(t testing.TB, maxSessions int, sessionTTL time.Duration) *testServer {
	t.Helper()
	srv := servicetest.Start(t, service.Options{Handshake: service.HandshakeOptions{MaxSessions: maxSessions, SessionTTL: sessionTTL}})
	return &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
}

// fixture reads a test key from testdata/keys.
func fixture(t testing.TB, name string) []byte { return servicetest.Fixture(t, name) }

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
