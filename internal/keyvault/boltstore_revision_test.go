package keyvault

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scanRevisions returns the store revision and every record's revision.
func scanRevisions(t *testing.T, s Store) (int64, map[RecordRef]int64) {
	t.Helper()
	revs := map[RecordRef]int64{}
	rev, err := s.Scan(ctx, func(r Record) error {
		revs[r.RecordRef] = r.Revision
		return nil
	})
	require.NoError(t, err)
	return rev, revs
}

// TestBoltRevisions: every commit is the next store revision, each record
// has the revision of the commit that last wrote it, across a reopen and
// across a commit that erases (which rewrites the file).
func TestBoltRevisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vault.db")
	s, err := OpenBolt(path)
	require.NoError(t, err)
	a, b := RecordRef{Kind: RecordKey, ID: "a"}, RecordRef{Kind: RecordKey, ID: "b"}
	rev0, _ := scanRevisions(t, s)

	rev1, err := s.Commit(ctx, Write{Create: []Record{{RecordRef: a, Sealed: []byte("a1")}}})
	require.NoError(t, err)
	assert.Equal(t, rev0+1, rev1)
	rev2, err := s.Commit(ctx, Write{Put: []Record{{RecordRef: b, Sealed: []byte("b1")}}})
	require.NoError(t, err)
	assert.Equal(t, rev1+1, rev2)

	rev, revs := scanRevisions(t, s)
	assert.Equal(t, rev2, rev)
	assert.Equal(t, map[RecordRef]int64{a: rev1, b: rev2}, revs)

	require.NoError(t, s.Close())
	s, err = OpenBolt(path)
	require.NoError(t, err)
	defer s.Close()
	rev, revs = scanRevisions(t, s)
	assert.Equal(t, rev2, rev, "after a reopen")
	assert.Equal(t, map[RecordRef]int64{a: rev1, b: rev2}, revs, "after a reopen")

	rev3, err := s.Commit(ctx, Write{Erase: []RecordRef{b}, Put: []Record{{RecordRef: a, Sealed: []byte("a2")}}})
	require.NoError(t, err)
	assert.Equal(t, rev2+1, rev3)
	rev, revs = scanRevisions(t, s)
	assert.Equal(t, rev3, rev, "after a rewrite")
	assert.Equal(t, map[RecordRef]int64{a: rev3}, revs, "after a rewrite")

	// A record erased and created again starts afresh.
	rev4, err := s.Commit(ctx, Write{Create: []Record{{RecordRef: b, Sealed: []byte("b2")}}})
	require.NoError(t, err)
	_, revs = scanRevisions(t, s)
	assert.Equal(t, map[RecordRef]int64{a: rev3, b: rev4}, revs)
}

// TestBoltIf: a write with If applies only if every record named has the
// revision given (0: absent); otherwise it fails with ErrConflict and
// changes nothing, on both commit paths (in place and rewriting).
func TestBoltIf(t *testing.T) {
	s, err := OpenBolt(filepath.Join(t.TempDir(), "vault.db"))
	require.NoError(t, err)
	defer s.Close()
	a, b, c := RecordRef{Kind: RecordKey, ID: "a"}, RecordRef{Kind: RecordKey, ID: "b"}, RecordRef{Kind: RecordKey, ID: "c"}
	revA, err := s.Commit(ctx, Write{Put: []Record{{RecordRef: a, Sealed: []byte("a1")}}, If: map[RecordRef]int64{a: 0}})
	require.NoError(t, err)
	_, err = s.Commit(ctx, Write{Put: []Record{{RecordRef: a, Sealed: []byte("a2")}}, If: map[RecordRef]int64{a: 0}})
	assert.ErrorIs(t, err, ErrConflict, "a exists")
	revB, err := s.Commit(ctx, Write{Put: []Record{{RecordRef: b, Sealed: []byte("b1")}}})
	require.NoError(t, err)

	before, beforeRevs := scanRevisions(t, s)
	for name, w := range map[string]Write{
		"put, stale revision":   {Put: []Record{{RecordRef: c, Sealed: []byte("c")}}, If: map[RecordRef]int64{a: revA, b: revA}},
		"put, absent named":     {Put: []Record{{RecordRef: c, Sealed: []byte("c")}}, If: map[RecordRef]int64{c: revB}},
		"erase, stale revision": {Erase: []RecordRef{a}, Put: []Record{{RecordRef: c, Sealed: []byte("c")}}, If: map[RecordRef]int64{b: revA}},
		"erase, present as 0":   {Erase: []RecordRef{a}, If: map[RecordRef]int64{b: 0}},
	} {
		_, err := s.Commit(ctx, w)
		assert.ErrorIs(t, err, ErrConflict, name)
		rev, revs := scanRevisions(t, s)
		assert.Equal(t, before, rev, name)
		assert.Equal(t, beforeRevs, revs, name)
	}

	_, err = s.Commit(ctx, Write{Put: []Record{{RecordRef: c, Sealed: []byte("c")}}, If: map[RecordRef]int64{a: revA, b: revB, c: 0}})
	require.NoError(t, err)
	revE, err := s.Commit(ctx, Write{Erase: []RecordRef{a}, If: map[RecordRef]int64{a: revA, b: revB}})
	require.NoError(t, err)
	_, revs := scanRevisions(t, s)
	assert.NotContains(t, revs, a)
	assert.Less(t, revB, revE)
}
