package testenv

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// WriteLoad runs writers goroutines that each call write with ids
// "<prefix><writer>-<n>" for n = 0, 1, … until Stop, keeping the ids whose
// write returned nil: the writes the store acknowledged. A failed write
// fails the test and ends its goroutine.
type WriteLoad struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	acked []string
}

// StartWriteLoad starts the writers; the caller must call Stop.
func StartWriteLoad(t testing.TB, writers int, prefix string, write func(id string, n int) error) *WriteLoad {
	l := &WriteLoad{stop: make(chan struct{})}
	for w := range writers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				id := fmt.Sprintf("%s%d-%d", prefix, w, n)
				if err := write(id, n); err != nil {
					t.Errorf("write %s: %v", id, err)
					return
				}
				l.mu.Lock()
				l.acked = append(l.acked, id)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// Acked returns the ids acknowledged so far.
func (l *WriteLoad) Acked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acked)
}

// Stop ends the writers, waits for them, and returns every acknowledged id.
func (l *WriteLoad) Stop() []string {
	close(l.stop)
	l.wg.Wait()
	return l.Acked()
}
