package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handshaked/handshaked/internal/procstat"
)

// hsKind is one kind of TLS handshake the clients ask for.
type hsKind struct {
	name    string
	key     string // the listener's key
	version uint16
	suites  []uint16 // TLS 1.2: the only suites offered
}

var hsKinds = []hsKind{
	{"TLS 1.3 ECDSA P-256", "ec", tls.VersionTLS13, nil},
	{"TLS 1.3 RSA-2048", "rsa", tls.VersionTLS13, nil},
	{"TLS 1.2 RSA key exchange", "rsa", tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
}

// hsClient makes handshakes of one kind against one server.
type hsClient struct {
	addr    string
	kind    hsKind
	pool    *x509.CertPool
	resumed bool
	// trips is the number of service round trips the server must say
	// each handshake took (serveOneByte).
	trips byte
	// configs holds client configurations, each with its own session
	// cache (a real client has one) already holding a ticket, when
	// resumed; otherwise one configuration without a cache.
	configs chan *tls.Config
}

func newHSClient(addr string, kind hsKind, pool *x509.CertPool, resumed bool, trips byte, n int) (*hsClient, error) {
	h := &hsClient{addr: addr, kind: kind, pool: pool, resumed: resumed, trips: trips, configs: make(chan *tls.Config, n)}
	for range n {
		cfg := &tls.Config{ServerName: serverName, RootCAs: pool, MinVersion: kind.version, MaxVersion: kind.version, CipherSuites: kind.suites}
		if resumed {
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			// A first, full handshake gives the client its ticket.
			if _, _, err := handshakeOnce(addr, cfg); err != nil {
				return nil, err
			}
		}
		h.configs <- cfg
	}
	return h, nil
}

// once makes one handshake and checks it resumed or not as asked, in as
// many service round trips as asked.
func (h *hsClient) once() error {
	cfg := <-h.configs
	defer func() { h.configs <- cfg }()
	did, trips, err := handshakeOnce(h.addr, cfg)
	switch {
	case err != nil:
	case did != h.resumed:
		err = fmt.Errorf("%s: resumed %v, want %v", h.kind.name, did, h.resumed)
	case trips != h.trips:
		err = fmt.Errorf("%s: %d service round trips, want %d", h.kind.name, trips, h.trips)
	}
	return err
}

// handshakeOnce connects to addr with cfg, reads the server's one byte
// (so the server has completed the handshake) and returns whether it
// resumed and the byte (the service round trips, serveOneByte).
func handshakeOnce(addr string, cfg *tls.Config) (bool, byte, error) {
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return false, 0, err
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	defer c.Close()
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return false, 0, err
	}
	return c.ConnectionState().DidResume, b[0], nil
}

// closedLoop makes handshakes from n clients, each one after the other,
// for d and returns handshakes per second.
func (h *hsClient) closedLoop(n int, d time.Duration) (int, time.Duration, error) {
	return measure(context.Background(), n, d, func(context.Context) (int, error) { return 1, h.once() })
}

// openLoop starts n operations at rate per second from start, whatever the
// earlier ones are doing, and returns their latencies. Each counts from the
// moment it was due, not from when this process got to start it: a load
// generator short of CPU starts late, and a latency taken from the late
// start would leave out the wait a client arriving on time sees
// (coordinated omission). The pacing is sleepUntil's.
func openLoop(start time.Time, rate float64, n int, op func() error) ([]time.Duration, error) {
	var (
		mu      sync.Mutex
		lat     = make([]time.Duration, 0, n)
		wg      sync.WaitGroup
		failed  atomic.Pointer[error]
		between = float64(time.Second) / rate
	)
	for i := range n {
		due := start.Add(time.Duration(float64(i) * between))
		sleepUntil(due)
		if failed.Load() != nil {
			break
		}
		wg.Go(func() {
			if err := op(); err != nil {
				failed.CompareAndSwap(nil, &err)
				return
			}
			d := time.Since(due)
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		return nil, *err
	}
	return lat, nil
}

// sleepUntil sleeps until t on the kernel's high-resolution timer. The
// runtime's timers wake an idle process through epoll, whose timeout is in
// whole milliseconds: time.Sleep(500µs) took 1.1 ms here. Arrivals due
// 0.5 ms apart would go out in bunches, and each latency, counted from
// when it was due, would carry up to a millisecond of the load
// generator's own lateness. nanosleep overshoots by the timer slack, about
// 55 µs.
func sleepUntil(t time.Time) {
	for d := time.Until(t); d > 0; d = time.Until(t) {
		ts := syscall.NsecToTimespec(d.Nanoseconds())
		syscall.Nanosleep(&ts, nil) // on EINTR (a signal), sleep what is left
	}
}

// latencyRound is how many handshakes a round of latencies makes on one
// server before the other takes over.
const latencyRound = 100

// watched is, for -latency-detail, the processes of one server of a
// latency measurement (the clients' and the server's) and what the kernel's
// scheduler did with them during that server's counted turns.
type watched struct {
	pids  []int
	sched []procstat.Scheduling // by pid
}

// scheduling reads the Scheduling of each of pids.
func scheduling(pids []int) ([]procstat.Scheduling, error) {
	out := make([]procstat.Scheduling, len(pids))
	for i, pid := range pids {
		var err error
		if out[i], err = procstat.SchedulingOf(pid); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// latencies measures the latency of samples handshakes (ops) on each of
// two servers at the same rate: in rounds of latencyRound handshakes, one
// server after the other, which one goes first alternating, so that what
// else the machine does meanwhile, and any drift, hits both alike. The
// first round is a warm-up and not counted: the load has just changed
// (from the closed loop, or from another row). With watch, it also sums
// the scheduling of each server's processes over its counted turns.
func latencies(rate float64, samples int, ops [2]func() error, watch *[2]watched) ([2][]time.Duration, error) {
	var lat [2][]time.Duration
	for r := 0; len(lat[0]) < samples; r++ {
		for k := range 2 {
			i := (r + k) % 2
			var before []procstat.Scheduling
			if watch != nil {
				var err error
				if before, err = scheduling(watch[i].pids); err != nil {
					return lat, err
				}
			}
			l, err := openLoop(time.Now(), rate, min(latencyRound, samples-len(lat[i])), ops[i])
			if err != nil {
				return lat, err
			}
			if r == 0 {
				continue
			}
			lat[i] = append(lat[i], l...)
			if watch != nil {
				after, err := scheduling(watch[i].pids)
				if err != nil {
					return lat, err
				}
				if watch[i].sched == nil {
					watch[i].sched = make([]procstat.Scheduling, len(after))
				}
				for j := range after {
					d := after[j].Sub(before[j])
					watch[i].sched[j].RunQueueWait += d.RunQueueWait
					watch[i].sched[j].Wakeups += d.Wakeups
				}
			}
		}
	}
	return lat, nil
}

// schedulingCells shows each process's run-queue wait and wake-ups per
// handshake.
func schedulingCells(w watched, handshakes int) []string {
	var cells []string
	for _, s := range w.sched {
		cells = append(cells, fmt.Sprintf("%.0f µs, %.1f", float64(s.RunQueueWait.Microseconds())/float64(handshakes), float64(s.Wakeups)/float64(handshakes)))
	}
	return cells
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// percentileRange is where the p-quantile of what sorted was sampled from
// lies, at 97.5% confidence: how many of n samples fall below the quantile
// is binomial(n, p), so the quantile lies between the order statistics
// z = 2.24 standard deviations, sqrt(n p (1-p)), either side of rank n p
// (the normal approximation, distribution-free). Two such ranges, of two
// servers, give one for the difference of their quantiles at 95%. Too few
// samples have no order statistic at one of those ranks (for a p99, 500
// or fewer): then ok is false, as the quantile may lie beyond the samples.
func percentileRange(sorted []time.Duration, p float64) (lo, hi time.Duration, ok bool) {
	n := len(sorted)
	d := 2.24 * math.Sqrt(float64(n)*p*(1-p))
	rank := p * float64(n)
	l, h := int(math.Floor(rank-d)), int(math.Ceil(rank+d))
	if l < 0 || h >= n {
		return 0, 0, false
	}
	return sorted[l], sorted[h], true
}

// addedCell shows the p-quantiles of the local and the edge latencies and
// their difference, with the range the difference lies in at 95%
// confidence (percentileRange), if there are samples enough for one.
func addedCell(local, edge []time.Duration, p float64) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	added := func(d time.Duration) string { return fmt.Sprintf("%+.2f", float64(d.Microseconds())/1000) }
	l, e := percentile(local, p), percentile(edge, p)
	lLo, lHi, lOK := percentileRange(local, p)
	eLo, eHi, eOK := percentileRange(edge, p)
	if !lOK || !eOK {
		return fmt.Sprintf("%s / %s (%s ms, too few samples for a range)", ms(l), ms(e), added(e-l))
	}
	return fmt.Sprintf("%s / %s (%s ms, %s to %s)", ms(l), ms(e), added(e-l), added(eLo-lHi), added(eHi-lLo))
}

// edgeMode is how the edge steps a handshake in the service.
type edgeMode struct {
	oneRoundTrip bool
	trips        byte // service round trips per handshake
}

// edgeModes are the edge's modes that apply to a handshake: two steps (the
// default) and one round trip, which TLS 1.3 and a TLS 1.2 resumption
// have; a full TLS 1.2 handshake has only the two steps (the client's
// Finished comes before the server's, so with one-round-trip set the edge
// falls back to them).
func edgeModes(kind hsKind, resumed bool) []edgeMode {
	if kind.version == tls.VersionTLS13 || resumed {
		return []edgeMode{{false, 2}, {true, 1}}
	}
	return []edgeMode{{false, 2}}
}

// benchHandshakes compares, for each kind of handshake, full and resumed,
// the edge (in its own process, stepping handshakes in the service) in
// each of its modes against the local-key crypto/tls server (in its own
// process): rate from closed-loop clients, every mode interleaved with
// the one baseline, then latency at half each mode's rate, the same rate
// for the mode and the baseline.
func benchHandshakes(ctx context.Context, w io.Writer, o options, dir string, svc *child) error {
	edgeProc, err := startChild(ctx, o, "edge", dir, []string{serviceEnv + "=" + svc.info.GRPC})
	if err != nil {
		return err
	}
	defer edgeProc.stop()
	localProc, err := startChild(ctx, o, "local", dir, nil)
	if err != nil {
		return err
	}
	defer localProc.stop()
	// Every process serving the handshakes, whose CPU time is counted.
	pids := []int{svc.pid(), edgeProc.pid(), localProc.pid()}
	pool := x509.NewCertPool()
	for _, c := range append(svc.info.CertsPEM, localProc.info.CertsPEM...) {
		pool.AppendCertsFromPEM([]byte(c))
	}
	fmt.Fprintf(w, "Handshakes: per second from %d clients connecting again and again (each resuming client with its own session cache), and the CPU time each took in all processes (clients, service, edge, local server); latency of %d handshakes on each server at half the edge's rate, the same rate on both, arriving at that steady rate whatever the earlier ones are doing, from the moment each was due to its first byte read, the servers taking turns every %d handshakes; in brackets the latency the edge adds and the range it lies in at 95%% confidence (from the order statistics of the samples). Local: crypto/tls holding the key. Edge: the edge stepping the handshake in the service (session tickets sealed by the service) in 2 service round trips, or in 1 for TLS 1.3 and TLS 1.2 resumptions with handshake-edge -one-round-trip (the edge verifies the client's Finished); the rows of one handshake share one local measurement, interleaved with both edge modes.\n\n", o.hsClients, o.latencySamples, latencyRound)
	fmt.Fprintln(w, "| handshake | | service round trips | local hs/s | edge hs/s | edge ÷ local | CPU µs/hs local / edge (local ÷ edge) | at | p50 local / edge (added) | p99 local / edge (added) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	// -latency-detail's and -cpu-detail's rows, shown after the table.
	var details, cpuDetails []string
	for _, kind := range hsKinds {
		for _, resumed := range []bool{false, true} {
			label := "full"
			if resumed {
				label = "resumed"
			}
			if !o.handshakes.MatchString(kind.name + " " + label) {
				continue
			}
			// Twice the closed loop's clients: enough for the open loop's
			// handshakes in flight at half load, so none waits for a client.
			local, err := newHSClient(localProc.info.Listeners[kind.key], kind, pool, resumed, 0, 2*o.hsClients)
			if err != nil {
				return fmt.Errorf("%s %s, local: %w", kind.name, label, err)
			}
			loads := []load{func(d time.Duration) (int, time.Duration, error) { return local.closedLoop(o.hsClients, d) }}
			modes := edgeModes(kind, resumed)
			edges := make([]*hsClient, len(modes))
			for i, m := range modes {
				edges[i], err = newHSClient(edgeProc.info.Listeners[listenerName(kind.key, m.oneRoundTrip)], kind, pool, resumed, m.trips, 2*o.hsClients)
				if err != nil {
					return fmt.Errorf("%s %s, edge in %d round trips: %w", kind.name, label, m.trips, err)
				}
				loads = append(loads, func(d time.Duration) (int, time.Duration, error) { return edges[i].closedLoop(o.hsClients, d) })
			}
			res, err := interleaved(o.rounds, o.duration, pids, loads)
			if err != nil {
				return fmt.Errorf("%s %s: %w", kind.name, label, err)
			}
			for i, m := range modes {
				localRate, edgeRate := res[0].rate, res[i+1].rate
				half := edgeRate / 2
				var watch *[2]watched
				if o.latencyDetail {
					self := os.Getpid()
					watch = &[2]watched{{pids: []int{self, localProc.pid()}}, {pids: []int{self, edgeProc.pid(), svc.pid()}}}
				}
				lat, err := latencies(half, o.latencySamples, [2]func() error{local.once, edges[i].once}, watch)
				if err != nil {
					return fmt.Errorf("%s %s, latency locally and through the edge in %d round trips: %w", kind.name, label, m.trips, err)
				}
				localLat, edgeLat := lat[0], lat[1]
				slices.Sort(localLat)
				slices.Sort(edgeLat)
				fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %.2f× | %.0f / %.0f (%.2f×) | %s/s | %s | %s |\n", kind.name, label, m.trips, si(localRate), si(edgeRate), edgeRate/localRate,
					res[0].cpu*1e6, res[i+1].cpu*1e6, res[0].cpu/res[i+1].cpu, si(half), addedCell(localLat, edgeLat, 0.50), addedCell(localLat, edgeLat, 0.99))
				cpuDetails = append(cpuDetails, fmt.Sprintf("| %s | %s | %d | %s | %s |", kind.name, label, m.trips, perProcessCell(res[0]), perProcessCell(res[i+1])))
				if watch != nil {
					cells := append(schedulingCells(watch[0], len(localLat)), schedulingCells(watch[1], len(edgeLat))...)
					details = append(details, fmt.Sprintf("| %s | %s | %d | %s |", kind.name, label, m.trips, strings.Join(cells, " | ")))
				}
			}
		}
	}
	fmt.Fprintln(w)
	if o.cpuDetail {
		detailTable(w, "CPU time per handshake in each process (-cpu-detail), µs: this process (the clients) + the service + the edge + the local-key server.",
			"| handshake | | service round trips | local | edge |", "|---|---|---:|---:|---:|", cpuDetails)
	}
	if len(details) > 0 {
		detailTable(w, "Where the handshakes of the latency measurement waited (-latency-detail): per handshake, the time the threads of each process spent runnable, waiting for a CPU, and how often they slept and were woken; the clients are this process, during that server's turns.",
			"| handshake | | service round trips | local turns: clients | local server | edge turns: clients | edge | service |", "|---|---|---:|---:|---:|---:|---:|---:|", details)
	}
	return nil
}
