package service

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// feed is recv for pipeline over a fixed list of requests, then end.
func feed(reqs []int, end error) func() (int, error) {
	var mu sync.Mutex
	return func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(reqs) == 0 {
			return 0, end
		}
		r := reqs[0]
		reqs = reqs[1:]
		return r, nil
	}
}

// TestPipelineConcurrent: the first request's work finishes only once
// every other request's work has started, so a pipeline answering one
// request at a time never gets past it (the test's deadline fails it);
// the answers still go out in request order.
func TestPipelineConcurrent(t *testing.T) {
	const n = 4
	var started sync.WaitGroup
	started.Add(n - 1)
	allStarted := make(chan struct{})
	go func() { started.Wait(); close(allStarted) }()
	var sent []int
	done := make(chan error, 1)
	go func() {
		done <- pipeline(context.Background(), n, feed([]int{0, 1, 2, 3}, io.EOF), func(r int) int {
			if r == 0 {
				<-allStarted
			} else {
				started.Done()
			}
			return r * 10
		}, func(a int) error { sent = append(sent, a); return nil })
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first request waits for the others, which never started: requests are worked on one at a time")
	}
	assert.Equal(t, []int{0, 10, 20, 30}, sent, "answers in request order")
}

// TestPipelineEnds: a failed recv ends the pipeline with its error (nil
// for io.EOF) after the answers due are sent; a failed send ends it with
// the send's error and sends nothing more.
func TestPipelineEnds(t *testing.T) {
	double := func(r int) int { return 2 * r }
	var sent []int
	record := func(a int) error { sent = append(sent, a); return nil }

	require.NoError(t, pipeline(context.Background(), 2, feed([]int{1, 2, 3}, io.EOF), double, record))
	assert.Equal(t, []int{2, 4, 6}, sent)

	sent = nil
	refused := errors.New("refused")
	assert.ErrorIs(t, pipeline(context.Background(), 2, feed([]int{1, 2, 3}, refused), double, record), refused)
	assert.Equal(t, []int{2, 4, 6}, sent, "answers before the refusal are sent")

	broken := errors.New("broken")
	calls := 0
	err := pipeline(context.Background(), 2, feed([]int{1, 2, 3}, io.EOF), double, func(int) error { calls++; return broken })
	assert.ErrorIs(t, err, broken)
	assert.Equal(t, 1, calls, "nothing is sent after a failed send")
}

// TestPipelineBounded: while the caller does not read (send blocks), at
// most n requests are taken on and one more received; once it reads
// again, every answer goes out, in order.
func TestPipelineBounded(t *testing.T) {
	const n, total = 3, 20
	received := make(chan int, total)
	next := 0
	recv := func() (int, error) {
		if next == total {
			return 0, io.EOF
		}
		next++
		received <- next
		return next, nil
	}
	reading := make(chan struct{})
	var sent []int
	send := func(a int) error {
		<-reading
		sent = append(sent, a)
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- pipeline(context.Background(), n, recv, func(r int) int { return r }, send) }()
	for range n + 1 {
		<-received
	}
	select {
	case r := <-received:
		require.FailNow(t, "read past the bound", "request %d received while %d answers wait to be sent", r, n)
	case <-time.After(200 * time.Millisecond):
	}
	close(reading)
	require.NoError(t, <-done)
	want := make([]int, total)
	for i := range want {
		want[i] = i + 1
	}
	assert.Equal(t, want, sent)
}
