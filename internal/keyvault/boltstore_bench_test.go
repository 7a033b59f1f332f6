package keyvault

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchBolt is a bolt store in a temporary directory.
func benchBolt(b *testing.B) *BoltStore {
	b.Helper()
	s, err := OpenBolt(filepath.Join(b.TempDir(), "vault.db"))
	require.NoError(b, err)
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkBoltCommit is one commit in place of a small record, fsynced as
// every commit is, with the look-up of which file the store's path names
// (current) that precedes it; BenchmarkBoltPathCheck is that look-up
// alone, what a commit pays to never land in a file no name reaches.
func BenchmarkBoltCommit(b *testing.B) {
	s := benchBolt(b)
	w := Write{Put: []Record{{RecordRef: ticketKeyRef(1), Sealed: make([]byte, 100)}}}
	for b.Loop() {
		_, err := s.Commit(ctx, w)
		require.NoError(b, err)
	}
}

func BenchmarkBoltPathCheck(b *testing.B) {
	s := benchBolt(b)
	for b.Loop() {
		require.NoError(b, s.current())
	}
}
