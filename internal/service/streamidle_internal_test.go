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
	for range 5 {
		w.wait(true)
		time.Sleep(timeout / 2)
		w.wait(false)
	}
	require.NoError(t, ctx.Err(), "the stream ended although no wait lasted the timeout")
	w.wait(true)
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
	stopped.wait(true)
	stopped.stop()
	time.Sleep(3 * timeout)
	assert.NoError(t, ctx.Err(), "a stopped watch ended the stream")

	assert.False(t, new(idleWatch).start(context.Background(), timeout, count))
}
