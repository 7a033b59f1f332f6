package service

import (
	"context"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Limits bound what callers can make the service do. Each cap holds per
// caller identity, under a ceiling for all callers together, so that no
// identity (one edge included) can take what the others need. The zero value
// limits nothing but the length of a call (DefaultCallTimeout), how long a
// stream may stay idle (DefaultStreamIdleTimeout) and, in production mode,
// callers without a certificate.
type Limits struct {
	// Rate is how many calls per second one identity may make, sustained;
	// Burst how many it may make at once after a pause. Every message a
	// caller sends on a stream counts as a call. Rate 0: no rate limit.
	Rate  float64
	Burst int
	// MaxInFlight caps unary API calls being served at once, for all
	// callers together; MaxInFlightPerCaller for one identity (0: a quarter
	// of MaxInFlight). 0: no cap. Health checks are never counted.
	MaxInFlight          int
	MaxInFlightPerCaller int
	// MaxStreams caps open API streams for all callers together;
	// MaxStreamsPerCaller for one identity (0: a quarter of MaxStreams).
	// 0: no cap.
	MaxStreams          int
	MaxStreamsPerCaller int
	// StreamIdleTimeout ends a stream on which the caller has sent nothing
	// for that long while the service waited for it with every request
	// answered (a stream whose requests are still worked on is not idle),
	// or has read nothing for that long while an answer waited to be sent
	// (flow control full). The caller gets DEADLINE_EXCEEDED with a message
	// that says which. 0: DefaultStreamIdleTimeout.
	StreamIdleTimeout time.Duration
	// UnauthenticatedRate is how many calls per second callers without a
	// client certificate may make, all of them together, in production mode
	// (one source address: a quarter of it). Each is refused UNAUTHENTICATED
	// and audited; past the rate they are refused RESOURCE_EXHAUSTED and
	// only counted, so they cannot fill the audit log's disk. 0:
	// DefaultUnauthenticatedRate.
	UnauthenticatedRate float64
	// MaxConnections caps the open connections of each listener (gRPC and
	// REST); past it new connections wait in the kernel's backlog. 0: no
	// cap.
	MaxConnections int
	// HandshakeTimeout bounds a gRPC connection's TLS handshake: a peer
	// that never finishes one costs a socket this long, not gRPC's 120 s.
	// 0: DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// CallTimeout is the longest a unary call may run: a longer deadline,
	// or none, is cut to it. 0: DefaultCallTimeout. Streams are bounded by
	// the idle timeout and the connection's maximum age (MaxConnectionAge).
	CallTimeout time.Duration
}

const (
	// DefaultCallTimeout is the deadline of a unary call that sets none.
	DefaultCallTimeout = 30 * time.Second
	// DefaultStreamIdleTimeout is how long a stream may wait for the
	// caller's next message, or for the caller to read its answers: a TLS
	// client that has not sent its next flight within it has gone.
	DefaultStreamIdleTimeout = time.Minute
	// DefaultUnauthenticatedRate bounds the audit entries of refused
	// callers without a certificate to a few kilobytes a second.
	DefaultUnauthenticatedRate = 20
	// MaxConnectionAge is how long a connection (and so any stream on it)
	// lives; clients reconnect transparently. It also bounds how long a
	// connection keeps an identity after its certificate or the CA bundle
	// has changed.
	MaxConnectionAge      = 30 * time.Minute
	maxConnectionAgeGrace = 5 * time.Minute
	// maxStreamsPerConnection bounds concurrent calls on one gRPC
	// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
	maxStreamsPerConnection = 1024
	// DefaultHandshakeTimeout is the longest a gRPC connection's TLS
	// handshake may take.
	DefaultHandshakeTimeout = 10 * time.Second
	// Streams of callers without an identity (health Watch, reflection):
	// per source address and in all.
	maxUnauthenticatedStreamsPerHost = 16
	maxUnauthenticatedStreams        = 256
)

var (
	// A call in flight usually ends within milliseconds: a second is a
	// fair wait for a slot.
	errTooBusy        = withRetryDelay(status.New(codes.ResourceExhausted, "too many calls in flight for this caller or in all; retry later"), time.Second)
	errTooManyStreams = status.Error(codes.ResourceExhausted, "too many open streams for this caller or in all; retry later")
)

// rateLimited is the refusal of a call past the caller's rate: it says, as a
// google.rpc.RetryInfo detail, how long until the caller's bucket holds a
// token again (REST answers it as Retry-After).
func rateLimited(retryAfter time.Duration) error {
	return withRetryDelay(status.New(codes.ResourceExhausted, "rate limit exceeded for this caller; retry later"), retryAfter)
}

func withRetryDelay(st *status.Status, d time.Duration) error {
	withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	if err != nil {
		return st.Err() // RetryInfo always marshals; the refusal stands without it
	}
	return withInfo.Err()
}

// retryDelay is the delay of st's RetryInfo detail, if it has one.
func retryDelay(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// quarter is the default per-caller share of a ceiling: at least four
// identities must collude to take all of it.
func quarter(total, perCaller int) int {
	if perCaller > 0 || total <= 0 {
		return perCaller
	}
	return max(total/4, 1)
}

// rateLimiter is a token bucket (golang.org/x/time/rate) per caller.
type rateLimiter struct {
	limit rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

func newRateLimiter(r float64, burst int) *rateLimiter {
	return &rateLimiter{limit: rate.Limit(r), burst: max(burst, 1), buckets: map[string]*rate.Limiter{}}
}

// take takes a token from caller's bucket and returns 0 if it has one;
// else it takes nothing and returns how long until the bucket holds one.
func (l *rateLimiter) take(caller string, now time.Time) time.Duration {
	l.mu.Lock()
	b, ok := l.buckets[caller]
	if !ok {
		l.sweepLocked(now)
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[caller] = b
	}
	l.mu.Unlock()
	return takeToken(b, now)
}

// takeToken takes a token from b and returns 0 if it has one; else it
// takes nothing and returns how long until b holds one. A reservation
// (unlike AllowN) says that time, and is given back when it is too far.
func takeToken(b *rate.Limiter, now time.Time) time.Duration {
	r := b.ReserveN(now, 1)
	if !r.OK() {
		return time.Hour // burst 0 or rate 0: never; newRateLimiter prevents it
	}
	d := r.DelayFrom(now)
	if d > 0 {
		r.CancelAt(now)
	}
	return d
}

// sweepLocked forgets the buckets that have filled up again: a new bucket
// would be the same. It runs when a new caller arrives, at most once per
// refill time, so memory is bounded by the callers active in the last two
// refill times.
func (l *rateLimiter) sweepLocked(now time.Time) {
	refill := time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
	if now.Sub(l.lastSweep) < refill {
		return
	}
	l.lastSweep = now
	for id, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, id)
		}
	}
}

// callerCaps caps how much each caller holds at once (calls in flight, open
// streams, bytes), under a ceiling for all callers together. Past either,
// acquire fails at once rather than queueing, which keeps latency and memory
// flat under overload. The ceiling is a golang.org/x/sync semaphore; the
// per-caller counts are a map, so that callers holding nothing are
// forgotten. The caller "" is development mode's only, unidentified,
// caller: the ceiling alone applies to it.
type callerCaps struct {
	all       *semaphore.Weighted // nil: no ceiling
	perCaller int64               // 0: no per-caller cap

	mu   sync.Mutex
	held map[string]int64
}

// newCallerCaps returns nil (no caps) when both are 0.
func newCallerCaps(total, perCaller int64) *callerCaps {
	if total <= 0 && perCaller <= 0 {
		return nil
	}
	c := &callerCaps{perCaller: perCaller, held: map[string]int64{}}
	if total > 0 {
		c.all = semaphore.NewWeighted(total)
	}
	return c
}

func (c *callerCaps) acquire(caller string, n int64) bool {
	if c == nil {
		return true
	}
	if c.perCaller > 0 && caller != "" {
		c.mu.Lock()
		if c.held[caller]+n > c.perCaller {
			c.mu.Unlock()
			return false
		}
		c.held[caller] += n
		c.mu.Unlock()
	}
	if c.all != nil && !c.all.TryAcquire(n) {
		c.releaseCaller(caller, n)
		return false
	}
	return true
}

func (c *callerCaps) release(caller string, n int64) {
	if c == nil || n == 0 {
		return
	}
	if c.all != nil {
		c.all.Release(n)
	}
	c.releaseCaller(caller, n)
}

func (c *callerCaps) releaseCaller(caller string, n int64) {
	if c.perCaller <= 0 || caller == "" {
		return
	}
	c.mu.Lock()
	if c.held[caller] -= n; c.held[caller] <= 0 {
		delete(c.held, caller)
	}
	c.mu.Unlock()
}

// peerHost is the host part of a peer address, what callers without an
// identity are told apart by.
func peerHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// withCallTimeout cuts ctx's deadline to timeout.
func withCallTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}
