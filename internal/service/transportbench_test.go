package service_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
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
