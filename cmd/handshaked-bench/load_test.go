package main

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := range 100 {
		lat = append(lat, time.Duration(i+1)*time.Millisecond)
	}
	assert.Equal(t, 51*time.Millisecond, percentile(lat, 0.50))
	assert.Equal(t, 100*time.Millisecond, percentile(lat, 0.99))
	assert.Equal(t, time.Duration(0), percentile(nil, 0.99))
}

// -transports keeps the in-process baseline, whatever it matches, and of
// the others those it matches, in their order.
func TestMeasuredTransports(t *testing.T) {
	all := []string{"in-process", "unary gRPC", "SignStream", "REST", "bare gRPC"}
	var ts []transport
	for _, name := range all {
		ts = append(ts, transport{name: name})
	}
	names := func(ts []transport) (out []string) {
		for _, t := range ts {
			out = append(out, t.name)
		}
		return out
	}
	assert.Equal(t, []string{"in-process", "unary gRPC", "REST"}, names(measuredTransports(ts, regexp.MustCompile(`^(REST|unary gRPC)$`))))
	assert.Equal(t, []string{"in-process", "unary gRPC", "bare gRPC"}, names(measuredTransports(ts, regexp.MustCompile(`gRPC`))))
	assert.Equal(t, []string{"in-process"}, names(measuredTransports(ts, regexp.MustCompile(`in-process`))))
	assert.Equal(t, all, names(measuredTransports(ts, regexp.MustCompile(``))))
	assert.Equal(t, all, names(ts), "the transports given are left as they were")
}

// TestOpenLoopCountsFromDue: a latency counts from when the operation was
// due, so that a load generator that starts it late (short of CPU) does
// not hide the wait: here every operation was due 50 ms ago or earlier.
func TestOpenLoopCountsFromDue(t *testing.T) {
	var ran atomic.Int64
	lat, err := openLoop(time.Now().Add(-50*time.Millisecond), 1000, 20, func() error { ran.Add(1); return nil })
	require.NoError(t, err)
	assert.Equal(t, int64(20), ran.Load())
	require.Len(t, lat, 20)
	for i, d := range lat {
		assert.GreaterOrEqual(t, d, 30*time.Millisecond, "operation %d", i)
	}
}

// TestSleepUntil: it sleeps until the time, not less.
func TestSleepUntil(t *testing.T) {
	for _, d := range []time.Duration{-time.Millisecond, 0, 50 * time.Microsecond, 300 * time.Microsecond, 20 * time.Millisecond} {
		due := time.Now().Add(d)
		sleepUntil(due)
		assert.False(t, time.Now().Before(due), "woke before %v", d)
	}
}

// TestOpenLoopPaced: operations start at the rate whatever the earlier ones
// are doing (open loop): of ten that each take 300 ms, due every 10 ms,
// most run at once (a closed loop would run one); and the first error is
// returned.
func TestOpenLoopPaced(t *testing.T) {
	var running, most atomic.Int64
	lat, err := openLoop(time.Now(), 100, 10, func() error {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(300 * time.Millisecond)
		running.Add(-1)
		return nil
	})
	require.NoError(t, err)
	require.Len(t, lat, 10)
	assert.GreaterOrEqual(t, most.Load(), int64(5), "operations in flight at once")
	for _, d := range lat {
		assert.GreaterOrEqual(t, d, 300*time.Millisecond)
	}

	_, err = openLoop(time.Now(), 1000, 5, func() error { return errors.New("refused") })
	assert.EqualError(t, err, "refused")
}

// TestPercentileRange: the range of the p99 of 2000 samples spans the order
// statistics 2.24 standard deviations (about 10 ranks) around rank 1980,
// and holds the true quantile at least as often as it says: here the p99
// of an exponential distribution, in 97% or more of 400 draws (a range
// half as wide holds it in about 75%).
func TestPercentileRange(t *testing.T) {
	var lat []time.Duration
	for i := range 2000 {
		lat = append(lat, time.Duration(i+1)*time.Millisecond)
	}
	lo, hi, ok := percentileRange(lat, 0.99)
	require.True(t, ok)
	assert.Equal(t, 1971*time.Millisecond, lo)
	assert.Equal(t, 1991*time.Millisecond, hi)
	_, _, ok = percentileRange(lat[:500], 0.99)
	assert.False(t, ok, "the p99 of 500 samples may lie beyond the slowest")
	_, _, ok = percentileRange(nil, 0.5)
	assert.False(t, ok)

	rng := rand.New(rand.NewPCG(1, 2))
	quantile := time.Duration(-math.Log(0.01) * float64(time.Millisecond)) // of Exp(1/ms)
	held := 0
	for range 400 {
		s := make([]time.Duration, 2000)
		for i := range s {
			s[i] = time.Duration(rng.ExpFloat64() * float64(time.Millisecond))
		}
		slices.Sort(s)
		if lo, hi, _ := percentileRange(s, 0.99); lo <= quantile && quantile <= hi {
			held++
		}
	}
	assert.GreaterOrEqual(t, held, 388, "draws whose range holds the p99")
}

// TestAddedCell: what the edge adds, and the range it lies in.
func TestAddedCell(t *testing.T) {
	var local, edge []time.Duration
	for i := range 2000 {
		local = append(local, time.Duration(i+1)*time.Millisecond/100)
		edge = append(edge, time.Duration(i+1)*time.Millisecond/100+time.Millisecond)
	}
	assert.Equal(t, "19.81 / 20.81 (+1.00 ms, +0.80 to +1.20)", addedCell(local, edge, 0.99))
	assert.Equal(t, "0.10 / 1.10 (+1.00 ms, too few samples for a range)", addedCell(local[:10], edge[:10], 0.99))
}

// TestLatencies: samples latencies of each of two servers, in turns of
// latencyRound, which one goes first alternating, after a warm-up round
// that is not counted; with watch, the scheduling of the watched
// processes (here this one, whose operations sleep) in the counted turns.
func TestLatencies(t *testing.T) {
	var (
		mu    sync.Mutex
		turns []int // the server of each turn, as the operations ran
		sizes []int // how many operations each turn made
	)
	op := func(server int) func() error {
		return func() error {
			mu.Lock()
			if len(turns) == 0 || turns[len(turns)-1] != server {
				turns, sizes = append(turns, server), append(sizes, 0)
			}
			sizes[len(sizes)-1]++
			mu.Unlock()
			// sleepUntil, not a bare nanosleep: the runtime's preemption
			// signal interrupts a sleeping thread now and then (EINTR).
			sleepUntil(time.Now().Add(100 * time.Microsecond))
			return nil
		}
	}
	watch := [2]watched{{pids: []int{os.Getpid()}}, {pids: []int{os.Getpid()}}}
	lat, err := latencies(5000, 150, [2]func() error{op(0), op(1)}, &watch)
	require.NoError(t, err)
	// Rounds 0 1 (warm-up), 1 0, 0 1 (the last 50 each): a server's two
	// turns in a row show as one.
	assert.Equal(t, []int{0, 1, 0, 1}, turns, "servers in turn")
	assert.Equal(t, []int{100, 200, 150, 50}, sizes, "operations per turn")
	for i := range 2 {
		assert.Len(t, lat[i], 150, "server %d", i)
		require.Len(t, watch[i].sched, 1)
		assert.GreaterOrEqual(t, watch[i].sched[0].Wakeups, int64(150), "server %d: wake-ups of the counted operations", i)
		assert.Len(t, schedulingCells(watch[i], len(lat[i])), 1)
	}
}

// TestInterleavedCountsEachProcess: interleaved gives each load's CPU time
// per operation in this process and in each process measured, in order,
// and their sum as the load's CPU time (what -cpu-detail prints). The load
// runs until both this process and a busy child have used at least 30 ms
// of CPU, so each share has a floor whatever the machine's load.
func TestInterleavedCountsEachProcess(t *testing.T) {
	testenv.LookPath(t, "sh")
	child := exec.Command("sh", "-c", "while :; do :; done")
	require.NoError(t, child.Start())
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	pid := child.Process.Pid
	const floor = 30 * time.Millisecond
	busy := func(time.Duration) (int, time.Duration, error) {
		start := time.Now()
		before, err := cpuTimes([]int{pid})
		if err != nil {
			return 0, 0, err
		}
		for {
			now, err := cpuTimes([]int{pid})
			if err != nil {
				return 0, 0, err
			}
			if now[0]-before[0] >= floor && now[1]-before[1] >= floor {
				return 1, time.Since(start), nil
			}
		}
	}
	idle := func(time.Duration) (int, time.Duration, error) { return 1, time.Millisecond, nil }
	res, err := interleaved(2, 10*time.Millisecond, []int{pid}, []load{busy, idle})
	require.NoError(t, err)
	require.Len(t, res, 2)
	for _, r := range res {
		require.Len(t, r.perProcess, 2)
		assert.InDelta(t, r.cpu, r.perProcess[0]+r.perProcess[1], 1e-9, "the CPU time is the processes' sum")
	}
	// Two rounds of one operation each, each round at least the floor in
	// both processes.
	assert.GreaterOrEqual(t, res[0].perProcess[0], floor.Seconds(), "this process's time")
	assert.GreaterOrEqual(t, res[0].perProcess[1], floor.Seconds(), "the child's time")
}
