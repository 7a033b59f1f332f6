package service

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fires waits for w to find its stream idle, at most 50 timeouts.
func fires(t *testing.T, w *idleWatch) {
	t.Helper()
	select {
	case <-w.idled:
	case <-time.After(50 * w.timeout):
		require.FailNow(t, "a wait of the timeout did not end the stream")
	}
}

// TestIdleWatch: only the time the handler waits for a message counts,
// from the start of the current wait; a stopped watch ends nothing.
func TestIdleWatch(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var refused atomic.Int32
	count := func() { refused.Add(1) }

	var w idleWatch
	w.start(timeout, count)
	// Busy (not waiting) for several timeouts: not idle.
	time.Sleep(3 * timeout)
	require.Zero(t, refused.Load(), "the stream ended while the handler was not waiting")
	// Waits shorter than the timeout, one after the other, longer than it
	// together: not idle. On a watch of a longer timeout: a wait that
	// sleeps must stay shorter than it, and a sleep on a loaded machine
	// overruns (TestIdleWatchSendAndReceive's by more than the
	// three quarters of 100ms left, on CI).
	var short idleWatch
	short.start(10*timeout, count)
	for range 10 {
		short.wait(receiving, true)
		time.Sleep(short.timeout / 8)
		short.wait(receiving, false)
	}
	short.stop()
	require.Zero(t, refused.Load(), "the stream ended although no wait lasted the timeout")
	w.wait(receiving, true)
	waited := time.Now()
	fires(t, &w)
	assert.GreaterOrEqual(t, time.Since(waited), timeout)
	assert.Equal(t, int32(1), refused.Load())
	err := w.err()
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	assert.Equal(t, "stream idle for longer than the service's stream idle timeout (100ms): the caller sent no message", status.Convert(err).Message())
	w.stop()

	var stopped idleWatch
	stopped.start(timeout, count)
	stopped.wait(receiving, true)
	stopped.stop()
	time.Sleep(3 * timeout)
	assert.Equal(t, int32(1), refused.Load(), "a stopped watch ended the stream")
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
		why         string
	}{
		{"send", []waitKind{sending}, nil, "the caller read nothing sent to it"},
		{"receive, sends meanwhile", []waitKind{receiving}, []waitKind{sending}, "the caller sent no message"},
		{"send, receives meanwhile", []waitKind{sending}, []waitKind{receiving}, "the caller read nothing sent to it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var refused atomic.Int32
			var w idleWatch
			w.start(timeout, func() { refused.Add(1) })
			defer w.stop()
			// A wait of each kind that ended, then none for two timeouts:
			// not idle. (Ended at once: a wait that slept, on a loaded
			// machine, could itself outlast the timeout.)
			for _, k := range []waitKind{receiving, sending} {
				w.wait(k, true)
				w.wait(k, false)
			}
			time.Sleep(2 * timeout)
			require.Zero(t, refused.Load(), "the stream ended after its waits had ended")
			for _, k := range c.long {
				w.wait(k, true)
			}
			waited := time.Now()
			for refused.Load() == 0 && time.Since(waited) < 50*timeout {
				// Ended at once too: one that slept through a stall of
				// the machine would itself have lasted the timeout when
				// the (late) check came, and be the one found idle.
				for _, k := range c.short {
					w.wait(k, true)
					w.wait(k, false)
				}
				time.Sleep(timeout / 10)
			}
			fires(t, &w)
			assert.GreaterOrEqual(t, time.Since(waited), timeout)
			assert.Equal(t, int32(1), refused.Load())
			assert.ErrorContains(t, w.err(), "stream idle for longer than the service's stream idle timeout (100ms): "+c.why)
		})
	}
}

// TestIdleWatchOwed: a wait for the caller's next message while the
// handler owes it answers (requests still worked on) is not idle however
// long it lasts; once the last is answered, the wait counts from then.
func TestIdleWatchOwed(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var refused atomic.Int32
	var w idleWatch
	w.start(timeout, func() { refused.Add(1) })
	defer w.stop()
	ctx := context.WithValue(context.Background(), idleWatchKey{}, &w)
	work := streamWork(ctx)
	require.Same(t, &w, work, "the handler finds the watch by its stream's context")
	assert.Nil(t, streamWork(context.Background()), "a stream without a watch")
	streamWork(context.Background()).owe(1) // owes nothing to nobody

	// Two requests taken on, the handler waiting for a third meanwhile.
	work.owe(1)
	work.owe(1)
	w.wait(receiving, true)
	time.Sleep(3 * timeout)
	work.owe(-1)
	time.Sleep(3 * timeout)
	require.Zero(t, refused.Load(), "the stream ended while answers were owed")
	work.owe(-1)
	answered := time.Now()
	fires(t, &w)
	assert.GreaterOrEqual(t, time.Since(answered), timeout, "ended before the timeout from the last answer")
	assert.Equal(t, int32(1), refused.Load())
}
