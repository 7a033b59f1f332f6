package service_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
	"github.com/handshaked/handshaked/internal/tracing"
	"github.com/handshaked/handshaked/internal/tracing/tracingtest"
)

// BenchmarkHandshakeTracing: full TLS 1.3 ECDSA handshakes through the
// service over the stream, with tracing off and on (every trace sampled,
// exported to an in-process OTLP receiver), in one run: the ratio is what
// tracing costs a handshake. off/omit_trace is tracing off with the steps'
// trace omitted, as the edge asks by default: nothing reads a trace then.
//
//	go test -run '^$' -bench HandshakeTracing -benchtime 3s ./internal/service/
func BenchmarkHandshakeTracing(b *testing.B) {
	for _, bc := range []struct{ on, omit bool }{{false, false}, {false, true}, {true, false}} {
		on, name := bc.on, "off"
		if bc.omit {
			name += "/omit_trace"
		}
		opts := service.Options{}
		if on {
			name = "on"
			rcv := tracingtest.Start(b)
			tp, err := tracing.Start(context.Background(), tracing.Options{Endpoint: rcv.Addr, Insecure: true, SampleRatio: 1}, "bench", "test", slog.Default())
			require.NoError(b, err)
			b.Cleanup(func() { tp.Shutdown(context.Background()) })
			opts.TracerProvider = tp
		}
		b.Run(name, func(b *testing.B) {
			srv := servicetest.Start(b, opts)
			s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
			key := newServerKey(b, s, "p256-pkcs8.pem", "bench.test")
			hc := s.handshakeClient(b)
			start := &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.id}}, OmitTrace: bc.omit}}
			cfg := &tls.Config{ServerName: key.name, RootCAs: key.pool, MinVersion: tls.VersionTLS13}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			defer ln.Close()
			parallel(b, 4, func() error {
				stream, err := hc.Stream(context.Background())
				if err != nil {
					return err
				}
				return dialAndRelay(ln, cfg, &streamStepper{stream: stream, start: start})
			})
		})
	}
}
