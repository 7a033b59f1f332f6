package audit_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/audit"
)

// TestEntryFieldsBounded: whatever a caller put in the fields an entry
// copies (ids, key lists, refusal details), its line stays within a few
// kilobytes, cut at rune boundaries with a marker saying how much was cut,
// and the caller's entry is left as it was.
func TestEntryFieldsBounded(t *testing.T) {
	var buf bytes.Buffer
	l := audit.New(&buf)
	huge := strings.Repeat("é", 3<<20) // 6 MiB of two-byte runes
	keys := make([]string, 200_000)
	for i := range keys {
		keys[i] = huge[:1001] // ends mid-rune
	}
	e := &audit.Entry{Caller: huge, Peer: huge, Operation: huge, Key: huge, Scheme: huge, Mode: huge,
		Handshake: huge, Outcome: huge, Detail: huge, RequestID: huge, Keys: keys}
	require.NoError(t, l.Write(e))
	assert.Less(t, buf.Len(), 16<<10, "one line of %d bytes", buf.Len())
	assert.Len(t, e.Keys, 200_000, "the caller's entry changed")
	assert.Equal(t, huge, e.Key, "the caller's entry changed")

	var got audit.Entry
	require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
	for _, f := range []string{got.Caller, got.Key, got.Detail, got.Keys[0]} {
		assert.True(t, utf8.ValidString(f), "cut inside a rune: %q", f[len(f)-20:])
		assert.Contains(t, f, "more bytes]", "no truncation marker")
		assert.True(t, strings.HasPrefix(f, "éé"))
	}
	assert.Len(t, got.Keys, 17, "16 keys and a marker")
	assert.Equal(t, "…[199984 more keys]", got.Keys[16])

	buf.Reset()
	small := &audit.Entry{Key: "web-1", Keys: []string{"a", "b/2"}, Detail: "why"}
	require.NoError(t, l.Write(small))
	require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
	assert.Equal(t, "web-1", got.Key)
	assert.Equal(t, []string{"a", "b/2"}, got.Keys, "fields within their bounds are kept whole")
	assert.Equal(t, "why", got.Detail)
}
