package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handshaked/handshaked/internal/procstat"
)

// A load runs for about d and says how many operations it completed and
// in how long.
type load func(d time.Duration) (n int, elapsed time.Duration, err error)

// result is a load's rate and the CPU time (seconds) each operation took
// in this process and the others measured: cpu in all, perProcess in
// each (this process first, then the pids in their order).
type result struct {
	rate, cpu  float64
	perProcess []float64
}

// interleaved runs each load for d in all, in rounds of d/rounds one load
// after the other, so that what else the machine does meanwhile hits all
// alike, after a warm-up of each (connections, streams, goroutine stacks).
// CPU time is this process's and pids'.
func interleaved(rounds int, d time.Duration, pids []int, loads []load) ([]result, error) {
	type sum struct {
		n       int
		elapsed time.Duration
		cpu     []time.Duration // per process
	}
	sums := make([]sum, len(loads))
	for i, l := range loads {
		if _, _, err := l(d / 10); err != nil {
			return nil, err
		}
		sums[i].cpu = make([]time.Duration, 1+len(pids))
	}
	for range rounds {
		for i, l := range loads {
			before, err := cpuTimes(pids)
			if err != nil {
				return nil, err
			}
			n, elapsed, err := l(d / time.Duration(rounds))
			if err != nil {
				return nil, err
			}
			after, err := cpuTimes(pids)
			if err != nil {
				return nil, err
			}
			sums[i].n += n
			sums[i].elapsed += elapsed
			for j := range after {
				sums[i].cpu[j] += after[j] - before[j]
			}
		}
	}
	out := make([]result, len(loads))
	for i, s := range sums {
		if s.n == 0 {
			return nil, fmt.Errorf("no operation completed in %v", s.elapsed)
		}
		r := result{rate: float64(s.n) / s.elapsed.Seconds(), perProcess: make([]float64, len(s.cpu))}
		for j, t := range s.cpu {
			r.perProcess[j] = t.Seconds() / float64(s.n)
			r.cpu += r.perProcess[j]
		}
		out[i] = r
	}
	return out, nil
}

// measure runs op from c goroutines until d has passed and returns how
// many operations completed and in how long.
func measure(ctx context.Context, c int, d time.Duration, op func(context.Context) (int, error)) (int, time.Duration, error) {
	var (
		count   atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	deadline := start.Add(d)
	for range c {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				n, err := op(ctx)
				if err != nil {
					errOnce.Do(func() { first = err; cancel() })
					return
				}
				count.Add(int64(n))
			}
		})
	}
	wg.Wait()
	return int(count.Load()), time.Since(start), first
}

// cpuTimes are the CPU times (user and system) this process and pids
// have used, in that order.
func cpuTimes(pids []int) ([]time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return nil, err
	}
	out := []time.Duration{time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	for _, pid := range pids {
		t, err := procstat.CPUTime(pid)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// perProcessCell writes a result's CPU time per operation in each process,
// in microseconds, as "a + b + c".
func perProcessCell(r result) string {
	parts := make([]string, len(r.perProcess))
	for i, s := range r.perProcess {
		parts[i] = fmt.Sprintf("%.1f", s*1e6)
	}
	return strings.Join(parts, " + ")
}

// detailTable writes one of the tables a -...-detail flag adds after a
// part's table: what it shows, then its header, rule and rows.
func detailTable(w io.Writer, intro, header, rule string, rows []string) {
	fmt.Fprintf(w, "%s\n\n%s\n%s\n", intro, header, rule)
	for _, r := range rows {
		fmt.Fprintln(w, r)
	}
	fmt.Fprintln(w)
}

// cpuCell writes a CPU time per operation.
func cpuCell(seconds float64) string {
	us := seconds * 1e6
	if us >= 100 {
		return fmt.Sprintf("(%.0f µs CPU)", us)
	}
	return fmt.Sprintf("(%.1f µs CPU)", us)
}
