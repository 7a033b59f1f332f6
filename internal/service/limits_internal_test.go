package service

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(10, 3) // 10/s, bursts of 3
	now := time.Unix(1000, 0)
	for i := range 3 {
		require.Zero(t, l.take("a", now), "call %d of the burst refused", i)
	}
	assert.Equal(t, 100*time.Millisecond, l.take("a", now), "call past the burst allowed, or told the wrong wait")
	assert.Zero(t, l.take("b", now), "another identity shares a's bucket")
	// A refusal takes nothing: the wait shrinks as time passes.
	assert.Equal(t, 1*time.Millisecond, l.take("a", now.Add(99*time.Millisecond)), "a token before 1/rate has passed")
	assert.Zero(t, l.take("a", now.Add(100*time.Millisecond)), "no token after 1/rate")
	// Sustained: over 10 s at most burst + 10*10 calls pass.
	passed := 0
	for ms := range 10_000 {
		if l.take("c", now.Add(time.Duration(ms)*time.Millisecond)) == 0 {
			passed++
		}
	}
	assert.GreaterOrEqual(t, passed, 100)
	assert.LessOrEqual(t, passed, 3+100)
}

// TestRateLimiterForgetsIdleCallers: memory is bounded by the identities
// active within the last two refill times, however many came before.
func TestRateLimiterForgetsIdleCallers(t *testing.T) {
	l := newRateLimiter(100, 100) // refill time 1 s
	now := time.Unix(1000, 0)
	for i := range 10_000 {
		l.take(fmt.Sprintf("caller-%d", i), now.Add(time.Duration(i)*time.Millisecond))
	}
	assert.LessOrEqual(t, len(l.buckets), 2100, "buckets held for callers of the last two seconds")
}

// TestCallerCaps: one caller cannot take more than its share, the others
// keep theirs until the ceiling, and what is released is free again and
// forgotten.
func TestCallerCaps(t *testing.T) {
	c := newCallerCaps(5, 2)
	require.True(t, c.acquire("a", 1))
	require.True(t, c.acquire("a", 1))
	assert.False(t, c.acquire("a", 1), "a third slot for a caller capped at 2")
	assert.True(t, c.acquire("b", 2), "b refused for a's calls")
	assert.True(t, c.acquire("c", 1))
	assert.False(t, c.acquire("d", 1), "past the ceiling of 5")
	assert.False(t, c.acquire("e", 3), "weight past the per-caller cap")
	c.release("a", 2)
	assert.NotContains(t, c.held, "a", "a caller holding nothing is remembered")
	assert.True(t, c.acquire("d", 1), "released slots not free")

	var none *callerCaps
	assert.Nil(t, newCallerCaps(0, 0))
	assert.True(t, none.acquire("x", 1<<40), "no caps refused")
	none.release("x", 1<<40)

	ceilingOnly := newCallerCaps(2, 0)
	assert.True(t, ceilingOnly.acquire("a", 2))
	assert.False(t, ceilingOnly.acquire("b", 1))
}

func TestQuarter(t *testing.T) {
	assert.Equal(t, 256, quarter(1024, 0))
	assert.Equal(t, 1, quarter(3, 0))
	assert.Equal(t, 7, quarter(1024, 7), "an explicit per-caller cap is kept")
	assert.Equal(t, 0, quarter(0, 0), "no ceiling, no per-caller cap")
}

func TestCallTimeout(t *testing.T) {
	ctx, cancel := withCallTimeout(context.Background(), time.Second)
	defer cancel()
	dl, ok := ctx.Deadline()
	require.True(t, ok, "no deadline set")
	assert.LessOrEqual(t, time.Until(dl), time.Second)
	long, cancelLong := context.WithTimeout(context.Background(), time.Hour)
	defer cancelLong()
	ctx, cancel2 := withCallTimeout(long, time.Second)
	defer cancel2()
	dl, _ = ctx.Deadline()
	assert.LessOrEqual(t, time.Until(dl), time.Second, "a longer deadline was kept")
	short, cancelShort := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelShort()
	ctx, _ = withCallTimeout(short, time.Second)
	assert.Equal(t, short, ctx, "a shorter deadline was replaced")
}

// TestCallerCapsDevelopmentCaller: development mode's single unidentified
// caller is held to the ceiling only.
func TestCallerCapsDevelopmentCaller(t *testing.T) {
	c := newCallerCaps(4, 1)
	for range 4 {
		require.True(t, c.acquire("", 1))
	}
	assert.False(t, c.acquire("", 1))
}

// TestRetryAfterSeconds: Retry-After is whole seconds, rounded up, at
// least 1 (0 would invite an immediate retry that is refused again).
func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0: 1, time.Nanosecond: 1, time.Second: 1, time.Second + time.Millisecond: 2, 99*time.Second + 1: 100,
	} {
		assert.Equal(t, want, retryAfterSeconds(d), "%v", d)
	}
}

// TestRefusalsSayWhenToRetry: a rate-limit refusal carries the wait it is
// given, the in-flight cap one second, and the stream cap nothing (no
// estimate is honest there).
func TestRefusalsSayWhenToRetry(t *testing.T) {
	d, ok := retryDelay(status.Convert(rateLimited(1500 * time.Millisecond)))
	assert.True(t, ok)
	assert.Equal(t, 1500*time.Millisecond, d)
	d, ok = retryDelay(status.Convert(errTooBusy))
	assert.True(t, ok)
	assert.Equal(t, time.Second, d)
	_, ok = retryDelay(status.Convert(errTooManyStreams))
	assert.False(t, ok)
	for _, err := range []error{rateLimited(time.Second), errTooBusy, errTooManyStreams} {
		assert.Equal(t, codes.ResourceExhausted, status.Code(err))
	}
}

// TestSessionInput: one handshake may be sent at most maxSessionInput bytes
// in all (INVALID_ARGUMENT past it: no valid handshake needs more), one
// caller a quarter of the input ceiling (RESOURCE_EXHAUSTED), and what an
// ended handshake held is free again.
func TestSessionInput(t *testing.T) {
	st := newSessionStore(HandshakeOptions{MaxSessions: 10, SessionTTL: time.Minute, MaxInput: 8 * maxSessionInput}, nil)
	var a, b int64
	require.NoError(t, st.take("edge", &a, maxSessionInput))
	assert.Equal(t, codes.InvalidArgument, status.Code(st.take("edge", &a, 1)), "one byte past the handshake's bound")
	assert.Equal(t, int64(maxSessionInput), a)
	require.NoError(t, st.take("edge", &b, maxSessionInput))
	var c int64
	assert.Equal(t, codes.ResourceExhausted, status.Code(st.take("edge", &c, 1)), "past the caller's quarter")
	require.NoError(t, st.take("admin", &c, maxSessionInput), "another caller's share")
	st.drop("edge", &a)
	assert.Zero(t, a)
	assert.NoError(t, st.take("edge", &a, maxSessionInput), "the ended handshake's bytes were not freed")
}
