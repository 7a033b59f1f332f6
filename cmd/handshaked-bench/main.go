// Command handshaked-bench measures handshaked from outside, the way its
// callers use it, and prints a table of ratios, each against a baseline
// measured in the same run:
//
//   - key operations (RSA-2048 PKCS#1 premaster decryption, RSA-2048 PSS,
//     ECDSA P-256 and Ed25519 signatures) over unary gRPC, SignStream,
//     Batch and REST at 1, 8 and 64 concurrent callers, against the same
//     vault operation in-process, and behind a bare gRPC stream (bare.go:
//     the ceiling of any gRPC transport of them);
//   - full and resumed TLS handshakes per second, and their p50/p99
//     latency at half load, through the edge (clients/go/edge, what
//     handshake-edge runs) against a crypto/tls server holding the key
//     itself: TLS 1.3 ECDSA, TLS 1.3 RSA, TLS 1.2 RSA key exchange, TLS
//     1.3 and TLS 1.2 resumptions both in two service round trips (the
//     default) and in one (handshake-edge -one-round-trip), against the
//     same baseline;
//   - the service's resident memory holding 10,000 and 50,000 pending
//     handshake sessions, against the same process idle.
//
// The service, the bare gRPC server, the edge and the local-key server
// each run in a process of their own (this program started again in another role); this process is
// the load generator, and the in-process baseline. From the repository:
//
//	go run ./cmd/handshaked-bench
//
// takes four to five minutes on 2 cores; -short runs every part briefly (a
// smoke test, not a measurement).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// roleEnv names the role a child process of the benchmark runs.
const roleEnv = "HANDSHAKED_BENCH_ROLE"

type options struct {
	duration    time.Duration // each measurement
	rounds      int           // slices each measurement is run in, interleaved with its baseline's
	concurrency []int         // key-operation callers
	hsClients   int           // closed-loop handshake clients
	// latencySamples: handshakes whose latency is measured per row and
	// server.
	latencySamples int
	latencyDetail  bool  // where the latency measurement's handshakes waited
	cpuDetail      bool  // each process's CPU time per operation
	sessions       []int // pending sessions to measure memory at
	parts          map[string]bool
	handshakes     *regexp.Regexp // the handshake rows to measure
	keyOps         *regexp.Regexp // the key operations to measure
	transports     *regexp.Regexp // the key operations' transports to measure, beside the in-process baseline
	profileDir     string         // where each process writes its CPU profile, if set
	short          bool
}

// parts are what the suite measures, in order; -parts picks some.
var parts = []string{"keyops", "handshakes", "memory"}

func main() {
	if role := os.Getenv(roleEnv); role != "" {
		if err := runChild(role); err != nil {
			fmt.Fprintf(os.Stderr, "handshaked-bench %s: %v\n", role, err)
			os.Exit(1)
		}
		return
	}
	var o options
	fs := flag.NewFlagSet("handshaked-bench", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 1500*time.Millisecond, "how long each measurement runs")
	fs.IntVar(&o.rounds, "rounds", 6, "rounds each measurement's duration is split into, alternating with its baseline's, so that noise hits both alike")
	conc := fs.String("concurrency", "1,8,64", "concurrent callers of the key operations, comma-separated")
	fs.IntVar(&o.hsClients, "handshake-clients", 16, "concurrent TLS clients measuring handshakes per second")
	fs.IntVar(&o.latencySamples, "latency-samples", 2000, "handshakes whose latency is measured, per row and server: the p99 is the 1% slowest of them")
	fs.BoolVar(&o.latencyDetail, "latency-detail", false, "after the handshakes' table, say where the handshakes of each latency measurement waited: each process's run-queue wait and wake-ups per handshake (Linux /proc)")
	fs.BoolVar(&o.cpuDetail, "cpu-detail", false, "after the key operations' and the handshakes' tables, give each measurement's CPU time per operation in each process (this one, the service, the bare gRPC server, the edge, the local-key server): which process a ratio's cost is in")
	sessions := fs.String("sessions", "10000,50000", "pending handshake sessions to measure the service's memory at, comma-separated, increasing")
	partList := fs.String("parts", strings.Join(parts, ","), "parts to run, comma-separated: "+strings.Join(parts, ", "))
	opsFilter := fs.String("keyops", "", "measure only the key operations whose name (\"ECDSA P-256 sign\", \"RSA-2048 PKCS#1 premaster decrypt\") this regular expression matches")
	transportFilter := fs.String("transports", "", "measure the key operations only over the transports whose column (\"unary gRPC\", \"REST\") this regular expression matches, beside the in-process baseline: a CPU profile (-cpuprofile) then holds only their work")
	hsFilter := fs.String("handshakes", "", "measure only the handshakes whose row (\"TLS 1.3 ECDSA P-256 full\", \"TLS 1.2 RSA key exchange resumed\") this regular expression matches")
	fs.StringVar(&o.profileDir, "cpuprofile", "", "write a CPU profile of every process (this one, the service, the edge, the local-key server) to this directory, one file per process and part, for go tool pprof")
	fs.BoolVar(&o.short, "short", false, "run every part briefly with small loads: checks the suite works, measures nothing")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var err error
	o.concurrency, err = intList(*conc)
	if err == nil {
		o.sessions, err = intList(*sessions)
	}
	if err == nil {
		o.parts, err = partSet(*partList)
	}
	if err == nil {
		o.handshakes, err = regexp.Compile(*hsFilter)
	}
	if err == nil {
		o.keyOps, err = regexp.Compile(*opsFilter)
	}
	if err == nil {
		o.transports, err = regexp.Compile(*transportFilter)
	}
	if err == nil && o.rounds < 1 {
		err = fmt.Errorf("-rounds %d: at least 1", o.rounds)
	}
	if err == nil && o.latencySamples < 1 {
		err = fmt.Errorf("-latency-samples %d: at least 1", o.latencySamples)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshaked-bench:", err)
		os.Exit(2)
	}
	if o.short {
		o.duration, o.rounds, o.concurrency, o.hsClients, o.sessions, o.latencySamples = 50*time.Millisecond, 1, []int{1, 8}, 4, []int{100, 300}, 20
	}
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "handshaked-bench:", err)
		os.Exit(1)
	}
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want positive integers, comma-separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func partSet(s string) (map[string]bool, error) {
	set := map[string]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(parts, f) {
			return nil, fmt.Errorf("-parts: unknown part %q: want some of %s", f, strings.Join(parts, ", "))
		}
		set[f] = true
	}
	return set, nil
}

// run measures everything and writes the tables to w as it goes.
func run(ctx context.Context, w io.Writer, o options) error {
	dir, err := os.MkdirTemp("", "handshaked-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(w, "handshaked-bench: %s, GOMAXPROCS %d, %v per measurement in %d rounds alternating with its baseline\n\n", runtime.Version(), runtime.GOMAXPROCS(0), o.duration, o.rounds)

	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
		stop, err := startProfile(filepath.Join(o.profileDir, "0-bench.pprof"))
		if err != nil {
			return err
		}
		defer stop()
		defer fmt.Fprintf(w, "CPU profiles: %s (go tool pprof FILE)\n", o.profileDir)
	}
	if o.parts["keyops"] || o.parts["handshakes"] {
		svc, err := startChild(ctx, o, "service", dir, nil)
		if err != nil {
			return err
		}
		defer svc.stop()
		if o.parts["keyops"] {
			bare, err := startChild(ctx, o, "bare", dir, nil)
			if err != nil {
				return err
			}
			err = benchKeyOps(ctx, w, o, dir, svc.info, bare.info, []int{svc.pid(), bare.pid()})
			bare.stop()
			if err != nil {
				return fmt.Errorf("key operations: %w", err)
			}
		}
		if o.parts["handshakes"] {
			if err := benchHandshakes(ctx, w, o, dir, svc); err != nil {
				return fmt.Errorf("handshakes: %w", err)
			}
		}
		svc.stop()
	}
	if o.parts["memory"] {
		if err := benchMemory(ctx, w, o, dir); err != nil {
			return fmt.Errorf("memory: %w", err)
		}
	}
	return nil
}
