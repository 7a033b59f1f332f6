package edge

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// BenchmarkOneRoundTrip measures, in one run, TLS 1.3 ECDSA P-256
// handshakes per second of concurrent crypto/tls clients through the edge
// in one service round trip (caller_verifies_finished) and in two, and
// against a local crypto/tls server holding the key (the baseline), full
// and resumed. The kinds alternate in rounds so that noise hits all alike.
// It reports each rate, the ratios one-trip/local and one-trip/two-trip,
// and the CPU time of the whole process per handshake (clients, edge and
// service, or clients and local server). b.N is the number of handshakes
// of each kind.
//
//	go test -run '^$' -bench OneRoundTrip -benchtime 2000x ./clients/go/edge/
func BenchmarkOneRoundTrip(b *testing.B) {
	srv := servicetest.Start(b, service.Options{Tickets: &service.TicketOptions{Deployment: "bench"}})
	key := srv.ServerKey(b, "bench-ec", "p256-pkcs8.pem", "ec.test")
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(b, err)
	b.Cleanup(func() { edgeClient.Close() })
	edgeListener := func(oneTrip bool) string {
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(b, err)
		l := NewListener(inner, &Config{Client: edgeClient,
			Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}, CallerVerifiesFinished: oneTrip}})
		b.Cleanup(func() { l.Close() })
		go serveOneByte(l)
		return l.Addr().String()
	}
	oneTrip, twoTrips := edgeListener(true), edgeListener(false)
	localCert, err := tls.X509KeyPair([]byte(key.CertPEM), servicetest.Fixture(b, "p256-pkcs8.pem"))
	require.NoError(b, err)
	ll, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{localCert}})
	require.NoError(b, err)
	b.Cleanup(func() { ll.Close() })
	go serveOneByte(ll)

	for _, resume := range []bool{false, true} {
		for _, concurrency := range []int{1, 16} {
			name := "full"
			if resume {
				name = "resumed"
			}
			b.Run(fmt.Sprintf("%s/clients=%d", name, concurrency), func(b *testing.B) {
				clients := func() []*tls.Config {
					cfgs := make([]*tls.Config, concurrency)
					for i := range cfgs {
						cfgs[i] = &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MinVersion: tls.VersionTLS13}
						if resume {
							cfgs[i].ClientSessionCache = tls.NewLRUClientSessionCache(1)
						}
					}
					return cfgs
				}
				one := &resumptionLoad{name: "one-trip", addr: oneTrip, clients: clients(), wantResumed: resume}
				two := &resumptionLoad{name: "two-trips", addr: twoTrips, clients: clients(), wantResumed: resume}
				local := &resumptionLoad{name: "local", addr: ll.Addr().String(), clients: clients(), wantResumed: resume}
				loads := []*resumptionLoad{one, two, local}
				if resume {
					for _, l := range loads {
						for _, cfg := range l.clients {
							_, err := handshakeOnce(l.addr, cfg)
							require.NoError(b, err)
						}
					}
				}
				const rounds = 10
				b.ResetTimer()
				for r := range rounds {
					n := (r+1)*b.N/rounds - r*b.N/rounds
					for _, l := range loads {
						require.NoError(b, l.run(n))
					}
				}
				rate := func(l *resumptionLoad) float64 { return float64(b.N) / l.elapsed.Seconds() }
				b.ReportMetric(rate(one), "one-trip-hs/s")
				b.ReportMetric(rate(two), "two-trips-hs/s")
				b.ReportMetric(rate(local), "local-hs/s")
				b.ReportMetric(rate(one)/rate(local), "one-trip/local")
				b.ReportMetric(rate(two)/rate(local), "two-trips/local")
				b.ReportMetric(rate(one)/rate(two), "one-trip/two-trips")
				cpu := func(l *resumptionLoad) float64 { return float64(l.cpu.Microseconds()) / float64(b.N) }
				b.ReportMetric(cpu(one), "one-trip-cpu-µs/hs")
				b.ReportMetric(cpu(two), "two-trips-cpu-µs/hs")
				b.ReportMetric(cpu(local), "local-cpu-µs/hs")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
