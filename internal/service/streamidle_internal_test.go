package service

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleWatch: only the time the handler waits for a message counts,
// from the start of the current wait; a stopped watch ends nothing; a
// context not set up for it is refused.
func TestIdleWatch(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var refused atomic.Int32
	count := func() { refused.Add(1) }

	ctx := withIdleCancel(context.Background())
	var w idleWatch
	require.True(t, w.start(ctx, timeout, count))
	// Busy (not waiting) for several timeouts: not idle.
	time.Sleep(3 * timeout)
	require.NoError(t, ctx.Err(), "the stream ended while the handler was not waiting")
	// Waits shorter than the timeout, one after the other: not idle.
	// (A quarter of it: a sleep on a loaded machine overruns.)
	for range 10 {
		w.wait(receiving, true)
		time.Sleep(timeout / 4)
		w.wait(receiving, false)
	}
	require.NoError(t, ctx.Err(), "the stream ended although no wait lasted the timeout")
	w.wait(receiving, true)
	waited := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(50 * timeout):
		require.FailNow(t, "a wait of the timeout did not end the stream")
	}
	assert.GreaterOrEqual(t, time.Since(waited), timeout)
	assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded, "grpc-go's RecvMsg says what ctx.Err says")
	assert.True(t, w.ctx.idled.Load())
	assert.Equal(t, int32(1), refused.Load())
	w.stop()

	ctx = withIdleCancel(context.Background())
	var stopped idleWatch
	require.True(t, stopped.start(ctx, timeout, count))
	stopped.wait(receiving, true)
	stopped.stop()
	time.Sleep(3 * timeout)
	assert.NoError(t, ctx.Err(), "a stopped watch ended the stream")

	assert.False(t, new(idleWatch).start(context.Background(), timeout, count))
}

// TestIdleWatchSendAndReceive: a wait to send of the timeout ends the
// stream as a wait to receive does, and one that ended counts no more; on
// a pipeline stream both go on at once, and the end of one does not hide
// the other still waiting.
func TestIdleWatchSendAndReceive(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, c := range []struct {
		name        string
		long, short []waitKind // the wait that lasts; the ones that come and go meanwhile
	}{
		{"send", []waitKind{sending}, nil},
		{"receive, sends meanwhile", []waitKind{receiving}, []waitKind{sending}},
		{"send, receives meanwhile", []waitKind{sending}, []waitKind{receiving}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var refused atomic.Int32
			ctx := withIdleCancel(context.Background())
			var w idleWatch
			require.True(t, w.start(ctx, timeout, func() { refused.Add(1) }))
			defer w.stop()
			// A wait of each kind that ended, then none for two timeouts:
			// not idle.
			for _, k := range []waitKind{receiving, sending} {
				w.wait(k, true)
				time.Sleep(timeout / 4)
				w.wait(k, false)
			}
			time.Sleep(2 * timeout)
			require.NoError(t, ctx.Err(), "the stream ended after its waits had ended")
			for _, k := range c.long {
				w.wait(k, true)
			}
			waited := time.Now()
			for ctx.Err() == nil && time.Since(waited) < 50*timeout {
				for _, k := range c.short {
					w.wait(k, true)
					time.Sleep(timeout / 10)
					w.wait(k, false)
				}
				time.Sleep(timeout / 10)
			}
			require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded, "a wait of the timeout did not end the stream")
			assert.GreaterOrEqual(t, time.Since(waited), timeout)
			assert.Equal(t, int32(1), refused.Load())
		})
	}
}
