package procstat

import (
	"crypto/sha256"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestCPUTime: a process's CPU time, read from /proc, agrees with what
// getrusage says of the same process (this one), after it has used some: a
// misread field (start time, children's time, a clock tick of the wrong
// size) would not.
func TestCPUTime(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	sum := sha256.Sum256(nil)
	for start := rusage(); rusage()-start < 300*time.Millisecond; {
		for range 1000 {
			sum = sha256.Sum256(sum[:])
		}
	}
	fromProc, err := CPUTime(os.Getpid())
	require.NoError(t, err)
	fromRusage := rusage()
	// /proc counts in ticks of 10 ms and was read first.
	assert.InDelta(t, fromRusage.Seconds(), fromProc.Seconds(), 0.05, "/proc %v, getrusage %v", fromProc, fromRusage)
}

// TestCPUTimeNoProcess: a process that does not exist is an error, not 0.
func TestCPUTimeNoProcess(t *testing.T) {
	_, err := CPUTime(-1)
	assert.Error(t, err)
}

// TestSchedulingOf: a thread that sleeps 50 times adds at least 50
// wake-ups to its process; three times as many threads as CPUs, each busy
// for 200 ms, spend together at least twice 200 ms per CPU waiting for
// one (what they did not run), more than they can have run.
func TestSchedulingOf(t *testing.T) {
	before, err := SchedulingOf(os.Getpid())
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for range 50 {
			ts := syscall.NsecToTimespec(int64(time.Millisecond))
			syscall.Nanosleep(&ts, nil)
		}
		close(done)
	}()
	<-done
	slept, err := SchedulingOf(os.Getpid())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, slept.Sub(before).Wakeups, int64(50), "wake-ups")

	busy := 3 * runtime.NumCPU()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(busy))
	var wg sync.WaitGroup
	for range busy {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			sum := sha256.Sum256(nil)
			for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
				sum = sha256.Sum256(sum[:])
			}
		})
	}
	wg.Wait()
	after, err := SchedulingOf(os.Getpid())
	require.NoError(t, err)
	least := time.Duration(busy-runtime.NumCPU()) * 200 * time.Millisecond * 3 / 4 // a quarter off for clock ticks and start-up
	assert.GreaterOrEqual(t, after.Sub(slept).RunQueueWait, least, "run-queue wait of %d busy threads on %d CPUs", busy, runtime.NumCPU())

	_, err = SchedulingOf(1 << 30)
	assert.Error(t, err, "no such process")
}
