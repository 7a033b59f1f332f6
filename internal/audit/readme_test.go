package audit

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

// TestREADMEAuditExample: the README's example audit line (Security model)
// is one the log writes: it decodes into an Entry with no field the Entry
// lacks, and that Entry written by the log is the same JSON.
func TestREADMEAuditExample(t *testing.T) {
	line := testenv.DocBlock(t, filepath.Join("..", "..", "README.md"), "audit-example")
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	var e Entry
	require.NoError(t, dec.Decode(&e), "the README's audit line")
	var out bytes.Buffer
	require.NoError(t, New(&out).Write(&e))
	assert.JSONEq(t, line, out.String(), "the README's audit line is not what the log writes")
}
