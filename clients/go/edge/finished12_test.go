package edge

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	handshaked "github.com/handshaked/handshaked/clients/go"
	pb "github.com/handshaked/handshaked/gen/handshake/v1"
	"github.com/handshaked/handshaked/internal/engine/record"
	"github.com/handshaked/handshaked/internal/service"
	"github.com/handshaked/handshaked/internal/servicetest"
)

// ticketService is a service sealing session tickets, with an RSA and an
// ECDSA key.
func ticketService(t *testing.T) *testService {
	t.Helper()
	srv := servicetest.Start(t, service.Options{Tickets: &service.TicketOptions{Deployment: "finished12"}})
	return &testService{
		client: handshaked.New(srv.Conn),
		rsa:    srv.ServerKey(t, "edge-rsa", "rsa2048-pkcs1.pem", "rsa.test"),
		ecds:   srv.ServerKey(t, "edge-ec", "p256-pkcs8.pem", "ec.test"),
	}
}

// TestOneRoundTripTLS12Resumption: with caller_verifies_finished a TLS 1.2
// resumption (RFC 5246 §7.3) takes one service step, streamed or unary,
// with the client's records whole or one byte per segment, and the edge
// verifies the client's ChangeCipherSpec and Finished; application data
// then goes both ways. The full handshake before it takes its two steps.
func TestOneRoundTripTLS12Resumption(t *testing.T) {
	s := ticketService(t)
	for _, sc := range []struct {
		id uint16
		ec bool
	}{
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true},
		{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true},
		{tls.TLS_RSA_WITH_AES_256_GCM_SHA384, false},
	} {
		for _, unary := range []bool{false, true} {
			for _, trickle := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/unary=%v/trickled=%v", tls.CipherSuiteName(sc.id), unary, trickle), func(t *testing.T) {
					l, conns := listen(t, &Config{Client: s.client, Handshake: s.oneRoundTrip(sc.id), Unary: unary})
					cfg := s.clientConfig(sc.id, tls.VersionTLS12, sc.ec)
					cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
					for i, resumed := range []bool{false, true, true} {
						raw, err := net.Dial("tcp", l.Addr().String())
						require.NoError(t, err)
						client := tls.Client(&clientConn{Conn: raw, corruptAt: -1, trickle: trickle}, cfg)
						require.NoError(t, client.Handshake(), "handshake %d", i)
						server := accept(t, conns)
						st := server.ConnectionState()
						require.Equal(t, resumed, st.DidResume, "handshake %d", i)
						assert.Equal(t, resumed, client.ConnectionState().DidResume)
						if resumed {
							assert.Len(t, st.Steps, 1, "service steps of handshake %d", i)
						} else {
							// More when the client's flight trickles in.
							assert.GreaterOrEqual(t, len(st.Steps), 2, "service steps of the full handshake")
						}
						exchange(t, client, server, []byte("after a Finished the edge verified"))
						client.Close()
					}
				})
			}
		}
	}
}

// flightTamperConn is a TLS 1.2 client connection that rewrites the write
// starting with its ChangeCipherSpec (its second flight: ChangeCipherSpec
// and Finished) with change.
type flightTamperConn struct {
	net.Conn
	change func(ccs, fin []byte) []byte
	mu     sync.Mutex
	done   bool
}

func (c *flightTamperConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || len(b) < len(ccsRecord) || !slices.Equal(b[:len(ccsRecord)], ccsRecord) {
		return c.Conn.Write(b)
	}
	c.done = true
	_, _, _, n, err := record.Parse(b[len(ccsRecord):], record.MaxCiphertextTLS12)
	if err != nil || n == 0 {
		panic("the client's Finished is not in the write of its ChangeCipherSpec")
	}
	fin := b[len(ccsRecord) : len(ccsRecord)+n]
	out := slices.Concat(c.change(slices.Clone(ccsRecord), slices.Clone(fin)), b[len(ccsRecord)+n:])
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// TestOneRoundTripTLS12RefusesBadFlight: a resuming TLS 1.2 client whose
// second flight is not its ChangeCipherSpec then its Finished (RFC 5246
// §7.3), or whose Finished record does not authenticate, gets no
// connection: the edge refuses it with the alert the engine would send,
// protected under the server write key after the server's Finished so
// that the client reads it, before any application data is read.
func TestOneRoundTripTLS12RefusesBadFlight(t *testing.T) {
	s := ticketService(t)
	const suite = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	tests := []struct {
		name        string
		change      func(ccs, fin []byte) []byte
		alert       string // the edge's HandshakeError
		clientAlert string // what the client reads
	}{
		{name: "missing ChangeCipherSpec", alert: "unexpected_message", clientAlert: "unexpected message",
			change: func(ccs, fin []byte) []byte { return fin }},
		{name: "Finished before ChangeCipherSpec", alert: "unexpected_message", clientAlert: "unexpected message",
			change: func(ccs, fin []byte) []byte { return slices.Concat(fin, ccs) }},
		{name: "garbled Finished record", alert: "bad_record_mac", clientAlert: "bad record MAC",
			change: func(ccs, fin []byte) []byte {
				fin[len(fin)-1] ^= 1
				return slices.Concat(ccs, fin)
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer inner.Close()
			type result struct {
				c   *Conn
				err error
			}
			results := make(chan result, 2)
			go func() {
				for range 2 {
					raw, err := inner.Accept()
					if err != nil {
						results <- result{nil, err}
						return
					}
					c, err := Server(context.Background(), raw, &Config{Client: s.client, Handshake: s.oneRoundTrip(suite)})
					results <- result{c, err}
				}
			}()
			cfg := s.clientConfig(suite, tls.VersionTLS12, true)
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			// A full handshake gives the client its ticket.
			full, err := tls.Dial("tcp", inner.Addr().String(), cfg)
			require.NoError(t, err)
			res := <-results
			require.NoError(t, res.err)
			full.Close()
			res.c.Close()

			raw, err := net.Dial("tcp", inner.Addr().String())
			require.NoError(t, err)
			defer raw.Close()
			client := tls.Client(&flightTamperConn{Conn: raw, change: tc.change}, cfg)
			require.NoError(t, client.Handshake(), "a resuming TLS 1.2 client finishes before reading the server's answer")
			require.True(t, client.ConnectionState().DidResume)
			_, err = client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			require.NoError(t, err)
			raw.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = client.Read(make([]byte, 100))
			assert.ErrorContains(t, err, "remote error: tls: "+tc.clientAlert)
			res = <-results
			assert.Nil(t, res.c, "the edge made a connection")
			var herr *HandshakeError
			require.ErrorAs(t, res.err, &herr)
			assert.Equal(t, tc.alert, herr.Alert, herr.Reason)
		})
	}
}

// BenchmarkOneRoundTripTLS12Resumption measures, in one run, TLS 1.2
// resumptions (RSA key exchange, AES-128-GCM) of 16 concurrent crypto/tls
// clients through the edge in one service round trip
// (caller_verifies_finished) and in two, and against a local crypto/tls
// server with its own tickets (the baseline), the kinds alternating in
// rounds. It reports each rate, the CPU time of the whole process per
// handshake (clients, edge and service, or clients and local server) and
// the allocations per handshake, and the ratios. b.N is the number of
// handshakes of each kind.
//
//	go test -run '^$' -bench OneRoundTripTLS12Resumption -benchtime 3000x -count 3 ./clients/go/edge/
func BenchmarkOneRoundTripTLS12Resumption(b *testing.B) {
	srv := servicetest.Start(b, service.Options{Tickets: &service.TicketOptions{Deployment: "bench"}})
	key := srv.ServerKey(b, "bench-rsa", "rsa2048-pkcs1.pem", "rsa.test")
	edgeClient, err := handshaked.Dial(srv.GRPCAddr, handshaked.WithInsecure())
	require.NoError(b, err)
	b.Cleanup(func() { edgeClient.Close() })
	const suite = tls.TLS_RSA_WITH_AES_128_GCM_SHA256
	edgeListener := func(oneTrip bool) string {
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(b, err)
		l := NewListener(inner, &Config{Client: edgeClient,
			Handshake: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: key.ID}}, CallerVerifiesFinished: oneTrip}})
		b.Cleanup(func() { l.Close() })
		go serveOneByte(l)
		return l.Addr().String()
	}
	localCert, err := tls.X509KeyPair([]byte(key.CertPEM), servicetest.Fixture(b, "rsa2048-pkcs1.pem"))
	require.NoError(b, err)
	ll, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{localCert}, CipherSuites: []uint16{suite}})
	require.NoError(b, err)
	b.Cleanup(func() { ll.Close() })
	go serveOneByte(ll)

	clients := func() []*tls.Config {
		cfgs := make([]*tls.Config, 16)
		for i := range cfgs {
			cfgs[i] = &tls.Config{ServerName: key.Name, RootCAs: key.Pool, MaxVersion: tls.VersionTLS12,
				CipherSuites: []uint16{suite}, ClientSessionCache: tls.NewLRUClientSessionCache(1)}
		}
		return cfgs
	}
	one := &resumptionLoad{name: "edge-1-trip", addr: edgeListener(true), clients: clients(), wantResumed: true}
	two := &resumptionLoad{name: "edge-2-trips", addr: edgeListener(false), clients: clients(), wantResumed: true}
	local := &resumptionLoad{name: "local", addr: ll.Addr().String(), clients: clients(), wantResumed: true}
	for _, l := range []*resumptionLoad{one, two, local} {
		for _, cfg := range l.clients {
			did, err := handshakeOnce(l.addr, cfg) // the first ticket
			require.NoError(b, err)
			require.False(b, did)
		}
	}
	b.ResetTimer()
	runRounds(b, b.N, one, two, local)
	cpu := func(l *resumptionLoad) float64 { return l.cpuPerHandshake(b.N) }
	allocs := func(l *resumptionLoad) float64 { return float64(l.allocs) / float64(b.N) }
	b.ReportMetric(one.rate(b.N), "1-trip-hs/s")
	b.ReportMetric(two.rate(b.N), "2-trips-hs/s")
	b.ReportMetric(local.rate(b.N), "local-hs/s")
	b.ReportMetric(cpu(one), "1-trip-cpu-µs/hs")
	b.ReportMetric(cpu(two), "2-trips-cpu-µs/hs")
	b.ReportMetric(cpu(local), "local-cpu-µs/hs")
	b.ReportMetric(cpu(local)/cpu(one), "local/1-trip-cpu")
	b.ReportMetric(cpu(local)/cpu(two), "local/2-trips-cpu")
	b.ReportMetric(allocs(one), "1-trip-allocs/hs")
	b.ReportMetric(allocs(two), "2-trips-allocs/hs")
	b.ReportMetric(allocs(local), "local-allocs/hs")
	// ns/op would mix the three kinds: the rates say it.
	b.ReportMetric(0, "ns/op")
}
