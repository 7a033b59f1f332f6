package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func readLines(t *testing.T, path string) []Entry {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e), "line %q", sc.Text())
		out = append(out, e)
	}
	require.NoError(t, sc.Err())
	return out
}

func operations(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Operation)
	}
	return out
}

func requireMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, want, fi.Mode().Perm(), "mode of %s", path)
}

// TestConcurrentWritesAreWholeLines: many writers, every line parses and
// none is lost.
func TestConcurrentWritesAreWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	require.NoError(t, err)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				e := &Entry{Time: time.Now(), Caller: fmt.Sprintf("w%d", w), Operation: "KeyVault.Sign", Key: "k",
					Detail: strings.Repeat("x", 100*(i%7)), Outcome: "OK"}
				assert.NoError(t, l.Write(e))
			}
		})
	}
	wg.Wait()
	require.NoError(t, l.Close())
	lines := readLines(t, path)
	assert.Len(t, lines, writers*each)
	perWriter := map[string]int{}
	for _, e := range lines {
		perWriter[e.Caller]++
	}
	for w := range writers {
		assert.Equal(t, each, perWriter[fmt.Sprintf("w%d", w)], "entries of writer %d", w)
	}
	requireMode(t, path, 0o600)
}

// TestReopenAfterRotation: the operator moves the file away and asks for a
// reopen; later entries go to a new file at the old path. A reopen that
// fails keeps the log writing to the file it had.
func TestReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path)
	require.NoError(t, err)
	defer l.Close()
	write := func(op string) { require.NoError(t, l.Write(&Entry{Operation: op, Outcome: "OK"})) }
	write("before")
	require.NoError(t, os.Rename(path, path+".1"))
	write("after-move") // still the moved file
	require.NoError(t, l.Reopen())
	write("after-reopen")
	assert.Equal(t, []string{"before", "after-move"}, operations(readLines(t, path+".1")), "rotated file")
	assert.Equal(t, []string{"after-reopen"}, operations(readLines(t, path)), "new file")
	requireMode(t, path, 0o600)

	// A directory where the file was makes the reopen fail for root too
	// (CI runs as root, which a read-only directory would not stop).
	require.NoError(t, os.Rename(path, path+".2"))
	require.NoError(t, os.Mkdir(path, 0o700))
	assert.Error(t, l.Reopen(), "reopen onto a directory")
	write("after-failed-reopen")
	assert.Equal(t, []string{"after-reopen", "after-failed-reopen"}, operations(readLines(t, path+".2")),
		"after a failed reopen the log keeps writing to its file")

	// Once the path is usable again, a reopen moves on to it.
	require.NoError(t, os.Remove(path))
	require.NoError(t, l.Reopen())
	write("after-second-reopen")
	assert.Equal(t, []string{"after-second-reopen"}, operations(readLines(t, path)), "file after the second reopen")
}

// TestEntryJSON pins the field names operators grep for.
func TestEntryJSON(t *testing.T) {
	var b strings.Builder
	l := New(&b)
	require.NoError(t, l.Write(&Entry{Time: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), RequestID: "r1", Caller: "spiffe://x/edge",
		Operation: "KeyVault.Sign", Key: "k", Version: 2, Scheme: "SIGNATURE_SCHEME_ED25519", Outcome: "OK", DurationMS: 1.5}))
	want := `{"time":"2030-01-02T03:04:05Z","request_id":"r1","caller":"spiffe://x/edge","operation":"KeyVault.Sign","key":"k","version":2,"scheme":"SIGNATURE_SCHEME_ED25519","outcome":"OK","duration_ms":1.5}` + "\n"
	assert.Equal(t, want, b.String())
	assert.NoError(t, l.Reopen(), "reopen of a stream")
}
