package etcdstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/etcdtest"
	"github.com/handshaked/handshaked/internal/keyvault"
	"github.com/handshaked/handshaked/internal/keyvault/etcdstore"
)

// One member of three stopped changes nothing; two stopped make every
// operation fail with ErrUnavailable and a message saying what to do,
// within the request timeout rather than the caller's deadline (never a
// hang); a member back restores quorum and the store serves again.
func TestQuorumLoss(t *testing.T) {
	c := etcdtest.Start(t, 3)
	s := open(t, c, "/quorum")
	// The caller's deadline is far: an error before it is the store's.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rev, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: check, Sealed: []byte("c")}}})
	require.NoError(t, err)
	require.NoError(t, s.Announce(ctx, rev))

	watchErr := make(chan error, 1)
	go func() { watchErr <- s.Watch(ctx, rev, func(keyvault.Change) {}) }()

	c.Stop(0)
	rev, err = s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("k")}}})
	require.NoError(t, err, "two of three members commit")
	got, err := s.Revision(ctx)
	require.NoError(t, err)
	assert.Equal(t, rev, got)
	require.NoError(t, s.Announce(ctx, rev))
	require.NoError(t, s.WaitApplied(ctx, rev))
	recs, _ := scan(t, s)
	assert.Len(t, recs, 2)

	c.Stop(1)
	ops := map[string]func() error{
		"Commit": func() error {
			_, err := s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("lost")}}})
			return err
		},
		"Revision":    func() error { _, err := s.Revision(ctx); return err },
		"Scan":        func() error { _, err := s.Scan(ctx, func(keyvault.Record) error { return nil }); return err },
		"Announce":    func() error { return s.Announce(ctx, rev+1) },
		"WaitApplied": func() error { return s.WaitApplied(ctx, rev+1) },
	}
	for name, op := range ops {
		err := op()
		require.ErrorIs(t, err, keyvault.ErrUnavailable, name)
		assert.NotErrorIs(t, err, context.DeadlineExceeded, "%s waited for the caller's deadline", name)
		assert.ErrorContains(t, err, "a majority of its members must be running and reachable", name)
		assert.ErrorContains(t, err, c.Endpoint(2), name)
	}
	select {
	case err := <-watchErr:
		assert.ErrorIs(t, err, keyvault.ErrUnavailable, "the watch ends when its member has no leader")
	case <-ctx.Done():
		t.Fatal("the watch still runs without quorum")
	}
	_, err = etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "/quorum", DialTimeout: time.Second})
	assert.ErrorIs(t, err, keyvault.ErrUnavailable, "Open without quorum")

	c.Restart(1)
	require.Eventually(t, func() bool { _, err := s.Revision(ctx); return err == nil }, time.Minute, 100*time.Millisecond)
	rev, err = s.Commit(ctx, keyvault.Write{Put: []keyvault.Record{{RecordRef: keyRef, Sealed: []byte("back")}}})
	require.NoError(t, err)
	recs, got = scan(t, s)
	assert.Equal(t, rev, got)
	assert.Equal(t, []byte("back"), recs[keyRef].Sealed)
}

// Open fails, within its dial timeout, with what it could not reach.
func TestOpenErrors(t *testing.T) {
	_, err := etcdstore.Open(t.Context(), etcdstore.Config{Prefix: "/p"})
	assert.ErrorIs(t, err, keyvault.ErrInvalidArgument)
	_, err = etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: []string{"http://127.0.0.1:1"}})
	assert.ErrorIs(t, err, keyvault.ErrInvalidArgument, "no prefix")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err = etcdstore.Open(ctx, etcdstore.Config{Endpoints: []string{"http://127.0.0.1:1"}, Prefix: "/p", DialTimeout: 500 * time.Millisecond})
	require.ErrorIs(t, err, keyvault.ErrUnavailable)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "http://127.0.0.1:1")
	assert.ErrorContains(t, err, "connection refused", "what the client saw")
}
