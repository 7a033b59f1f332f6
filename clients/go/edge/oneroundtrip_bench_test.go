package edge

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

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
// the CPU time of the whole process per handshake (clients, edge and
// service, or clients and local server), and with one client the p50 and
// p99 latency of a handshake of each kind. b.N is the number of handshakes
// of each kind. The edge reaches the service over loopback (rtt=0) and with
// 2 ms added between them (rtt=2ms), where a round trip saved shows.
//
//	go test -run '^$' -bench OneRoundTrip -benchtime 2000x ./clients/go/edge/
func BenchmarkOneRoundTrip(b *testing.B) {
	srv := servicetest.Start(b, service.Options{Tickets: &service.TicketOptions{Deployment: "bench"}})
	key := srv.ServerKey(b, "bench-ec", "p256-pkcs8.pem", "ec.test")
	localCert, err := tls.X509KeyPair([]byte(key.CertPEM), servicetest.Fixture(b, "p256-pkcs8.pem"))
	require.NoError(b, err)
	ll, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{localCert}})
	require.NoError(b, err)
	b.Cleanup(func() { ll.Close() })
	go serveOneByte(ll)
	for _, rtt := range []time.Duration{0, 2 * time.Millisecond} {
		// The edge reaches the service over loopback, or through a proxy
		// that delays each direction by half the round-trip time, as a
		// service in another zone would.
		addr := srv.GRPCAddr
		if rtt > 0 {
			addr = delayProxy(b, addr, rtt/2)
		}
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) { benchOneRoundTrip(b, addr, key, ll.Addr().String()) })
	}
}

func benchOneRoundTrip(b *testing.B, service string, key servicetest.ServerKey, local string) {
	edgeClient, err := handshaked.Dial(service, handshaked.WithInsecure())
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
				local := &resumptionLoad{name: "local", addr: local, clients: clients(), wantResumed: resume}
				loads := []*resumptionLoad{one, two, local}
				if resume {
					for _, l := range loads {
						for _, cfg := range l.clients {
							_, err := handshakeOnce(l.addr, cfg)
							require.NoError(b, err)
						}
					}
				}
				b.ResetTimer()
				runRounds(b, b.N, loads...)
				rate := func(l *resumptionLoad) float64 { return l.rate(b.N) }
				b.ReportMetric(rate(one), "one-trip-hs/s")
				b.ReportMetric(rate(two), "two-trips-hs/s")
				b.ReportMetric(rate(local), "local-hs/s")
				b.ReportMetric(rate(one)/rate(local), "one-trip/local")
				b.ReportMetric(rate(two)/rate(local), "two-trips/local")
				b.ReportMetric(rate(one)/rate(two), "one-trip/two-trips")
				cpu := func(l *resumptionLoad) float64 { return l.cpuPerHandshake(b.N) }
				b.ReportMetric(cpu(one), "one-trip-cpu-µs/hs")
				b.ReportMetric(cpu(two), "two-trips-cpu-µs/hs")
				b.ReportMetric(cpu(local), "local-cpu-µs/hs")
				if concurrency == 1 {
					// Latency of one handshake at a time (the clients
					// above are sequential): p50 and p99 of each kind.
					for _, l := range loads {
						p50, p99 := handshakeLatency(b, l, max(b.N/2, 20))
						b.ReportMetric(float64(p50.Microseconds()), l.name+"-p50-µs")
						b.ReportMetric(float64(p99.Microseconds()), l.name+"-p99-µs")
					}
				}
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// handshakeLatency makes n handshakes of l one after the other and returns
// the median and 99th percentile of their durations.
func handshakeLatency(b *testing.B, l *resumptionLoad, n int) (p50, p99 time.Duration) {
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		resumed, err := handshakeOnce(l.addr, l.clients[0])
		d[i] = time.Since(start)
		require.NoError(b, err)
		require.Equal(b, l.wantResumed, resumed)
	}
	slices.Sort(d)
	return d[n/2], d[n*99/100]
}

// delayProxy forwards TCP connections to target, delaying every chunk by
// oneWay in each direction without holding back the chunks behind it.
func delayProxy(b *testing.B, target string, oneWay time.Duration) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	b.Cleanup(func() { l.Close() })
	type chunk struct {
		at   time.Time
		data []byte
	}
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		q := make(chan chunk, 1024)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					q <- chunk{time.Now().Add(oneWay), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range q {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return l.Addr().String()
}
