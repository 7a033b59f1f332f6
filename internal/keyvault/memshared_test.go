package keyvault

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// memShared is a SharedStore in memory for the unit tests of the vault's
// following logic: one state, several clients (one per replica), the
// contract of the seam (a revision per commit, If, Watch in order,
// linearizable Revision, announcements that end when a client closes).
// The real shared store is etcdstore's; integration tests use it.
type memShared struct {
	mu      sync.Mutex
	rev     int64
	records map[RecordRef]Record
	log     []Change      // the change of each revision: log[rev-1]
	changed chan struct{} // closed and replaced at every change
	applied map[*memClient]int64
}

func newMemShared() *memShared {
	return &memShared{records: map[RecordRef]Record{}, changed: make(chan struct{}), applied: map[*memClient]int64{}}
}

// broadcast wakes every waiter. The caller holds mu.
func (s *memShared) broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// memClient is one replica's connection to a memShared.
type memClient struct {
	s *memShared
	// closed is set by Close, after which every call fails, as an etcd
	// client's do; usedAfterClose counts such calls, busy the calls in
	// flight and busyAtClose those Close found.
	closed               atomic.Bool
	usedAfterClose, busy atomic.Int64
	busyAtClose          atomic.Int64
	// down cuts the replica off the store (a partition): every call fails
	// with ErrUnavailable and watches break; its announcement stays, as an
	// etcd lease does until it expires.
	down atomic.Bool
	// scanDelay slows the replica's reads of the store, so that it follows
	// late.
	scanDelay atomic.Int64
	scans     atomic.Int64
	// scanned counts the records its reads returned, fullScans its reads
	// of the whole store (Scan).
	scanned, fullScans atomic.Int64
	// watchHeld keeps the replica's watch from reporting commits, as a
	// watch that lags behind the store.
	watchHeld atomic.Bool
	// watchFirst makes Revision answer a revision only once the replica's
	// watch has reported it (delivered): a watch never behind the store.
	watchFirst atomic.Bool
	delivered  atomic.Int64
	// revisionDelay slows Revision reads; revisions counts them.
	revisionDelay atomic.Int64
	revisions     atomic.Int64
	// formatZero makes the replica announce no store format, as one of a
	// release before formats; formatOne store format 1, as one of the
	// release before bucketed manifests.
	formatZero, formatOne atomic.Bool
}

func (s *memShared) client() *memClient { return &memClient{s: s} }

func (c *memClient) setDown(down bool) {
	c.down.Store(down)
	c.s.mu.Lock()
	c.s.broadcast()
	c.s.mu.Unlock()
}

// expireAnnouncement ends the replica's announcement, as etcd does when
// the replica's lease expires (its keep-alives did not reach etcd for the
// lease's TTL); the replica's next Announce makes a new one, as
// etcdstore's does under a new lease.
func (c *memClient) expireAnnouncement() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	delete(c.s.applied, c)
	c.s.broadcast()
}

var errMemDown = fmt.Errorf("memShared: cut off: %w", ErrUnavailable)

// use begins a call: it fails once the client is closed, and otherwise
// counts the call in flight until done is called.
func (c *memClient) use() (done func(), err error) {
	if c.closed.Load() {
		c.usedAfterClose.Add(1)
		return nil, fmt.Errorf("memShared: client used after Close: %w", ErrClosed)
	}
	c.busy.Add(1)
	return func() { c.busy.Add(-1) }, nil
}

func (c *memClient) Scan(ctx context.Context, fn func(Record) error) (int64, error) {
	c.fullScans.Add(1)
	rev, _, err := c.scanAfter(0, fn)
	return rev, err
}

func (c *memClient) ScanChanged(ctx context.Context, after int64, fn func(Record) error) (int64, int, error) {
	return c.scanAfter(after, fn)
}

// scanAfter reads the records written after revision after (all of them
// from 0), counting the reads and what they read.
func (c *memClient) scanAfter(after int64, fn func(Record) error) (int64, int, error) {
	done, err := c.use()
	if err != nil {
		return 0, 0, err
	}
	defer done()
	c.scans.Add(1)
	if d := time.Duration(c.scanDelay.Load()); d > 0 {
		time.Sleep(d)
	}
	if c.down.Load() {
		return 0, 0, errMemDown
	}
	c.s.mu.Lock()
	rev, total := c.s.rev, len(c.s.records)
	var records []Record
	for _, r := range c.s.records {
		if r.Revision > after {
			records = append(records, r)
		}
	}
	c.s.mu.Unlock()
	c.scanned.Add(int64(len(records)))
	for _, r := range records {
		if err := fn(r); err != nil {
			return 0, 0, err
		}
	}
	return rev, total, nil
}

func (c *memClient) Commit(ctx context.Context, w Write) (int64, error) {
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	if c.down.Load() {
		return 0, errMemDown
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for ref, want := range w.If {
		if s.records[ref].Revision != want {
			return 0, fmt.Errorf("memShared: %v: %w", ref, ErrConflict)
		}
	}
	for _, r := range w.Create {
		if _, ok := s.records[r.RecordRef]; ok {
			return 0, fmt.Errorf("memShared: %v: %w", r.RecordRef, ErrAlreadyExists)
		}
	}
	s.rev++
	ch := Change{Rev: s.rev, Known: true}
	for _, ref := range w.Erase {
		if _, ok := s.records[ref]; ok {
			ch.Erased = append(ch.Erased, ref)
		}
		delete(s.records, ref)
	}
	for _, r := range slices.Concat(w.Create, w.Put) {
		r.Sealed = slices.Clone(r.Sealed)
		r.Revision = s.rev
		s.records[r.RecordRef] = r
		ch.Put = append(ch.Put, r)
	}
	s.log = append(s.log, ch)
	s.broadcast()
	return s.rev, nil
}

func (c *memClient) Close() error {
	c.closed.Store(true)
	c.busyAtClose.Store(c.busy.Load())
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	delete(c.s.applied, c)
	c.s.broadcast()
	return nil
}

func (c *memClient) Watch(ctx context.Context, after int64, fn func(Change)) error {
	done, err := c.use()
	if err != nil {
		return err
	}
	defer done()
	c.delivered.Store(max(c.delivered.Load(), after))
	for {
		c.s.mu.Lock()
		log, changed := c.s.log, c.s.changed
		c.s.mu.Unlock()
		if c.down.Load() {
			return errMemDown
		}
		if after < int64(len(log)) && !c.watchHeld.Load() {
			for ; after < int64(len(log)); after++ {
				fn(log[after])
			}
			c.delivered.Store(after)
			c.s.mu.Lock()
			c.s.broadcast()
			c.s.mu.Unlock()
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *memClient) Revision(ctx context.Context) (int64, error) {
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	c.revisions.Add(1)
	if d := time.Duration(c.revisionDelay.Load()); d > 0 {
		time.Sleep(d)
	}
	for {
		if c.down.Load() {
			return 0, errMemDown
		}
		c.s.mu.Lock()
		rev, changed := c.s.rev, c.s.changed
		c.s.mu.Unlock()
		if !c.watchFirst.Load() || c.delivered.Load() >= rev {
			return rev, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (c *memClient) Announce(ctx context.Context, rev int64) error {
	done, err := c.use()
	if err != nil {
		return err
	}
	defer done()
	if c.down.Load() {
		return errMemDown
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.applied[c] = rev
	c.s.broadcast()
	return nil
}

func (c *memClient) MinFormat(ctx context.Context) (int, error) {
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	if c.down.Load() {
		return 0, errMemDown
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	lowest := StoreFormat
	for r := range c.s.applied {
		switch {
		case r.formatZero.Load():
			lowest = 0
		case r.formatOne.Load():
			lowest = min(lowest, 1)
		}
	}
	return lowest, nil
}

func (c *memClient) WaitApplied(ctx context.Context, rev int64) error {
	done, err := c.use()
	if err != nil {
		return err
	}
	defer done()
	if c.down.Load() {
		return errMemDown
	}
	for {
		c.s.mu.Lock()
		done := true
		for _, applied := range c.s.applied {
			done = done && applied >= rev
		}
		changed := c.s.changed
		c.s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
