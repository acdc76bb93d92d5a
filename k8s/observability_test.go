package k8s_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// observabilityDir holds the Grafana dashboard and the Prometheus alert rules.
const observabilityDir = "observability"

// moduleMetric is a metric the module registers, read from its metrics.go.
type moduleMetric struct {
	histogram bool
	labels    []string
}

var (
	metricOpts = regexp.MustCompile(`(?s)prometheus\.New(Counter|Histogram|Gauge)Vec\(prometheus\.\w+Opts\{\s*Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "(\w+)",.*?\}, \[\]string\{([^}]*)\}`)
	metricDesc = regexp.MustCompile(`(?s)prometheus\.BuildFQName\(metricsNamespace, metricsSubsystem, "(\w+)"\),.*?\[\]string\{([^}]*)\}`)
	metricName = regexp.MustCompile(`metrics(Namespace|Subsystem)\s*=\s*"(\w+)"`)
)

// moduleMetrics reads the names (caddy_oauth2_upstream_*) and labels of the module's
// metrics from the root package's metrics.go.
func moduleMetrics(t *testing.T) map[string]moduleMetric {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	prefix := map[string]string{}
	for _, m := range metricName.FindAllStringSubmatch(text, -1) {
		prefix[m[1]] = m[2]
	}
	if prefix["Namespace"] == "" || prefix["Subsystem"] == "" {
		t.Fatalf("metrics.go: no metricsNamespace and metricsSubsystem constants")
	}
	full := func(name string) string { return prefix["Namespace"] + "_" + prefix["Subsystem"] + "_" + name }
	labelsOf := func(list string) []string {
		var out []string
		for _, l := range strings.Split(list, ",") {
			if l = strings.Trim(strings.TrimSpace(l), `"`); l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	metrics := map[string]moduleMetric{}
	for _, m := range metricOpts.FindAllStringSubmatch(text, -1) {
		metrics[full(m[2])] = moduleMetric{histogram: m[1] == "Histogram", labels: labelsOf(m[3])}
	}
	for _, m := range metricDesc.FindAllStringSubmatch(text, -1) {
		metrics[full(m[1])] = moduleMetric{labels: labelsOf(m[2])}
	}
	if len(metrics) < 6 {
		t.Fatalf("read %d metrics from metrics.go (%v); want at least 6: has its form changed?", len(metrics), metrics)
	}
	return metrics
}

// expression is one PromQL expression of the kit, and where it is.
type expression struct{ where, expr string }

// grafanaVariables are replaced by values of their kind before parsing, as Grafana does.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "${key_set}", ".*", "$key_set", ".*")

// labelValues is a Grafana variable query, whose first argument is a series selector.
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

func dashboardExpressions(t *testing.T) []expression {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(observabilityDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dashboard struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if dashboard.Title == "" || dashboard.UID == "" || len(dashboard.Panels) == 0 {
		t.Fatalf("dashboard.json: no title, uid or panels")
	}
	var out []expression
	for _, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			out = append(out, expression{"dashboard panel " + p.Title, grafanaVariables.Replace(target.Expr)})
		}
	}
	for _, v := range dashboard.Templating.List {
		var query struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &query) != nil || query.Query == "" {
			continue // a data source variable
		}
		m := labelValues.FindStringSubmatch(query.Query)
		if m == nil {
			t.Errorf("dashboard variable %s: query %q is not label_values(<selector>, <label>)", v.Name, query.Query)
			continue
		}
		out = append(out, expression{"dashboard variable " + v.Name, m[1]})
	}
	return out
}

// prometheusRule is what the test reads of the PrometheusRule.
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

func ruleExpressions(t *testing.T) ([]expression, []string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(observabilityDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule prometheusRule
	if err := yaml.UnmarshalStrict(data, &rule); err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Errorf("prometheusrule.yaml is a %s %s; want a monitoring.coreos.com/v1 PrometheusRule", rule.APIVersion, rule.Kind)
	}
	var out []expression
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %q of group %s: want an alert name and a severity label", r.Expr, g.Name)
			}
			alerts = append(alerts, r.Alert)
			out = append(out, expression{"alert " + r.Alert, r.Expr})
		}
	}
	return out, alerts
}

// TestObservabilityKit parses every PromQL expression of the Grafana dashboard and of the
// alert rules with Prometheus's own parser, and checks that every metric they select is one
// the module registers (a histogram's _bucket, _sum and _count series included), with label
// matchers on that metric's labels only; the dashboard shows every metric, and the rules
// alert on needs_reauthorization, a token expiring with failing refreshes, and the grant
// error rate.
func TestObservabilityKit(t *testing.T) {
	t.Parallel()
	metrics := moduleMetrics(t)
	dashboard := dashboardExpressions(t)
	rules, alerts := ruleExpressions(t)
	shown := map[string]bool{}
	for _, e := range append(dashboard, rules...) {
		node, err := parser.NewParser(parser.Options{}).ParseExpr(e.expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", e.where, e.expr, err)
			continue
		}
		parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			base, labels, err := selectedMetric(vs, metrics)
			if err != nil {
				t.Errorf("%s: %v", e.where, err)
				return nil
			}
			if strings.HasPrefix(e.where, "dashboard") {
				shown[base] = true
			}
			for _, m := range vs.LabelMatchers {
				if m.Name != "__name__" && !slices.Contains(labels, m.Name) {
					t.Errorf("%s: %s has no label %q (it has %v)", e.where, vs.Name, m.Name, labels)
				}
			}
			return nil
		})
	}
	for name := range metrics {
		if !shown[name] {
			t.Errorf("the dashboard shows no panel of %s", name)
		}
	}
	for _, want := range []string{"needs_reauthorization", "grants_total{result=\"error\"}", "token_expiry_timestamp_seconds"} {
		if !slices.ContainsFunc(rules, func(e expression) bool { return strings.Contains(e.expr, want) }) {
			t.Errorf("no alert rule uses %s (alerts: %v)", want, alerts)
		}
	}
}

// selectedMetric returns the module metric that vs selects, and its labels.
func selectedMetric(vs *parser.VectorSelector, metrics map[string]moduleMetric) (string, []string, error) {
	name := vs.Name
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
			name = m.Value
		}
	}
	if m, ok := metrics[name]; ok && !m.histogram {
		return name, m.labels, nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base := strings.TrimSuffix(name, suffix)
		if m, ok := metrics[base]; ok && m.histogram && base != name {
			labels := m.labels
			if suffix == "_bucket" {
				labels = append(slices.Clone(labels), "le")
			}
			return base, labels, nil
		}
	}
	return "", nil, fmt.Errorf("metric %q is not one the module registers", name)
}
