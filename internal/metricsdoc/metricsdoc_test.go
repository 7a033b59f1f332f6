package metricsdoc

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/handshaked/handshaked/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestParse(t *testing.T) {
	doc := "intro\n" + begin + "\n| metric | type | labels | what |\n|---|---|---|---|\n" +
		"| `a_total` | counter | `b`, `a` | counts |\n| `g` | gauge | | a gauge |\n" + end + "\n| `outside` | gauge | | not read |\n"
	got, err := Parse(doc)
	require.NoError(t, err)
	assert.Equal(t, map[string]Metric{
		"a_total": {Name: "a_total", Type: "counter", Labels: []string{"a", "b"}},
		"g":       {Name: "g", Type: "gauge"},
	}, got)

	for name, bad := range map[string]string{
		"no begin":  "| `a` | gauge | | x |\n" + end,
		"no end":    begin + "\n| `a` | gauge | | x |\n",
		"bad type":  begin + "\n| `a` | gage | | x |\n" + end,
		"twice":     begin + "\n| `a` | gauge | | x |\n| `a` | gauge | | y |\n" + end,
		"no rows":   begin + "\n" + end,
		"no labels": begin + "\n| `a` | gauge |\n" + end,
	} {
		_, err := Parse(bad)
		assert.Error(t, err, name)
	}
}

// TestTheDocument: docs/metrics.md parses and names handshaked's metrics.
func TestTheDocument(t *testing.T) {
	got, err := Read(Path())
	require.NoError(t, err)
	assert.Equal(t, "histogram", got["handshaked_key_operation_seconds"].Type)
	assert.Equal(t, []string{"algorithm", "operation", "outcome", "source"}, got["handshaked_key_operation_seconds"].Labels)
}
