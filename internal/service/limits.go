package service

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits bound what callers can make the service do. The zero value limits
// nothing but the length of a call (DefaultCallTimeout).
type Limits struct {
	// Rate is how many calls per second one identity may make, sustained;
	// Burst how many it may make at once after a pause. Every message a
	// caller sends on a stream counts as a call. Rate 0: no rate limit.
	Rate  float64
	Burst int
	// MaxInFlight caps API calls being served at once, unary calls and open
	// streams together. 0: no cap. Health checks are never counted.
	MaxInFlight int
	// CallTimeout is the longest a unary call may run: a longer deadline,
	// or none, is cut to it. 0: DefaultCallTimeout. Streams are bounded by
	// the connection's maximum age instead (MaxConnectionAge).
	CallTimeout time.Duration
}

const (
	// DefaultCallTimeout is the deadline of a unary call that sets none.
	DefaultCallTimeout = 30 * time.Second
	// MaxConnectionAge is how long a connection (and so any stream on it)
	// lives; clients reconnect transparently. It also bounds how long a
	// connection keeps an identity after its certificate or the CA bundle
	// has changed.
	MaxConnectionAge      = 30 * time.Minute
	maxConnectionAgeGrace = 5 * time.Minute
	// maxStreamsPerConnection bounds concurrent calls on one connection
	// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the gateway's pipe, which
	// carries every REST call, queues past it rather than failing.
	maxStreamsPerConnection = 1024
)

var (
	errRateLimited = status.Error(codes.ResourceExhausted, "rate limit exceeded for this caller; retry later")
	errTooBusy     = status.Error(codes.ResourceExhausted, "too many calls in flight; retry later")
)

// rateLimiter is a token bucket per identity.
type rateLimiter struct {
	rate, burst float64

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(max(burst, 1)), buckets: map[string]*bucket{}}
}

// allow takes a token from identity's bucket, if it has one.
func (l *rateLimiter) allow(identity string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[identity]
	if !ok {
		l.sweepLocked(now)
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[identity] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepLocked forgets the buckets that have filled up again: a new bucket
// would be the same. It runs when a new identity arrives, at most once per
// refill time, so memory is bounded by the identities active in the last
// two refill times.
func (l *rateLimiter) sweepLocked(now time.Time) {
	refill := time.Duration(l.burst / l.rate * float64(time.Second))
	if now.Sub(l.lastSweep) < refill {
		return
	}
	l.lastSweep = now
	for id, b := range l.buckets {
		if now.Sub(b.last) >= refill {
			delete(l.buckets, id)
		}
	}
}

// semaphore caps calls in flight without queueing: a call past the cap is
// refused at once, which keeps latency and memory flat under overload.
type semaphore chan struct{}

func (s semaphore) tryAcquire() bool {
	if s == nil {
		return true
	}
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s semaphore) release() {
	if s != nil {
		<-s
	}
}

// withCallTimeout cuts ctx's deadline to timeout.
func withCallTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}
