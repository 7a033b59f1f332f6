package service_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
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
		parallel(b, 4, func() error {
			resp, err := client.Post(s.rest+"/v1/keys/"+k.GetId()+":sign", "application/json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			out, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, out)
			}
			return err
		})
	})
}
