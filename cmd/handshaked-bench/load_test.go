package main

import (
	"crypto/sha256"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProcessCPU: another process's CPU time, read from /proc, agrees with
// what getrusage says of the same process (this one), after it has used
// some: a misread field (start time, children's time, a clock tick of the
// wrong size) would not.
func TestProcessCPU(t *testing.T) {
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
	fromProc, err := processCPU(os.Getpid())
	require.NoError(t, err)
	fromRusage := rusage()
	// /proc counts in ticks of 10 ms and was read first.
	assert.InDelta(t, fromRusage.Seconds(), fromProc.Seconds(), 0.05, "/proc %v, getrusage %v", fromProc, fromRusage)
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := range 100 {
		lat = append(lat, time.Duration(i+1)*time.Millisecond)
	}
	assert.Equal(t, 51*time.Millisecond, percentile(lat, 0.50))
	assert.Equal(t, 100*time.Millisecond, percentile(lat, 0.99))
	assert.Equal(t, time.Duration(0), percentile(nil, 0.99))
}
