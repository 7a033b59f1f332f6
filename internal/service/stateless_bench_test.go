package service_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// dialAndRelay dials one client with cfg and relays, with st, one
// connection ln accepted (not necessarily that one: in a benchmark all are
// alike).
func dialAndRelay(ln net.Listener, cfg *tls.Config, st stepper) error {
	done := make(chan error, 1)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	server, err := ln.Accept()
	if err != nil {
		return err
	}
	defer server.Close()
	if _, err := relay(server, st); err != nil {
		return err
	}
	return <-done
}

// BenchmarkStatelessHandshake: full handshakes over unary gRPC, the session
// held by the service ("memory") and carried in step tokens ("tokens"), in
// one run on one server: the ratio of cpu-ns/op is what the tokens cost a
// handshake (sealing, opening and restoring the engine state at every step,
// and the bytes on the wire). token-bytes is the mean size of the tokens of
// a handshake's NEED_INPUT states: tokenN-bytes after its Nth step (TLS
// 1.3: 1 waits for the client's Finished, or after a HelloRetryRequest for
// the second ClientHello, then 2 for the Finished; TLS 1.2: 1 waits for
// ClientKeyExchange..Finished).
//
//	go test -run '^$' -bench StatelessHandshake -benchtime 3s ./internal/service/
func BenchmarkStatelessHandshake(b *testing.B) {
	srv := servicetest.Start(b, service.Options{})
	s := &testServer{Server: srv, vault: srv.Vault, grpcAddr: srv.GRPCAddr, kv: pb.NewKeyVaultClient(srv.Conn), rest: srv.RESTURL}
	ec := newServerKey(b, s, "p256-pkcs8.pem", "ec.test")
	hc := s.handshakeClient(b)
	cases := []struct {
		name   string
		client *tls.Config
		config *pb.HandshakeConfig
	}{
		{"TLS13-ECDSA", &tls.Config{MinVersion: tls.VersionTLS13}, &pb.HandshakeConfig{}},
		{"TLS13-HRR", &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}},
			&pb.HandshakeConfig{Groups: []uint32{uint32(tls.CurveP256)}}},
		{"TLS12-ECDHE-ECDSA", &tls.Config{MaxVersion: tls.VersionTLS12}, &pb.HandshakeConfig{}},
	}
	for _, tc := range cases {
		tc.config.Keys = []*pb.KeyRef{{Key: ec.id}}
		tc.client.ServerName, tc.client.RootCAs = ec.name, ec.pool
		start := &pb.StartHandshakeRequest{Config: tc.config}
		for _, mode := range []string{"memory", "tokens"} {
			b.Run(tc.name+"/"+mode, func(b *testing.B) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				var mu sync.Mutex
				var tokenBytes, tokens [4]int // by step
				parallel(b, 4, func() error {
					var st stepper = &unaryStepper{hc: hc, start: start}
					ts := &tokenStepper{hcs: []pb.HandshakeClient{hc}, start: start}
					if mode == "tokens" {
						st = ts
					}
					if err := dialAndRelay(ln, tc.client, st); err != nil {
						return err
					}
					mu.Lock()
					for i, t := range ts.tokens[:min(len(ts.tokens), len(tokens))] {
						tokenBytes[i] += len(t)
						tokens[i]++
					}
					mu.Unlock()
					return nil
				})
				for i, n := range tokens {
					if n > 0 {
						b.ReportMetric(float64(tokenBytes[i])/float64(n), fmt.Sprintf("token%d-bytes", i+1))
					}
				}
			})
		}
	}
}
