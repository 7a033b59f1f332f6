package service

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(10, 3) // 10/s, bursts of 3
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !l.allow("a", now) {
			t.Fatalf("call %d of the burst refused", i)
		}
	}
	if l.allow("a", now) {
		t.Fatal("call past the burst allowed")
	}
	if !l.allow("b", now) {
		t.Fatal("another identity shares a's bucket")
	}
	if l.allow("a", now.Add(99*time.Millisecond)) {
		t.Fatal("a token before 1/rate has passed")
	}
	if !l.allow("a", now.Add(100*time.Millisecond)) {
		t.Fatal("no token after 1/rate")
	}
	// Sustained: over 10 s at most burst + 10*10 calls pass.
	passed := 0
	for ms := range 10_000 {
		if l.allow("c", now.Add(time.Duration(ms)*time.Millisecond)) {
			passed++
		}
	}
	if passed > 3+100 || passed < 100 {
		t.Fatalf("%d calls passed in 10 s at 10/s with burst 3", passed)
	}
}

// TestRateLimiterForgetsIdleCallers: memory is bounded by the identities
// active within the last two refill times, however many came before.
func TestRateLimiterForgetsIdleCallers(t *testing.T) {
	l := newRateLimiter(100, 100) // refill time 1 s
	now := time.Unix(1000, 0)
	for i := range 10_000 {
		l.allow(fmt.Sprintf("caller-%d", i), now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(l.buckets); n > 2100 {
		t.Fatalf("%d buckets held for callers of the last two seconds", n)
	}
}

func TestSemaphore(t *testing.T) {
	s := make(semaphore, 2)
	if !s.tryAcquire() || !s.tryAcquire() {
		t.Fatal("cap of 2 refused a call")
	}
	if s.tryAcquire() {
		t.Fatal("third call allowed")
	}
	s.release()
	if !s.tryAcquire() {
		t.Fatal("slot not freed")
	}
	var none semaphore
	if !none.tryAcquire() {
		t.Fatal("no cap refused a call")
	}
	none.release()
}

func TestCallTimeout(t *testing.T) {
	ctx, cancel := withCallTimeout(context.Background(), time.Second)
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > time.Second {
		t.Fatalf("no deadline set: %v %v", dl, ok)
	}
	long, cancelLong := context.WithTimeout(context.Background(), time.Hour)
	defer cancelLong()
	ctx, cancel2 := withCallTimeout(long, time.Second)
	defer cancel2()
	if dl, _ := ctx.Deadline(); time.Until(dl) > time.Second {
		t.Fatal("a longer deadline was kept")
	}
	short, cancelShort := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelShort()
	if ctx, _ := withCallTimeout(short, time.Second); ctx != short {
		t.Fatal("a shorter deadline was replaced")
	}
}
