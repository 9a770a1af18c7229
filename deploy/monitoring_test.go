package deploy

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// metric is a metric the code defines: its type and its labels.
type metric struct {
	kind   string // counter, gauge, histogram, summary; untyped for a collector's Desc, which says no type
	labels []string
}

// definedMetrics reads the metrics penny-scheduler and penny-agent define
// from the source, so a metric renamed in the code fails the dashboard and
// alert checks: component-base's and client_golang's metric options
// (Namespace_Subsystem_Name) with the label names of the Vec built from them,
// and the collectors' NewDesc calls.
func definedMetrics(t *testing.T) map[string]metric {
	t.Helper()
	out := map[string]metric{}
	fset := token.NewFileSet()
	for _, dir := range []string{"../pkg", "../plugins", "../agent", "../cmd"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			lists := stringLists(f)
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				if typeName(call.Fun) == "NewDesc" && len(call.Args) >= 3 {
					if name, ok := stringLit(call.Args[0]); ok {
						out[name] = metric{kind: "untyped", labels: stringList(call.Args[2], lists)}
					}
					return true
				}
				if len(call.Args) == 0 {
					return true
				}
				arg := call.Args[0]
				if u, ok := arg.(*ast.UnaryExpr); ok {
					arg = u.X
				}
				lit, ok := arg.(*ast.CompositeLit)
				if !ok {
					return true
				}
				kind, ok := strings.CutSuffix(typeName(lit.Type), "Opts")
				if !ok {
					return true
				}
				name := optsName(lit)
				if name == "" {
					return true
				}
				m := metric{kind: strings.ToLower(kind)}
				if len(call.Args) >= 2 {
					m.labels = stringList(call.Args[1], lists)
				}
				out[name] = m
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Guard against a scan that silently finds nothing: these are metrics of
	// each way the code defines them.
	for _, name := range []string{"penny_gang_attempts_total", "penny_price_catalog_last_load_successful", "node_total_hourly_cost", "penny_agent_reports_rejected_total"} {
		if _, ok := out[name]; !ok {
			t.Fatalf("the source scan did not find %s; fix definedMetrics", name)
		}
	}
	return out
}

func typeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return e.Sel.Name
	}
	return ""
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// optsName joins an options literal's Namespace, Subsystem and Name as
// client_golang's BuildFQName does.
func optsName(lit *ast.CompositeLit) string {
	parts := map[string]string{}
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if s, ok := stringLit(kv.Value); ok {
			parts[typeName(kv.Key)] = s
		}
	}
	if parts["Name"] == "" {
		return ""
	}
	var name []string
	for _, k := range []string{"Namespace", "Subsystem", "Name"} {
		if parts[k] != "" {
			name = append(name, parts[k])
		}
	}
	return strings.Join(name, "_")
}

// stringLists are a file's top-level []string variables, which label lists
// shared by several metrics are.
func stringLists(f *ast.File) map[string]ast.Expr {
	out := map[string]ast.Expr{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					out[name.Name] = vs.Values[i]
				}
			}
		}
	}
	return out
}

func stringList(e ast.Expr, lists map[string]ast.Expr) []string {
	if id, ok := e.(*ast.Ident); ok && lists[id.Name] != nil {
		e = lists[id.Name]
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	var out []string
	for _, el := range lit.Elts {
		if s, ok := stringLit(el); ok {
			out = append(out, s)
		}
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\b(?:penny_[a-z0-9_]+|node_[a-z_]+_hourly_cost)\b`)
	// A selector's braces after a metric name, and the label names matched
	// in them.
	selector     = regexp.MustCompile(`^\{[^}]*\}`)
	labelMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	grouping     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// What a counter is read through: its raw value depends on when its
	// process started.
	rateOf = regexp.MustCompile(`\b(?:rate|irate|increase)\(\s*$`)
	space  = regexp.MustCompile(`\s+`)
)

// newSeries says whether a counter's series, sel its selector, is read raw
// only to find series born within a window ("... unless x offset d"): a
// series of a counter vector whose label values are not known in advance
// (a pool) is born at its first increment, which increase() cannot see.
func newSeries(expr, name, sel string) bool {
	return strings.Contains(space.ReplaceAllString(expr, " "), "unless "+name+space.ReplaceAllString(sel, " ")+" offset ")
}

// Labels Prometheus adds to every target scraped through a ServiceMonitor
// or PodMonitor; queries may group by them.
var targetLabels = []string{"job", "instance", "pod", "namespace", "service", "endpoint", "container"}

// checkExpr says what is wrong with a PromQL expression, given the defined
// metrics: unknown metrics, histogram suffixes on other metric types,
// counters read without rate or increase, and labels no metric in the
// expression has.
func checkExpr(expr string, defined map[string]metric) []string {
	var problems []string
	known := slices.Clone(targetLabels)
	for _, loc := range metricName.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		m, ok := defined[name]
		series := ""
		if !ok {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base, cut := strings.CutSuffix(name, suffix)
				if bm, found := defined[base]; cut && found {
					m, ok, series = bm, true, suffix
					break
				}
			}
		}
		if !ok {
			problems = append(problems, "unknown metric "+name)
			continue
		}
		labels := m.labels
		switch {
		case series == "_bucket" && m.kind != "histogram":
			problems = append(problems, name+": "+strings.TrimSuffix(name, series)+" is a "+m.kind+", not a histogram")
		case series != "" && m.kind != "histogram" && m.kind != "summary":
			problems = append(problems, name+": "+strings.TrimSuffix(name, series)+" is a "+m.kind+", not a histogram or summary")
		case series == "_bucket":
			labels = append(slices.Clone(labels), "le")
		}
		sel := selector.FindString(expr[loc[1]:])
		if (m.kind == "counter" || series != "") && !rateOf.MatchString(expr[:loc[0]]) && !newSeries(expr, name, sel) {
			problems = append(problems, name+" is a counter: read it through rate() or increase()")
		}
		for _, lm := range labelMatcher.FindAllStringSubmatch(sel, -1) {
			if !slices.Contains(labels, lm[1]) && !slices.Contains(targetLabels, lm[1]) {
				problems = append(problems, name+" has no label "+lm[1])
			}
		}
		known = append(known, labels...)
	}
	for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !slices.Contains(known, l) {
				problems = append(problems, "grouping by "+l+", a label none of the expression's metrics has")
			}
		}
	}
	return problems
}

type dashboard struct {
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []panelTarget  `json:"targets"`
	Panels     []panel        `json:"panels"`
}

type panelTarget struct {
	Expr       string         `json:"expr"`
	Datasource *datasourceRef `json:"datasource"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

const datasourceVariable = "${datasource}"

// Every query of the dashboard reads metrics the code defines, through the
// datasource the user picks, so the dashboard keeps working on any Grafana
// and breaks this test, not the user's panels, when a metric is renamed.
func TestDashboardQueriesReadDefinedMetrics(t *testing.T) {
	const file = "monitoring/grafana-dashboard.json"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	hasVariable := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			hasVariable = true
		}
	}
	if !hasVariable {
		t.Fatalf(`%s: no template variable {"name": "datasource", "type": "datasource", "query": "prometheus"}`, file)
	}
	defined := definedMetrics(t)
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...) // a collapsed row holds its panels
	}
	queries := 0
	for _, p := range all {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != datasourceVariable {
			t.Errorf("panel %q: datasource is not the template variable %s", p.Title, datasourceVariable)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			queries++
			if target.Datasource == nil || target.Datasource.UID != datasourceVariable {
				t.Errorf("panel %q: query %q: datasource is not the template variable %s", p.Title, target.Expr, datasourceVariable)
			}
			if len(metricName.FindAllString(target.Expr, -1)) == 0 {
				t.Errorf("panel %q: query %q reads no Penny metric", p.Title, target.Expr)
			}
			for _, problem := range checkExpr(target.Expr, defined) {
				t.Errorf("panel %q: query %q: %s", p.Title, target.Expr, problem)
			}
		}
	}
	if queries == 0 {
		t.Fatalf("%s has no queries", file)
	}
}

type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
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

// Every alert reads metrics the code defines and says how urgent it is and
// what to do.
func TestAlertsReadDefinedMetrics(t *testing.T) {
	const file = "monitoring/alerts.yaml"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r prometheusRule
	if err := yaml.UnmarshalStrict(data, &r); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if r.APIVersion != "monitoring.coreos.com/v1" || r.Kind != "PrometheusRule" {
		t.Fatalf("%s is a %s %s, want a monitoring.coreos.com/v1 PrometheusRule", file, r.APIVersion, r.Kind)
	}
	defined := definedMetrics(t)
	alerts := 0
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			alerts++
			if rule.Alert == "" {
				t.Errorf("group %s: a rule without an alert name (expr %q); this file holds alerts only", g.Name, rule.Expr)
				continue
			}
			if rule.For == "" {
				t.Errorf("alert %s has no for:", rule.Alert)
			}
			if s := rule.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", rule.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if rule.Annotations[a] == "" {
					t.Errorf("alert %s has no %s annotation", rule.Alert, a)
				}
			}
			if len(metricName.FindAllString(rule.Expr, -1)) == 0 {
				t.Errorf("alert %s: expr %q reads no Penny metric", rule.Alert, rule.Expr)
			}
			for _, problem := range checkExpr(rule.Expr, defined) {
				t.Errorf("alert %s: %s", rule.Alert, problem)
			}
		}
	}
	if alerts == 0 {
		t.Fatalf("%s has no alerts", file)
	}
}

// The checks catch what they are there to catch, so the tests above
// passing means something.
func TestCheckExprCatchesMistakes(t *testing.T) {
	defined := definedMetrics(t)
	for expr, want := range map[string]string{
		`max(penny_price_catalog_last_load_sucessful)`:                                      "unknown metric penny_price_catalog_last_load_sucessful",
		`sum(penny_gang_attempts_total)`:                                                    "penny_gang_attempts_total is a counter: read it through rate() or increase()",
		`sum(rate(penny_gang_attempts_total{reason="x"}[5m]))`:                              "penny_gang_attempts_total has no label reason",
		`sum by (pool) (rate(penny_gang_attempts_total[5m]))`:                               "grouping by pool, a label none of the expression's metrics has",
		`histogram_quantile(0.9, sum by (le) (rate(penny_gang_attempts_total_bucket[5m])))`: "penny_gang_attempts_total_bucket: penny_gang_attempts_total is a counter, not a histogram",
		`histogram_quantile(0.9, sum by (le) (rate(penny_telemetry_streams_bucket[5m])))`:   "penny_telemetry_streams_bucket: penny_telemetry_streams is a gauge, not a histogram",
	} {
		if got := checkExpr(expr, defined); !slices.Contains(got, want) {
			t.Errorf("checkExpr(%q) = %q, want it to hold %q", expr, got, want)
		}
	}
	for _, ok := range []string{
		`histogram_quantile(0.95, sum by (le, policy) (rate(penny_spot_wait_seconds_bucket{capacity_type="spot"}[5m])))`,
		`sum(max_over_time(penny_pool_reclaims_total{zone="a"}[10m]) unless penny_pool_reclaims_total{zone="a"} offset 10m)`,
	} {
		if got := checkExpr(ok, defined); len(got) != 0 {
			t.Errorf("checkExpr(%q) = %q, want no problems", ok, got)
		}
	}
}
