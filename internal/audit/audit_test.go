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
)

func readLines(t *testing.T, path string) []Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// TestConcurrentWritesAreWholeLines: many writers, every line parses and
// none is lost.
func TestConcurrentWritesAreWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				e := &Entry{Time: time.Now(), Caller: fmt.Sprintf("w%d", w), Operation: "KeyVault.Sign", Key: "k",
					Detail: strings.Repeat("x", 100*(i%7)), Outcome: "OK"}
				if err := l.Write(e); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(readLines(t, path)); got != writers*each {
		t.Fatalf("%d lines, want %d", got, writers*each)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit log mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestReopenAfterRotation: the operator moves the file away and asks for a
// reopen; later entries go to a new file at the old path.
func TestReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Write(&Entry{Operation: "before", Outcome: "OK"})
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Write(&Entry{Operation: "after-move", Outcome: "OK"}) // still the moved file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Write(&Entry{Operation: "after-reopen", Outcome: "OK"})
	old, cur := readLines(t, path+".1"), readLines(t, path)
	if len(old) != 2 || old[1].Operation != "after-move" {
		t.Fatalf("rotated file: %+v", old)
	}
	if len(cur) != 1 || cur[0].Operation != "after-reopen" {
		t.Fatalf("new file: %+v", cur)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("reopened file mode %v", fi.Mode().Perm())
	}
	// A reopen that fails keeps the log writing where it was.
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	os.Rename(path, path+".2")
	if os.Getuid() != 0 { // root ignores the directory's mode
		if err := l.Reopen(); err == nil {
			t.Fatal("reopen in a read-only directory succeeded")
		}
		if err := l.Write(&Entry{Operation: "after-failed-reopen", Outcome: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEntryJSON pins the field names operators grep for.
func TestEntryJSON(t *testing.T) {
	var b strings.Builder
	l := New(&b)
	l.Write(&Entry{Time: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), RequestID: "r1", Caller: "spiffe://x/edge",
		Operation: "KeyVault.Sign", Key: "k", Version: 2, Scheme: "SIGNATURE_SCHEME_ED25519", Outcome: "OK", DurationMS: 1.5})
	want := `{"time":"2030-01-02T03:04:05Z","request_id":"r1","caller":"spiffe://x/edge","operation":"KeyVault.Sign","key":"k","version":2,"scheme":"SIGNATURE_SCHEME_ED25519","outcome":"OK","duration_ms":1.5}` + "\n"
	if b.String() != want {
		t.Fatalf("got  %s\nwant %s", b.String(), want)
	}
	if err := l.Reopen(); err != nil {
		t.Fatalf("reopen of a stream: %v", err)
	}
}
