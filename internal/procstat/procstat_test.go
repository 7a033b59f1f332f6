package procstat

import (
	"crypto/sha256"
	"os"
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
