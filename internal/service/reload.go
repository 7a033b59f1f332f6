package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/handshaked/handshaked/internal/audit"
)

// DefaultReloadInterval is how often the TLS files and the policy file are
// checked for changes.
const DefaultReloadInterval = 10 * time.Second

// reloadable is a set of files loaded together, and how to load them.
type reloadable struct {
	what  string // for logs and the audit log: "tls", "policy"
	paths []string
	load  func() error
	seen  []os.FileInfo // as they were when last loaded
}

// stat returns the files' current state; a missing file is nil.
func stat(paths []string) []os.FileInfo {
	out := make([]os.FileInfo, len(paths))
	for i, p := range paths {
		out[i], _ = os.Stat(p)
	}
	return out
}

// unchanged compares what a poll can see: which file a path resolves to
// (a Kubernetes secret update swaps a symlink), its size and its time.
func unchanged(a, b []os.FileInfo) bool {
	for i := range a {
		switch {
		case a[i] == nil || b[i] == nil:
			if a[i] != b[i] {
				return false
			}
		case !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()):
			return false
		}
	}
	return true
}

// reloader loads files again on change (polled) or on demand (SIGHUP).
type reloader struct {
	audit *audit.Log // nil: none

	mu    sync.Mutex
	items []*reloadable
}

func (r *reloader) add(what string, paths []string, load func() error) {
	r.items = append(r.items, &reloadable{what: what, paths: paths, load: load, seen: stat(paths)})
}

// reload loads item again, if force or its files changed. The files are
// looked at before loading, so a change made during the load is seen by
// the next poll. A load that fails leaves the old configuration in force
// and the files marked unseen, so the next poll tries again (and logs
// again) until they are fixed.
func (r *reloader) reload(it *reloadable, force bool) error {
	now := stat(it.paths)
	if !force && unchanged(now, it.seen) {
		return nil
	}
	start := time.Now()
	err := it.load()
	if err == nil {
		it.seen = now
		slog.Info("reloaded", "what", it.what)
	} else {
		err = fmt.Errorf("reloading %s (the previous configuration stays in force): %w", it.what, err)
		slog.Error("reload failed", "what", it.what, "err", err)
	}
	if r.audit != nil {
		e := &audit.Entry{Time: start.UTC(), Operation: it.what + ".reload", Outcome: "OK",
			DurationMS: float64(time.Since(start).Microseconds()) / 1000}
		if err != nil {
			e.Outcome, e.Detail = "FAILED_PRECONDITION", err.Error()
		}
		if werr := r.audit.Write(e); werr != nil {
			slog.Error("audit entry not written", "err", werr, "operation", e.Operation)
		}
	}
	return err
}

func (r *reloader) all(force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, it := range r.items {
		errs = append(errs, r.reload(it, force))
	}
	return errors.Join(errs...)
}

// poll reloads what changed every interval until ctx is done.
func (r *reloader) poll(ctx context.Context, interval time.Duration) {
	everyTick(ctx, interval, func() {
		r.all(false) // failures are logged and audited
	})
}

// everyTick calls fn every interval until ctx is done; the background
// loops of the server (file reloads, ticket key maintenance) share it.
func everyTick(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Reload is what SIGHUP does: load the TLS files and the policy again, and
// reopen the audit log file (for an operator who has rotated it). Whatever
// fails to load leaves its previous configuration in force; calls and
// connections in flight are not disturbed.
func (s *Server) Reload() error {
	var errs []error
	if s.audit != nil {
		if err := s.audit.Reopen(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.reloader.all(true))
	return errors.Join(errs...)
}
