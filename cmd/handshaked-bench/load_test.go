package main

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
