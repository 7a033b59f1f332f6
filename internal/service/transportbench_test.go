package service_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// BenchmarkSignTransports signs an ECDSA P-256 digest over unary gRPC and
// over REST in one process, for profiling the server's side of each
// (cmd/handshaked's BenchmarkRESTvsGRPC measures them with the load
// generator in a process of its own):
//
//	go test -run '^$' -bench SignTransports -cpuprofile cpu.out ./internal/service/
func BenchmarkSignTransports(b *testing.B) {
	s := startServer(b)
	ctx := context.Background()
	k := importFixture(b, s, "bench-ec", "p256-sec1.pem")
	digest := sha256.Sum256([]byte("benchmark"))
	b.Run("grpc", func(b *testing.B) {
		req := &pb.SignRequest{Key: k.GetId(), Scheme: p256Scheme, Input: &pb.SignRequest_Digest{Digest: digest[:]}}
		parallel(b, 4, func() error {
			_, err := s.kv.Sign(ctx, req)
			return err
		})
	})
	b.Run("rest", func(b *testing.B) {
		body := []byte(fmt.Sprintf(`{"scheme":%q,"digest":%q}`, p256Scheme.String(), base64.StdEncoding.EncodeToString(digest[:])))
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		defer client.CloseIdleConnections()
		url := s.rest + "/v1/keys/" + k.GetId() + ":sign"
		parallel(b, 4, func() error { return servicetest.PostJSON(client, url, body) })
	})
}

// BenchmarkRESTHandler runs a REST Ed25519 Sign through the server's HTTP
// handler in process, without a connection: what the gateway, the JSON
// codec, the HTTP middleware and the local call add to the signature, with
// allocations per call (cmd/handshaked's BenchmarkRESTvsGRPC measures the
// whole of it, net/http included, from another process):
//
//	go test -run '^$' -bench RESTHandler -benchmem ./internal/service/
func BenchmarkRESTHandler(b *testing.B) {
	s := startServer(b)
	_, err := s.vault.Create(context.Background(), "bench-ed", keyvault.Ed25519, nil)
	if err != nil {
		b.Fatal(err)
	}
	h, conn := s.Service.HTTPHandler()
	body := []byte(`{"scheme":"SIGNATURE_SCHEME_ED25519","message":"YmVuY2htYXJr"}`)
	b.ReportAllocs()
	parallel(b, 1, func() error {
		req := httptest.NewRequestWithContext(conn, http.MethodPost, "http://127.0.0.1:8080/v1/keys/bench-ed:sign", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			return fmt.Errorf("%d %s", w.Code, w.Body)
		}
		return nil
	})
}
