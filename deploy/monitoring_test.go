package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"text/template"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/handshaked/handshaked/internal/metricsdoc"
)

// targetLabels are the labels Prometheus (and the Prometheus Operator's
// ServiceMonitor) put on every series of a target, beside the metric's own.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

// synthetic are the series Prometheus makes itself for every target.
var synthetic = map[string]metricsdoc.Metric{"up": {Name: "up", Type: "gauge"}}

// metricChecker checks PromQL expressions against docs/metrics.md.
type metricChecker struct {
	metrics map[string]metricsdoc.Metric
}

func newMetricChecker(t *testing.T) *metricChecker {
	t.Helper()
	metrics, err := metricsdoc.Read(metricsdoc.Path())
	require.NoError(t, err)
	for name, m := range synthetic {
		metrics[name] = m
	}
	return &metricChecker{metrics: metrics}
}

// family resolves a series name to its documented family: a histogram's
// name_bucket, _count and _sum are the histogram's. bucket says the series
// has the le label.
func (c *metricChecker) family(series string) (m metricsdoc.Metric, bucket bool, ok bool) {
	if m, ok := c.metrics[series]; ok {
		return m, false, true
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, cut := strings.CutSuffix(series, suffix); cut {
			if m, ok := c.metrics[base]; ok && (m.Type == "histogram" || m.Type == "summary" && suffix != "_bucket") {
				return m, suffix == "_bucket", true
			}
		}
	}
	return metricsdoc.Metric{}, false, false
}

// problems parses expr and lists every metric it names that is not in the
// table, and every label it matches, groups or joins on that none of the
// metrics it names has.
func (c *metricChecker) problems(expr string) []string {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	known := map[string]bool{}
	for _, l := range targetLabels {
		known[l] = true
	}
	var used []string
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			m, bucket, ok := c.family(n.Name)
			if !ok {
				out = append(out, fmt.Sprintf("%s is not in docs/metrics.md", n.Name))
				return nil
			}
			own := map[string]bool{}
			for _, l := range m.Labels {
				own[l], known[l] = true, true
			}
			if bucket {
				own["le"], known["le"] = true, true
			}
			for _, lm := range n.LabelMatchers {
				if lm.Name != model.MetricNameLabel && !own[lm.Name] && !slices.Contains(targetLabels, lm.Name) {
					out = append(out, fmt.Sprintf("%s has no label %q", n.Name, lm.Name))
				}
			}
		case *parser.AggregateExpr:
			used = append(used, n.Grouping...)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				used = append(used, n.VectorMatching.MatchingLabels...)
				used = append(used, n.VectorMatching.Include...)
			}
		}
		return nil
	})
	for _, l := range used {
		if !known[l] {
			out = append(out, fmt.Sprintf("label %q is on none of the metrics the expression names", l))
		}
	}
	return out
}

// TestMetricCheckerFindsMistakes: the checker refuses an unknown metric, a
// label the metric does not have, a grouping label no metric has, and a
// syntax error, so the rule and dashboard checks cannot pass on anything.
func TestMetricCheckerFindsMistakes(t *testing.T) {
	c := newMetricChecker(t)
	assert.Empty(t, c.problems(`sum by (operation, le) (rate(handshaked_key_operation_seconds_bucket{job="x", outcome="OK"}[5m]))`))
	for _, bad := range []string{
		`rate(handshaked_no_such_metric_total[5m])`,
		`rate(handshaked_handshakes_failed_total{reason="x"}[5m])`,
		`sum by (alert) (rate(handshaked_calls_refused_total[5m]))`,
		`sum by (le) (rate(handshaked_key_change_seconds_count[5m]))`,
		`rate(handshaked_handshakes_started_total[5m]`,
	} {
		assert.NotEmpty(t, c.problems(bad), bad)
	}
}

// TestAlertRules: deploy/monitoring/alerts.yaml decodes strictly as the
// Prometheus Operator's PrometheusRule spec (the same groups as a rule
// file), every expression parses and names only documented metrics and
// labels, and every alert has a severity, a summary and a description whose
// templates parse.
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile("monitoring/alerts.yaml")
	require.NoError(t, err)
	var spec monv1.PrometheusRuleSpec
	require.NoError(t, yaml.UnmarshalStrict(data, &spec))
	require.NotEmpty(t, spec.Groups)
	c := newMetricChecker(t)
	seen := map[string]bool{}
	for _, g := range spec.Groups {
		require.NotEmpty(t, g.Rules, "group %s", g.Name)
		for _, r := range g.Rules {
			t.Run(r.Alert, func(t *testing.T) {
				require.NotEmpty(t, r.Alert, "a recording rule, or an alert without a name")
				assert.False(t, seen[r.Alert], "alert %s twice", r.Alert)
				seen[r.Alert] = true
				assert.Empty(t, c.problems(r.Expr.String()), "%s", r.Expr.String())
				if r.For != nil {
					_, err := model.ParseDuration(string(*r.For))
					assert.NoError(t, err)
				}
				assert.Contains(t, []string{"critical", "warning"}, r.Labels["severity"])
				for _, a := range []string{"summary", "description"} {
					require.NotEmpty(t, r.Annotations[a], "no %s", a)
					_, err := template.New(a).Funcs(alertTemplateFuncs).Parse(alertTemplateHeader + r.Annotations[a])
					assert.NoError(t, err, "%s: %s", a, r.Annotations[a])
				}
			})
		}
	}
}

// alertTemplateHeader is what Prometheus puts before an alert template, so
// that it can name $labels and $value.
const alertTemplateHeader = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"

// alertTemplateFuncs are the names of the functions Prometheus's alert
// templates offer that the annotations use; parsing needs only the names.
var alertTemplateFuncs = template.FuncMap{
	"humanize": fmt.Sprint, "humanizeDuration": fmt.Sprint, "humanizePercentage": fmt.Sprint,
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// grafanaVariables replaces the dashboard's variables in an expression with
// values PromQL parses: Grafana's own interval and the dashboard's
// variables.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", "handshaked", "$instance", "127.0.0.1:7443")

// TestDashboard: deploy/monitoring/dashboard.json is a Grafana dashboard
// whose every query parses and names only documented metrics and labels,
// whose variables the queries use exist, and whose panels have unique ids
// and fit the 24-column grid.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("monitoring/dashboard.json")
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(data, &d))
	assert.NotEmpty(t, d.Title)
	assert.NotEmpty(t, d.UID)
	assert.GreaterOrEqual(t, d.SchemaVersion, 36, "a schema current Grafana reads without migrating")
	c := newMetricChecker(t)

	variables := map[string]bool{}
	for _, v := range d.Templating.List {
		variables[v.Name] = true
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		require.NoError(t, json.Unmarshal(v.Query, &q), "variable %s", v.Name)
		selector, ok := strings.CutPrefix(q.Query, "label_values(")
		require.True(t, ok, "variable %s: %q is not label_values(...)", v.Name, q.Query)
		i := strings.LastIndex(selector, ",")
		require.Positive(t, i, "variable %s: %q", v.Name, q.Query)
		label := strings.TrimSuffix(strings.TrimSpace(selector[i+1:]), ")")
		expr := grafanaVariables.Replace(selector[:i])
		assert.Empty(t, c.problems(expr), "variable %s: %s", v.Name, q.Query)
		assert.Contains(t, targetLabels, label, "variable %s takes a target label", v.Name)
	}
	require.True(t, variables["datasource"], "a data source variable, so the dashboard imports anywhere")

	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		assert.False(t, ids[p.ID], "panel id %d twice", p.ID)
		ids[p.ID] = true
		assert.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q is wider than the grid", p.Title)
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q has no data source", p.Title)
		assert.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, q := range p.Targets {
			queries++
			for _, name := range []string{"job", "instance"} {
				assert.Contains(t, q.Expr, "$"+name, "panel %q follows the $%s variable", p.Title, name)
			}
			assert.Empty(t, c.problems(grafanaVariables.Replace(q.Expr)), "panel %q: %s", p.Title, q.Expr)
		}
	}
	assert.Greater(t, queries, 10)
}

// TestEveryOperationMetricIsWatched: the dashboard shows every handshaked
// metric, and the alert rules watch the per-operation ones and the audit
// log, so a new metric is not served unseen.
func TestEveryOperationMetricIsWatched(t *testing.T) {
	dash, err := os.ReadFile("monitoring/dashboard.json")
	require.NoError(t, err)
	alerts, err := os.ReadFile("monitoring/alerts.yaml")
	require.NoError(t, err)
	metrics, err := metricsdoc.Read(metricsdoc.Path())
	require.NoError(t, err)
	for name := range metrics {
		if !strings.HasPrefix(name, "handshaked_") {
			continue
		}
		assert.Contains(t, string(dash), name, "the dashboard does not show %s", name)
	}
	for _, name := range []string{"handshaked_key_operation_seconds", "handshaked_key_change_seconds", "handshaked_audit_write_errors_total"} {
		assert.Contains(t, string(alerts), name, "no alert watches %s", name)
	}
}
