package edge

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// serveOneByte writes a byte on every connection l accepts and closes it:
// once a client has read it, the server has completed the handshake and
// the client has taken in a TLS 1.3 NewSessionTicket sent before it.
func serveOneByte(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			c.Write([]byte{1})
			c.Close()
		}()
	}
}

// handshakeOnce makes one connection to addr with cfg and reports whether
// it resumed.
func handshakeOnce(addr string, cfg *tls.Config) (bool, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

// resumptionLoad is one kind of handshake a benchmark loads a server
// with: concurrent clients, each with its own configuration (and session
// cache, as a real client has one).
type resumptionLoad struct {
	name        string
	addr        string
	clients     []*tls.Config
	wantResumed bool
	elapsed     time.Duration // wall time of all its handshakes
	cpu         time.Duration // CPU time of the process meanwhile
	allocs      uint64        // heap allocations of the process meanwhile
}

// processAllocs is how many heap allocations the process has made.
func processAllocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run makes n handshakes from its clients at once, each client one after
// the other, and adds the wall and CPU time and the allocations they took.
func (l *resumptionLoad) run(n int) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	startAllocs := processAllocs()
	start, startCPU := time.Now(), processCPU()
	for _, cfg := range l.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				resumed, err := handshakeOnce(l.addr, cfg)
				if err == nil && resumed != l.wantResumed {
					err = fmt.Errorf("%s: resumed %v, want %v", l.name, resumed, l.wantResumed)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	l.elapsed += time.Since(start)
	l.cpu += processCPU() - startCPU
	l.allocs += processAllocs() - startAllocs
	return firstErr
}

// runRounds runs n handshakes of each load in rounds, the loads taking
// turns, so that noise hits all alike.
func runRounds(b *testing.B, n int, loads ...*resumptionLoad) {
	const rounds = 10
	for r := range rounds {
		// Round r makes the handshakes from r*n/rounds on.
		k := (r+1)*n/rounds - r*n/rounds
		for _, l := range loads {
			require.NoError(b, l.run(k))
		}
	}
}

// rate is l's handshakes per second, for n handshakes.
func (l *resumptionLoad) rate(n int) float64 { return float64(n) / l.elapsed.Seconds() }

// cpuPerHandshake is the process CPU time per handshake of l, in µs.
func (l *resumptionLoad) cpuPerHandshake(n int) float64 {
	return float64(l.cpu.Microseconds()) / float64(n)
}

// BenchmarkResumption loads servers the way a server is loaded: many
// clients at once (16 and 64), each connecting again and again. It
// measures, in one run, handshakes per second of crypto/tls clients: full
// and resumed through the edge (tickets sealed and opened by the service's
// vault), and resumed by a local crypto/tls server with its own ticket
// keys, the baseline, under the same load. The three kinds alternate in
// rounds so that noise hits all alike. It reports each rate and the ratios
// edge-resumed/local-resumed (target ≥0.8) and edge-resumed/edge-full, and
// the CPU time of the whole process (clients, edge and service, or clients
// and local server) per handshake of each kind: on a shared machine the
// rates follow the CPU share the process gets, the CPU per handshake much
// less so; the allocations per handshake not at all. b.N is the number of
// handshakes of each kind.
//
//	go test -run '^$' -bench Resumption -benchtime 2000x -count 3 ./clients/go/edge/ | benchstat -
func BenchmarkResumption(b *testing.B) {
	srv := servicetest.Start(b, service.Options{Tickets: &service.TicketOptions{Deployment: "bench"}})
	key := srv.ServerKey(b, "bench-ec", "p256-pkcs8.pem", "ec.test")
	// The edge's own connection, as a deployed edge has.
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(b, err)
	b.Cleanup(func() { edgeClient.Close() })
	localCert, err := tls.X509KeyPair([]byte(key.CertPEM), servicetest.Fixture(b, "p256-pkcs8.pem"))
	require.NoError(b, err)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	el := NewListener(inner, &Config{Client: edgeClient, Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}}})
	b.Cleanup(func() { el.Close() })
	go serveOneByte(el)
	ll, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{localCert}})
	require.NoError(b, err)
	b.Cleanup(func() { ll.Close() })
	go serveOneByte(ll)

	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		for _, concurrency := range []int{16, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", tls.VersionName(version), concurrency), func(b *testing.B) {
				clients := func(cache bool) []*tls.Config {
					cfgs := make([]*tls.Config, concurrency)
					for i := range cfgs {
						cfgs[i] = &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MinVersion: version, MaxVersion: version}
						if cache {
							cfgs[i].ClientSessionCache = tls.NewLRUClientSessionCache(1)
						}
					}
					return cfgs
				}
				full := &resumptionLoad{name: "edge-full", addr: el.Addr().String(), clients: clients(false)}
				resumed := &resumptionLoad{name: "edge-resumed", addr: el.Addr().String(), clients: clients(true), wantResumed: true}
				local := &resumptionLoad{name: "local-resumed", addr: ll.Addr().String(), clients: clients(true), wantResumed: true}
				// A first, full handshake gives each resuming client its
				// ticket.
				for _, l := range []*resumptionLoad{resumed, local} {
					for _, cfg := range l.clients {
						did, err := handshakeOnce(l.addr, cfg)
						require.NoError(b, err)
						require.False(b, did)
					}
				}

				b.ResetTimer()
				runRounds(b, b.N, full, resumed, local)
				rate := func(l *resumptionLoad) float64 { return l.rate(b.N) }
				b.ReportMetric(rate(full), "edge-full-hs/s")
				b.ReportMetric(rate(resumed), "edge-resumed-hs/s")
				b.ReportMetric(rate(local), "local-resumed-hs/s")
				b.ReportMetric(rate(resumed)/rate(local), "edge/local-resumed")
				b.ReportMetric(rate(resumed)/rate(full), "edge-resumed/full")
				cpu := func(l *resumptionLoad) float64 { return l.cpuPerHandshake(b.N) }
				b.ReportMetric(cpu(full), "edge-full-cpu-µs/hs")
				b.ReportMetric(cpu(resumed), "edge-resumed-cpu-µs/hs")
				b.ReportMetric(cpu(local), "local-resumed-cpu-µs/hs")
				allocs := func(l *resumptionLoad) float64 { return float64(l.allocs) / float64(b.N) }
				b.ReportMetric(allocs(full), "edge-full-allocs/hs")
				b.ReportMetric(allocs(resumed), "edge-resumed-allocs/hs")
				b.ReportMetric(allocs(local), "local-resumed-allocs/hs")
				// ns/op would mix the three kinds: the rates say it.
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
