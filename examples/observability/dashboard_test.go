package main

import (
	"encoding/json"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dashboardFile is the Grafana dashboard of the driver's metrics.
const dashboardFile = "grafana-dashboard.json"

// dashboardExprs returns every PromQL expression of the dashboard: the
// panels' targets (rows' nested panels included), the annotations and the
// query variables.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels      []panel `json:"panels"`
		Annotations struct {
			List []target `json:"list"`
		} `json:"annotations"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(b, &d))
	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				require.NotEmpty(t, tg.Expr, "panel %q has a target without expr", p.Title)
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			exprs = append(exprs, a.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		require.NoError(t, json.Unmarshal(v.Query, &q))
		exprs = append(exprs, q.Query)
	}
	return exprs
}

var (
	stringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	rangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	groupingRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	identRE    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// labelValuesRE is Grafana's label_values(metric, label) variable query.
	labelValuesRE = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
)

// promqlKeywords are the identifiers of PromQL that name no metric.
var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true, "inf": true, "nan": true,
}

// promqlRefs is what a PromQL expression (with Grafana's $variables)
// refers to: metric names, and label names by metric (those of a metric's
// own selector) or of the whole expression (grouping clauses).
type promqlRefs struct {
	metrics     []string
	labelsOf    map[string][]string // metric -> labels in its selector
	groupLabels []string            // labels in by/without/on/ignoring/group_* clauses
}

// parsePromQL extracts the references of expr. It is no full parser: it
// removes strings, selectors' braces, ranges and grouping clauses, and
// takes the identifiers left that are not followed by "(" (functions,
// aggregations) and are not keywords.
func parsePromQL(expr string) promqlRefs {
	r := promqlRefs{labelsOf: map[string][]string{}}
	if m := labelValuesRE.FindStringSubmatch(strings.TrimSpace(expr)); m != nil {
		r.metrics = []string{m[1]}
		r.labelsOf[m[1]] = []string{m[2]}
		return r
	}
	s := stringRE.ReplaceAllString(expr, `""`)
	for _, m := range selectorRE.FindAllStringSubmatch(s, -1) {
		for _, l := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			if m[1] != "" {
				r.labelsOf[m[1]] = append(r.labelsOf[m[1]], l[1])
			}
		}
	}
	s = selectorRE.ReplaceAllString(s, "$1 ")
	s = rangeRE.ReplaceAllString(s, " ")
	for _, m := range groupingRE.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				r.groupLabels = append(r.groupLabels, l)
			}
		}
	}
	s = groupingRE.ReplaceAllString(s, " ")
	for _, loc := range identRE.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.$", rune(s[loc[0]-1])) {
			continue // 1e3, a Grafana $variable
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") || promqlKeywords[strings.ToLower(name)] {
			continue // a function or an aggregation
		}
		if !slices.Contains(r.metrics, name) {
			r.metrics = append(r.metrics, name)
		}
	}
	return r
}

func TestParsePromQL(t *testing.T) {
	r := parsePromQL(`histogram_quantile(0.99, sum by (le, unified_mode) (rate(db_client_operation_duration_seconds_bucket{error_type!="", x=~"$node"}[$__rate_interval])))`)
	assert.Equal(t, []string{"db_client_operation_duration_seconds_bucket"}, r.metrics)
	assert.Equal(t, []string{"error_type", "x"}, r.labelsOf["db_client_operation_duration_seconds_bucket"])
	assert.Equal(t, []string{"le", "unified_mode"}, r.groupLabels)

	r = parsePromQL(`sum(rate(a_sum[5m])) / on (job) sum(rate(b_count[5m] offset 1h)) > 1e3 and c`)
	assert.Equal(t, []string{"a_sum", "b_count", "c"}, r.metrics)
	assert.Equal(t, []string{"job"}, r.groupLabels)

	r = parsePromQL(`label_values(unified_node_up, unified_node)`)
	assert.Equal(t, []string{"unified_node_up"}, r.metrics)
	assert.Equal(t, []string{"unified_node"}, r.labelsOf["unified_node_up"])
}

// exported returns, from a Prometheus text exposition, every sample's
// metric name with the label names its series carry.
func exported(text string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for line := range strings.SplitSeq(text, "\n") {
		name := metricName(line)
		if name == "" {
			continue
		}
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		if i := strings.IndexByte(line, '{'); i >= 0 {
			for _, kv := range labelRE.FindAllStringSubmatch(line[i:], -1) {
				out[name][kv[1]] = true
			}
		}
	}
	return out
}

// checkDashboard checks every metric and label the dashboard queries
// against what the driver exported (metrics: a /metrics body after real
// traffic and a failover), and that every metric family the driver
// exported is on the dashboard.
func checkDashboard(t *testing.T, metrics string) {
	have := exported(metrics)
	queried := map[string]bool{}
	for _, expr := range dashboardExprs(t) {
		r := parsePromQL(expr)
		require.NotEmpty(t, r.metrics, "no metric found in %q", expr)
		for _, m := range r.metrics {
			queried[m] = true
			labels, ok := have[m]
			if !assert.True(t, ok, "the dashboard queries %s, which the driver did not export (in %q)", m, expr) {
				continue
			}
			for _, l := range r.labelsOf[m] {
				assert.True(t, labels[l], "the dashboard selects %s by label %s, which its series lack (in %q)", m, l, expr)
			}
		}
		for _, l := range r.groupLabels {
			found := l == "le" && slices.ContainsFunc(r.metrics, func(m string) bool { return strings.HasSuffix(m, "_bucket") })
			for _, m := range r.metrics {
				found = found || have[m][l]
			}
			assert.True(t, found, "the dashboard groups by %s, a label none of %v carries (in %q)", l, r.metrics, expr)
		}
	}

	// The other direction: each family the driver exports is shown.
	// unified_read_fallback_total is left out of the dashboard because
	// this traffic does not always produce it (only when no replica is
	// eligible), so the check above could not hold it.
	family := func(name string) string {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && have[base+"_bucket"] != nil {
				return base
			}
		}
		return name
	}
	shown := map[string]bool{}
	for m := range queried {
		shown[family(m)] = true
	}
	for _, m := range slices.Sorted(maps.Keys(have)) {
		f := family(m)
		if (strings.HasPrefix(f, "unified_") || strings.HasPrefix(f, "db_client_")) && f != "unified_read_fallback_total" {
			assert.True(t, shown[f], "the driver exports %s, which the dashboard does not show", f)
		}
	}
}
