package edge

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// idleWorkers is how many goroutines of w wait for work.
func idleWorkers(w *workers) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}

// TestWorkersReuseGoroutines: a finished goroutine runs the next function
// (no new goroutine per connection), the last to finish first; at most
// maxIdle wait, and stop ends them all.
func TestWorkersReuseGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	w := &workers{maxIdle: 2}
	// Each waiting goroutine's channel identifies it.
	ran := make(chan struct{}, 1)
	job := func() { ran <- struct{}{} }
	w.run(job)
	<-ran
	require.Eventually(t, func() bool { return idleWorkers(w) == 1 }, 5*time.Second, time.Millisecond)
	w.mu.Lock()
	first := w.idle[0]
	w.mu.Unlock()
	for range 10 {
		w.run(job)
		<-ran
		require.Eventually(t, func() bool { return idleWorkers(w) == 1 }, 5*time.Second, time.Millisecond)
		w.mu.Lock()
		assert.Equal(t, first, w.idle[0], "the waiting goroutine ran the job")
		w.mu.Unlock()
	}

	// Five at once: five goroutines, of which two stay.
	var started, release sync.WaitGroup
	block := make(chan struct{})
	for range 5 {
		started.Add(1)
		release.Add(1)
		w.run(func() {
			started.Done()
			<-block
			release.Done()
		})
	}
	started.Wait()
	assert.Equal(t, 0, idleWorkers(w))
	close(block)
	release.Wait()
	require.Eventually(t, func() bool { return idleWorkers(w) == 2 }, 5*time.Second, time.Millisecond)

	// The last to finish runs next.
	w.mu.Lock()
	last := w.idle[1]
	w.mu.Unlock()
	w.run(job)
	<-ran
	require.Eventually(t, func() bool { return idleWorkers(w) == 2 }, 5*time.Second, time.Millisecond)
	w.mu.Lock()
	assert.Equal(t, last, w.idle[1])
	w.mu.Unlock()

	w.stop()
	assert.Equal(t, 0, idleWorkers(w))
	w.run(func() {}) // after stop: runs, and its goroutine ends
	// Polled here: assert.Eventually runs its condition on goroutines of
	// its own.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines left after stop")
}
