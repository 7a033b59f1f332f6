package servicetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Load is calls made again and again by several goroutines, counted, while
// a test does something to the service under them.
type Load struct {
	t            testing.TB
	done, failed atomic.Int64
	stop         context.CancelFunc
	wg           sync.WaitGroup
}

// StartLoad calls call in n goroutines (g is the goroutine's number), each
// after the other, until Stop; an error counts as a failed call and is
// logged.
func StartLoad(t testing.TB, n int, call func(ctx context.Context, g int) error) *Load {
	ctx, stop := context.WithCancel(context.Background())
	l := &Load{t: t, stop: stop}
	for g := range n {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				err := call(ctx, g)
				if ctx.Err() != nil {
					return // cut short by Stop: neither done nor failed
				}
				if err != nil {
					l.failed.Add(1)
					t.Logf("call failed: %v", err)
				}
				l.done.Add(1)
			}
		})
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// Wait returns once n more calls have been made (within 30 s).
func (l *Load) Wait(n int64) {
	l.t.Helper()
	from := l.done.Load()
	deadline := time.Now().Add(30 * time.Second)
	for l.done.Load() < from+n {
		if time.Now().After(deadline) {
			l.t.Fatalf("servicetest: %d calls in 30 s, waiting for %d", l.done.Load()-from, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Stop ends the calls and waits for the goroutines; it returns how many
// calls were made and how many failed.
func (l *Load) Stop() (done, failed int64) {
	l.stop()
	l.wg.Wait()
	return l.done.Load(), l.failed.Load()
}

// Failed is how many calls have failed so far.
func (l *Load) Failed() int64 { return l.failed.Load() }

// KillInTurn kills the replicas one after the other under load, each
// restarted after load made 30 more calls, until enough says the kills so
// far did what the test is after (for instance caught a call in flight:
// most kills do) or after ten kills; it reports whether enough did. Each
// restarted replica must be back (back(r)) within 10 s before the next is
// killed.
func KillInTurn(t testing.TB, replicas []*Replica, load *Load, back func(*Replica) bool, enough func(kills int) bool) bool {
	t.Helper()
	i := 0
	for ; i < 10 && !enough(i); i++ {
		r := replicas[i%len(replicas)]
		load.Wait(30)
		r.Kill()
		load.Wait(30)
		r.Restart()
		restarted := time.Now()
		for !back(r) {
			if time.Since(restarted) > 10*time.Second {
				t.Fatalf("servicetest: replica %s not back 10 s after its restart", r.GRPCAddr)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("replica %s back %v after its restart", r.GRPCAddr, time.Since(restarted).Round(time.Millisecond))
	}
	return enough(i)
}
