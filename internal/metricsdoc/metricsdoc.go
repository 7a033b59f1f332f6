// Package metricsdoc reads the metrics table of docs/metrics.md, the one
// list of the metrics handshaked serves. The service's tests check it
// against a live /metrics; the deploy module's tests check the dashboard and
// alert rules against it.
package metricsdoc

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// Metric is one row of the table.
type Metric struct {
	Name   string
	Type   string   // counter, gauge, histogram or summary
	Labels []string // sorted
}

// Path is docs/metrics.md in the source tree this package was built from.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "docs", "metrics.md")
}

// Read parses the table of the file at path.
func Read(path string) (map[string]Metric, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(doc))
}

const (
	begin = "<!-- metrics:begin -->"
	end   = "<!-- metrics:end -->"
)

// A row: | `name` | type | `label`, `label` | what it measures |
var row = regexp.MustCompile("^\\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \\| (counter|gauge|histogram|summary) \\|([^|]*)\\|")

// Parse reads the rows between the metrics:begin and metrics:end markers of
// a document.
func Parse(doc string) (map[string]Metric, error) {
	_, table, ok := strings.Cut(doc, begin)
	if !ok {
		return nil, fmt.Errorf("metrics table: no %s marker", begin)
	}
	table, _, ok = strings.Cut(table, end)
	if !ok {
		return nil, fmt.Errorf("metrics table: no %s marker", end)
	}
	metrics := map[string]Metric{}
	sc := bufio.NewScanner(strings.NewReader(table))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("metrics table: a row not of the form | `name` | type | `label`, … | meaning |: %s", line)
		}
		var labels []string
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" {
				labels = append(labels, l)
			}
		}
		slices.Sort(labels)
		if _, dup := metrics[m[1]]; dup {
			return nil, fmt.Errorf("metrics table: %s listed twice", m[1])
		}
		metrics[m[1]] = Metric{Name: m[1], Type: m[2], Labels: labels}
	}
	if len(metrics) == 0 {
		return nil, fmt.Errorf("metrics table: no rows")
	}
	return metrics, nil
}

// Mismatches compares the table's rows with served, the metric families a
// live /metrics page serves, and lists what differs: a listed metric not
// served, or served with another type or labels, and a served metric named
// with prefix that the table does not list. The service and the edge check
// their pages with it.
func Mismatches(rows map[string]Metric, served map[string]*dto.MetricFamily, prefix string) []string {
	var diffs []string
	for name, row := range rows {
		f, ok := served[name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s is listed but not served", name))
			continue
		}
		if typ := strings.ToLower(f.GetType().String()); typ != row.Type {
			diffs = append(diffs, fmt.Sprintf("%s is listed as a %s but served as a %s", name, row.Type, typ))
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName())
			}
			slices.Sort(labels)
			if !slices.Equal(labels, row.Labels) {
				diffs = append(diffs, fmt.Sprintf("%s is listed with labels %v but served with %v", name, row.Labels, labels))
			}
		}
	}
	for name := range served {
		if _, ok := rows[name]; !ok && strings.HasPrefix(name, prefix) {
			diffs = append(diffs, fmt.Sprintf("%s is served but not listed", name))
		}
	}
	slices.Sort(diffs)
	return slices.Compact(diffs)
}
