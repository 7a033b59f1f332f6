package metricsdoc

import (
	"os"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
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

// TestMismatches: a page that serves what the table lists matches; each
// kind of difference is named, and a served metric without the prefix is
// none of the table's business.
func TestMismatches(t *testing.T) {
	rows := map[string]Metric{
		"x_calls_total": {Name: "x_calls_total", Type: "counter", Labels: []string{"code", "method"}},
		"x_up":          {Name: "x_up", Type: "gauge"},
	}
	page := func(text string) map[string]*dto.MetricFamily {
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(strings.NewReader(text))
		require.NoError(t, err)
		return families
	}
	const good = "# TYPE x_calls_total counter\nx_calls_total{method=\"a\",code=\"OK\"} 1\n# TYPE x_up gauge\nx_up 1\n# TYPE go_goroutines gauge\ngo_goroutines 5\n"
	assert.Empty(t, Mismatches(rows, page(good), "x_"))
	assert.Equal(t, []string{
		"x_calls_total is listed with labels [code method] but served with [method]",
		"x_extra is served but not listed",
		"x_up is listed as a gauge but served as a counter",
	}, Mismatches(rows, page("# TYPE x_calls_total counter\nx_calls_total{method=\"a\"} 1\nx_calls_total{method=\"b\"} 1\n# TYPE x_up counter\nx_up 1\n# TYPE x_extra gauge\nx_extra 1\n"), "x_"))
	assert.Equal(t, []string{"x_up is listed but not served"}, Mismatches(rows, page("# TYPE x_calls_total counter\nx_calls_total{method=\"a\",code=\"OK\"} 1\n"), "x_"))
}
