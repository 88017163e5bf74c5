package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	promql "github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The PrometheusRule and the Grafana dashboard may only query metrics the server really
// exports. The names are read from the server's Go sources, never listed here: every
// prometheus.*Opts literal and prometheus.NewDesc call in the packages `go list -deps` says the
// credential-webhook binary is built from.

const (
	rootModule    = "go.klusters.dev/credential-webhook"
	clientGolang  = "github.com/prometheus/client_golang/prometheus"
	metricPrefix  = "credential_webhook_"
	dashboardFile = "../chart/dashboards/credential-webhook.json"
)

// exportedMetric is one metric family the server registers.
type exportedMetric struct {
	Kind    string    // the Opts type (CounterOpts, HistogramOpts, ...) or NewDesc
	Buckets []float64 // HistogramOpts.Buckets, when written as a literal
	Pos     string
}

var (
	exportedOnce sync.Once
	exported     map[string]exportedMetric
	exportedErr  error
)

func exportedMetrics(t *testing.T) map[string]exportedMetric {
	t.Helper()
	exportedOnce.Do(func() { exported, exportedErr = readExportedMetrics(filepath.Join("..", "..")) })
	if exportedErr != nil {
		t.Fatal(exportedErr)
	}
	return exported
}

// readExportedMetrics parses the Go files of the root module's packages that the server binary
// is built from (build tags applied by go list, tests excluded).
func readExportedMetrics(root string) (map[string]exportedMetric, error) {
	cmd := exec.Command("go", "list", "-e", "-deps", "-json=ImportPath,Dir,GoFiles,Module,Error", ".")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list in %s: %v\n%s", root, err, stderr.String())
	}
	type pkg struct {
		ImportPath, Dir string
		GoFiles         []string
		Module          *struct{ Path string }
		Error           *struct{ Err string }
	}
	found := map[string]exportedMetric{}
	fset := token.NewFileSet()
	dec := json.NewDecoder(bytes.NewReader(out))
	own := 0
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		if p.Module == nil || p.Module.Path != rootModule {
			continue
		}
		if p.Error != nil {
			return nil, fmt.Errorf("go list: package %s: %s", p.ImportPath, p.Error.Err)
		}
		own++
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution)
			if err != nil {
				return nil, err
			}
			if err := metricsInFile(fset, f, found); err != nil {
				return nil, err
			}
		}
	}
	if own == 0 {
		return nil, fmt.Errorf("go list in %s found no package of %s", root, rootModule)
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("no metric found in the packages of %s: the extraction is broken", rootModule)
	}
	return found, nil
}

// metricsInFile adds the metrics an Opts literal or a NewDesc call in f defines. A name that is
// not made of string literals is an error: the test cannot vouch for it.
func metricsInFile(fset *token.FileSet, f *ast.File, found map[string]exportedMetric) error {
	local := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == clientGolang {
			local = "prometheus"
			if imp.Name != nil {
				local = imp.Name.Name
			}
		}
	}
	if local == "" {
		return nil
	}
	isProm := func(e ast.Expr) (string, bool) {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return "", false
		}
		id, ok := sel.X.(*ast.Ident)
		return sel.Sel.Name, ok && id.Name == local
	}
	var errs []string
	add := func(pos token.Pos, name string, m exportedMetric) {
		m.Pos = fset.Position(pos).String()
		if prev, dup := found[name]; dup && prev.Pos != m.Pos {
			errs = append(errs, fmt.Sprintf("%s: metric %s also defined at %s", m.Pos, name, prev.Pos))
		}
		found[name] = m
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CompositeLit:
			typ, ok := isProm(n.Type)
			if !ok || !strings.HasSuffix(typ, "Opts") || typ == "ProcessCollectorOpts" {
				return true
			}
			parts := map[string]string{}
			m := exportedMetric{Kind: typ}
			for _, el := range n.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					errs = append(errs, fmt.Sprintf("%s: %s without field names", fset.Position(n.Pos()), typ))
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				if key == nil {
					continue
				}
				switch key.Name {
				case "Namespace", "Subsystem", "Name":
					s, err := stringLit(kv.Value)
					if err != nil {
						errs = append(errs, fmt.Sprintf("%s: %s.%s: %v", fset.Position(kv.Pos()), typ, key.Name, err))
					}
					parts[key.Name] = s
				case "Buckets":
					b, err := floatsLit(kv.Value)
					if err != nil {
						errs = append(errs, fmt.Sprintf("%s: %s.Buckets: %v", fset.Position(kv.Pos()), typ, err))
					}
					m.Buckets = b
				}
			}
			var name []string
			for _, k := range []string{"Namespace", "Subsystem", "Name"} {
				if parts[k] != "" {
					name = append(name, parts[k])
				}
			}
			if len(name) > 0 {
				add(n.Pos(), strings.Join(name, "_"), m)
			}
		case *ast.CallExpr:
			if fn, ok := isProm(n.Fun); ok && fn == "NewDesc" && len(n.Args) > 0 {
				s, err := stringLit(n.Args[0])
				if err != nil {
					errs = append(errs, fmt.Sprintf("%s: NewDesc: %v", fset.Position(n.Pos()), err))
					return true
				}
				add(n.Pos(), s, exportedMetric{Kind: "NewDesc"})
			}
		}
		return true
	})
	if len(errs) > 0 {
		return fmt.Errorf("reading metric names: %s", strings.Join(errs, "; "))
	}
	return nil
}

func stringLit(e ast.Expr) (string, error) {
	if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
		return strconv.Unquote(lit.Value)
	}
	return "", fmt.Errorf("not a string literal (%T)", e)
}

func floatsLit(e ast.Expr) ([]float64, error) {
	cl, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, nil // computed (e.g. prometheus.ExponentialBuckets): boundaries unknown
	}
	var out []float64
	for _, el := range cl.Elts {
		lit, ok := el.(*ast.BasicLit)
		if !ok || (lit.Kind != token.FLOAT && lit.Kind != token.INT) {
			return nil, fmt.Errorf("bucket %T is not a number literal", el)
		}
		f, err := strconv.ParseFloat(lit.Value, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// The extraction finds what it must: the metrics of each kind of definition.
func TestExportedMetricsRead(t *testing.T) {
	m := exportedMetrics(t)
	for name, kind := range map[string]string{
		"credential_webhook_certificate_not_after_timestamp_seconds": "NewDesc",
		"credential_webhook_request_duration_seconds":                "HistogramOpts",
		"credential_webhook_iam_calls_total":                         "CounterOpts",
	} {
		if m[name].Kind != kind {
			t.Errorf("%s: kind %q, want %q (found %d metrics)", name, m[name].Kind, kind, len(m))
		}
	}
	for name, e := range m {
		if !strings.HasPrefix(name, metricPrefix) {
			t.Errorf("%s (%s) lacks the %s prefix", name, e.Pos, metricPrefix)
		}
		if e.Kind == "HistogramOpts" && len(e.Buckets) == 0 {
			t.Logf("%s: buckets not literal; an le matcher on it cannot be checked", name)
		}
	}
}

// bucketLabels are the le values a bucket boundary is stored under: the text format's
// ("300", Prometheus 2) and the normalized float ("300.0", Prometheus 3).
func bucketLabels(b float64) []string {
	s := strconv.FormatFloat(b, 'g', -1, 64)
	if strings.ContainsAny(s, ".e") {
		return []string{s}
	}
	return []string{s, s + ".0"}
}

// checkQuery parses q as PromQL and checks each series it selects is one the server exports
// (a histogram's _bucket, _sum and _count included), that an le matcher names a real bucket
// boundary, and that every selector carries the matchers in want.
func checkQuery(t *testing.T, where, q string, want ...*labels.Matcher) []string {
	t.Helper()
	names, errs := queryProblems(t, where, q, want...)
	for _, e := range errs {
		t.Error(e)
	}
	return names
}

// queryProblems is checkQuery's work, returning the problems.
func queryProblems(t *testing.T, where, q string, want ...*labels.Matcher) (names []string, errs []string) {
	t.Helper()
	errorf := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	exp := exportedMetrics(t)
	expr, err := promql.NewParser(promql.Options{}).ParseExpr(q)
	if err != nil {
		errorf("%s: %v\n%s", where, err, q)
		return nil, errs
	}
	promql.Inspect(expr, func(n promql.Node, _ []promql.Node) error {
		vs, ok := n.(*promql.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		var le []*labels.Matcher
		for _, m := range vs.LabelMatchers {
			switch {
			case m.Name == labels.MetricName && m.Type == labels.MatchEqual:
				name = m.Value
			case m.Name == labels.MetricName:
				errorf("%s: metric name matched by %s: use the name itself", where, m)
			case m.Name == "le":
				le = append(le, m)
			}
		}
		if name == "" {
			errorf("%s: selector %s has no metric name", where, vs)
			return nil
		}
		names = append(names, name)
		base, suffix := name, ""
		if _, ok := exp[name]; !ok {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, s); ok {
					base, suffix = b, s
				}
			}
		}
		e, ok := exp[base]
		switch {
		case !ok:
			errorf("%s: %s is not a metric the server exports", where, name)
			return nil
		case suffix == "_bucket" && e.Kind != "HistogramOpts":
			errorf("%s: %s: %s is a %s, not a histogram", where, name, base, e.Kind)
		case suffix != "" && e.Kind != "HistogramOpts" && e.Kind != "SummaryOpts":
			errorf("%s: %s: %s is a %s, it has no %s series", where, name, base, e.Kind, suffix)
		}
		if len(le) > 0 && suffix != "_bucket" {
			errorf("%s: le matcher on %s, which has no buckets", where, name)
		}
		for _, m := range le {
			hit := false
			for _, b := range e.Buckets {
				all := true
				for _, l := range bucketLabels(b) {
					all = all && m.Matches(l)
				}
				hit = hit || all
			}
			if !hit {
				errorf("%s: %s{%s} matches no bucket boundary of %s (in both le spellings): %v", where, name, m, base, e.Buckets)
			}
		}
		for _, w := range want {
			if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
				return m.Name == w.Name && m.Type == w.Type && m.Value == w.Value
			}) {
				errorf("%s: selector %s lacks %s", where, vs, w)
			}
		}
		return nil
	})
	return names, errs
}

func renderMonitoring(t *testing.T, vals map[string]any) []object {
	t.Helper()
	r, err := Render(context.Background(), testChart(t), DefaultRelease, vals)
	if err != nil {
		t.Fatal(err)
	}
	return objects(t, r)
}

func ruleValues(rule map[string]any) map[string]any {
	return map[string]any{"monitoring": map[string]any{"prometheusRule": rule}}
}

// The alerts issue 17 asks for, by what they watch.
var wantAlerts = []string{
	"CredentialWebhookJobsHeldLong",
	"CredentialWebhookJobsReleasedWithoutCredentials",
	"CredentialWebhookServiceAccountsPendingTooLong",
	"CredentialWebhookServiceAccountsPendingTooMany",
	"CredentialWebhookServiceAccountsPending",
	"CredentialWebhookSeedRoleLimitReached",
	"CredentialWebhookSeedNearRoleLimit",
	"CredentialWebhookCertificateExpiringSoon",
	"CredentialWebhookCertificateExpiryCritical",
	"CredentialWebhookIAMThrottled",
}

// checkRule validates the rendered PrometheusRule as Prometheus would load it and returns its
// alerts by name.
func checkRule(t *testing.T, objs []object, want ...*labels.Matcher) map[string]rulefmt.Rule {
	t.Helper()
	o := find(t, objs, "PrometheusRule", "credential-webhook")
	// prometheus-operator's own Go types: a misspelt field fails the strict decode.
	var typed monitoringv1.PrometheusRule
	into(t, o, &typed)
	// Prometheus's own rule file loader: YAML fields, durations, label names, PromQL and the
	// Go templates of the annotations.
	spec, err := yaml.Marshal(field(t, o.Map, "spec"))
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, promql.NewParser(promql.Options{}), slog.New(slog.DiscardHandler))
	for _, e := range errs {
		t.Errorf("rule file: %v", e)
	}
	if groups == nil {
		t.Fatalf("rule file not parsed:\n%s", spec)
	}
	alerts := map[string]rulefmt.Rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert (%q)", g.Name, r.Record)
				continue
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = r
			checkQuery(t, "alert "+r.Alert, r.Expr, want...)
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("alert %s: no %s", r.Alert, a)
				}
			}
		}
	}
	for _, a := range wantAlerts {
		if _, ok := alerts[a]; !ok {
			t.Errorf("no alert %s (alerts: %v)", a, slices.Sorted(maps.Keys(alerts)))
		}
	}
	return alerts
}

func TestPrometheusRule(t *testing.T) {
	objs := renderMonitoring(t, ruleValues(map[string]any{
		"enabled":     true,
		"labels":      map[string]any{"release": "kube-prometheus-stack"},
		"alertLabels": map[string]any{"team": "backup"},
	}))
	if n := count(objs, "ConfigMap"); n != count(renderMonitoring(t, nil), "ConfigMap") {
		t.Errorf("the PrometheusRule alone added ConfigMaps")
	}
	o := find(t, objs, "PrometheusRule", "credential-webhook")
	if got := str(field(t, o.Map, "metadata.labels.release")); got != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule label release=%s", got)
	}
	if got := str(field(t, o.Map, "metadata.namespace")); got != DefaultRelease.Namespace {
		t.Errorf("PrometheusRule namespace %s", got)
	}
	// By default every selector picks the release namespace's series only.
	alerts := checkRule(t, objs, labels.MustNewMatcher(labels.MatchEqual, "namespace", DefaultRelease.Namespace))
	for name, r := range alerts {
		if r.Labels["team"] != "backup" {
			t.Errorf("alert %s: alertLabels not applied: %v", name, r.Labels)
		}
	}
	// Thresholds from the values reach the expressions.
	for alert, want := range map[string]string{
		"CredentialWebhookJobsHeldLong":                  "credential_webhook_held_job_oldest_age_seconds{namespace=\"credential-webhook\"}) > 300",
		"CredentialWebhookServiceAccountsPending":        "credential_webhook_pending_serviceaccounts",
		"CredentialWebhookSeedNearRoleLimit":             "credential_webhook_derived_role_fill_ratio{namespace=\"credential-webhook\"}) > 0.9",
		"CredentialWebhookSeedRoleLimitForecast":         "predict_linear(credential_webhook_derived_role_fill_ratio{namespace=\"credential-webhook\"}[12h], 604800)) >= 1",
		"CredentialWebhookServiceAccountsPendingTooMany": "> 20",
		"CredentialWebhookCertificateExpiringSoon":       "< 21",
		"CredentialWebhookCertificateExpiryCritical":     "< 7",
		"CredentialWebhookIAMThrottled":                  "> 0",
		"CredentialWebhookGarbageCollectionStale":        "credential_webhook_gc_last_full_success_timestamp_seconds{namespace=\"credential-webhook\"}) > 3600",
	} {
		if !strings.Contains(alerts[alert].Expr, want) {
			t.Errorf("alert %s: %q not in %s", alert, want, alerts[alert].Expr)
		}
	}
	for _, a := range []string{"CredentialWebhookServiceAccountsPendingTooLong", "CredentialWebhookServiceAccountsPending"} {
		if got := alerts[a].For; got != model.Duration(30*60e9) {
			t.Errorf("%s for %v", a, got)
		}
	}
	// The sweeper gauge exists with --sweeper=false too: no alert about a sweeper switched off.
	if _, ok := alerts["CredentialWebhookNoSweeper"]; !ok {
		t.Error("no CredentialWebhookNoSweeper with the sweeper enabled")
	}
	vals := ruleValues(map[string]any{"enabled": true})
	vals["sweeper"] = map[string]any{"enabled": false}
	for _, a := range []string{"CredentialWebhookNoSweeper", "CredentialWebhookGarbageCollectionStale"} {
		if _, ok := checkRule(t, renderMonitoring(t, vals))[a]; ok {
			t.Errorf("%s with sweeper.enabled false", a)
		}
	}
}

// Thresholds across what the schema allows render valid rules and reach the expressions.
func TestPrometheusRuleValues(t *testing.T) {
	for _, tc := range []struct {
		minutes int
		ratio   float64
		days    int
	}{{1, 0.5, 1}, {5, 0.9, 0}, {45, 1, 30}} {
		t.Run(fmt.Sprintf("jobHeldMinutes=%d seedCapacityRatio=%v", tc.minutes, tc.ratio), func(t *testing.T) {
			alerts := checkRule(t, renderMonitoring(t, ruleValues(map[string]any{
				"enabled":                       true,
				"jobHeldMinutes":                tc.minutes,
				"seedCapacityRatio":             tc.ratio,
				"seedLimitForecastDays":         tc.days,
				"serviceAccountsPendingFor":     "1h30m",
				"serviceAccountsPendingPerHour": 100,
				"certificateExpiryWarningDays":  30,
				"certificateExpiryCriticalDays": 3,
				"iamThrottledCalls":             5,
				"gcStaleMinutes":                tc.minutes * 12,
				"seriesSelector":                `job="cw", cluster=~"prod-.*"`,
			})), labels.MustNewMatcher(labels.MatchEqual, "job", "cw"), labels.MustNewMatcher(labels.MatchRegexp, "cluster", "prod-.*"))
			if want := fmt.Sprintf("> %d", tc.minutes*60); !strings.HasSuffix(alerts["CredentialWebhookJobsHeldLong"].Expr, want) {
				t.Errorf("%q does not end %s", want, alerts["CredentialWebhookJobsHeldLong"].Expr)
			}
			if want := fmt.Sprintf("> %v", tc.ratio); !strings.HasSuffix(alerts["CredentialWebhookSeedNearRoleLimit"].Expr, want) {
				t.Errorf("%q does not end %s", want, alerts["CredentialWebhookSeedNearRoleLimit"].Expr)
			}
			forecast, ok := alerts["CredentialWebhookSeedRoleLimitForecast"]
			if ok != (tc.days > 0) {
				t.Errorf("seedLimitForecastDays %d: forecast alert rendered %v", tc.days, ok)
			} else if want := fmt.Sprintf("[12h], %d)) >= 1", tc.days*86400); ok && !strings.HasSuffix(forecast.Expr, want) {
				t.Errorf("%q does not end %s", forecast.Expr, want)
			}
			if want := fmt.Sprintf("> %d\nand on", tc.minutes*12*60); !strings.Contains(alerts["CredentialWebhookGarbageCollectionStale"].Expr, want) {
				t.Errorf("%q not in %s", want, alerts["CredentialWebhookGarbageCollectionStale"].Expr)
			}
			if got := alerts["CredentialWebhookServiceAccountsPending"].For; got != model.Duration(90*60e9) {
				t.Errorf("CredentialWebhookServiceAccountsPending for %v", got)
			}
		})
	}
}

// dashboardQueries returns the dashboard's PromQL: panel targets (Grafana's interval variables
// replaced) and the metric queries of its label_values variables.
func dashboardQueries(t *testing.T, d map[string]any) (panels map[string]string, variables map[string]string) {
	t.Helper()
	panels, variables = map[string]string{}, map[string]string{}
	interval := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	var walk func(title string, ps []any)
	walk = func(prefix string, ps []any) {
		for _, p := range ps {
			pm, _ := p.(map[string]any)
			title := prefix + str(pm["title"])
			targets, _ := pm["targets"].([]any)
			if pm["type"] != "row" && len(targets) == 0 {
				t.Errorf("panel %q has no query", title)
			}
			for _, tg := range targets {
				tm, _ := tg.(map[string]any)
				q, _ := tm["expr"].(string)
				panels[fmt.Sprintf("panel %q %v", title, tm["refId"])] = interval.Replace(q)
			}
			if sub, ok := pm["panels"].([]any); ok {
				walk(title+" / ", sub)
			}
		}
	}
	ps, _ := d["panels"].([]any)
	walk("", ps)
	tpl, _ := d["templating"].(map[string]any)
	list, _ := tpl["list"].([]any)
	for _, v := range list {
		vm, _ := v.(map[string]any)
		if vm["type"] != "query" {
			continue
		}
		q, _ := vm["query"].(map[string]any)
		m := labelValues.FindStringSubmatch(str(q["query"]))
		if m == nil {
			t.Errorf("variable %v: query %v is not label_values(<metric>, <label>)", vm["name"], q["query"])
			continue
		}
		variables[fmt.Sprintf("variable %v", vm["name"])] = m[1]
	}
	return panels, variables
}

func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d["uid"] != "credential-webhook" || d["title"] == "" {
		t.Errorf("uid %v title %v", d["uid"], d["title"])
	}
	panels, variables := dashboardQueries(t, d)
	if len(panels) < 10 {
		t.Errorf("only %d panel queries", len(panels))
	}
	// Every panel query follows the dashboard's namespace and job variables.
	sel := []*labels.Matcher{
		labels.MustNewMatcher(labels.MatchRegexp, "namespace", "$namespace"),
		labels.MustNewMatcher(labels.MatchRegexp, "job", "$job"),
	}
	used := map[string]bool{}
	for where, q := range panels {
		for _, n := range checkQuery(t, where, q, sel...) {
			used[n] = true
		}
	}
	for where, q := range variables {
		checkQuery(t, where, q)
	}
	// Panel ids are unique (Grafana links and edits panels by id).
	ids := map[string]bool{}
	var walk func([]any)
	walk = func(ps []any) {
		for _, p := range ps {
			pm, _ := p.(map[string]any)
			id := str(pm["id"])
			if ids[id] {
				t.Errorf("panel id %s used twice", id)
			}
			ids[id] = true
			if sub, ok := pm["panels"].([]any); ok {
				walk(sub)
			}
		}
	}
	ps, _ := d["panels"].([]any)
	walk(ps)
	// Not an error: a new metric may well stay off the dashboard; but say so.
	for name := range exportedMetrics(t) {
		if !used[name] && !used[name+"_bucket"] && !used[name+"_count"] {
			t.Logf("metric %s is on no dashboard panel", name)
		}
	}
}

func TestDashboardConfigMap(t *testing.T) {
	vals := map[string]any{"monitoring": map[string]any{"dashboard": map[string]any{
		"enabled":     true,
		"namespace":   "monitoring",
		"annotations": map[string]any{"grafana_folder": "Credentials"},
	}}}
	objs := renderMonitoring(t, vals)
	if n := count(objs, "PrometheusRule"); n != 0 {
		t.Errorf("the dashboard alone rendered %d PrometheusRules", n)
	}
	o := find(t, objs, "ConfigMap", "credential-webhook-dashboard")
	var cm corev1.ConfigMap
	into(t, o, &cm)
	if cm.Namespace != "monitoring" || cm.Labels["grafana_dashboard"] != "1" || cm.Annotations["grafana_folder"] != "Credentials" {
		t.Errorf("ConfigMap %s/%s labels %v annotations %v", cm.Namespace, cm.Name, cm.Labels, cm.Annotations)
	}
	if cm.Labels["app.kubernetes.io/name"] == "" {
		t.Errorf("ConfigMap lacks the chart's labels: %v", cm.Labels)
	}
	want, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["credential-webhook.json"]; got != strings.TrimSpace(string(want)) {
		t.Errorf("ConfigMap data differs from %s (%d vs %d bytes)", dashboardFile, len(got), len(want))
	}
	// Default namespace: the release's.
	vals["monitoring"].(map[string]any)["dashboard"].(map[string]any)["namespace"] = ""
	if ns := str(field(t, find(t, renderMonitoring(t, vals), "ConfigMap", "credential-webhook-dashboard").Map, "metadata.namespace")); ns != DefaultRelease.Namespace {
		t.Errorf("dashboard namespace %s", ns)
	}
}

// Both are off by default, like the ServiceMonitor: the default render (and so the golden files
// and the static manifests) does not change.
func TestMonitoringOffByDefault(t *testing.T) {
	objs := renderMonitoring(t, nil)
	if n := count(objs, "PrometheusRule"); n != 0 {
		t.Errorf("%d PrometheusRules by default", n)
	}
	for _, o := range objs {
		if o.Kind == "ConfigMap" && strings.HasSuffix(o.Name, "-dashboard") {
			t.Errorf("dashboard ConfigMap %s by default", o.Name)
		}
	}
}

func TestMonitoringSchemaRejects(t *testing.T) {
	tests := []struct {
		name string
		vals map[string]any
		want string
	}{
		{"rule typo", ruleValues(map[string]any{"enable": true}), "enable"},
		{"held minutes zero", ruleValues(map[string]any{"jobHeldMinutes": 0}), "jobHeldMinutes"},
		{"seed capacity ratio above 1", ruleValues(map[string]any{"seedCapacityRatio": 1.5}), "seedCapacityRatio"},
		{"pending for without a unit", ruleValues(map[string]any{"serviceAccountsPendingFor": "30"}), "serviceAccountsPendingFor"},
		{"severity in alertLabels", ruleValues(map[string]any{"alertLabels": map[string]any{"severity": "page"}}), "alertLabels"},
		{"braces in the series selector", ruleValues(map[string]any{"seriesSelector": `{job="x"}`}), "seriesSelector"},
		{"dashboard namespace invalid", map[string]any{"monitoring": map[string]any{"dashboard": map[string]any{"namespace": "Monitoring"}}}, "namespace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(context.Background(), testChart(t), DefaultRelease, tc.vals)
			if err == nil || !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want a schema error naming %q", err, tc.want)
			}
		})
	}
}

// The checks above really check: wrong names, suffixes, buckets and selectors are caught.
func TestQueryChecksCatch(t *testing.T) {
	ns := labels.MustNewMatcher(labels.MatchEqual, "namespace", "x")
	tests := []struct{ q, want string }{
		{`credential_webhook_held_jobs_total{namespace="x"}`, "not a metric the server exports"},
		{`rate(credential_webhook_requests_total_bucket{namespace="x"}[5m])`, "not a histogram"},
		{`credential_webhook_iam_calls_total_count{namespace="x"}`, "no _count series"},
		{`credential_webhook_held_jobs_bucket{namespace="x"}`, "not a histogram"},
		{`credential_webhook_hold_duration_seconds_bucket{namespace="x",le="400"}`, "matches no bucket boundary"},
		{`credential_webhook_hold_duration_seconds_bucket{namespace="x",le="300"}`, "matches no bucket boundary"}, // not "300.0" (Prometheus 3)
		{`{__name__=~"credential_webhook_.*",namespace="x"}`, "metric name matched by"},
		{`sum(credential_webhook_held_jobs)`, "lacks namespace"},
		{`sum(credential_webhook_held_jobs{namespace="x"}`, "unclosed"},
	}
	for _, tc := range tests {
		_, errs := queryProblems(t, "q", tc.q, ns)
		if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, tc.want) }) {
			t.Errorf("%s: problems %q, want one containing %q", tc.q, errs, tc.want)
		}
	}
	for _, ok := range []string{
		`histogram_quantile(0.9, sum by (le) (rate(credential_webhook_hold_duration_seconds_bucket{namespace="x"}[5m])))`,
		`credential_webhook_hold_duration_seconds_bucket{namespace="x",le=~"300(\\.0)?"} - credential_webhook_hold_duration_seconds_count{namespace="x"}`,
		`time() - credential_webhook_certificate_not_after_timestamp_seconds{namespace="x"}`,
	} {
		if _, errs := queryProblems(t, "q", ok, ns); len(errs) > 0 {
			t.Errorf("%s: %q", ok, errs)
		}
	}
}

// `helm lint --strict` passes with both switched on.
func TestMonitoringLint(t *testing.T) {
	vals := map[string]any{"monitoring": map[string]any{
		"prometheusRule": map[string]any{"enabled": true},
		"dashboard":      map[string]any{"enabled": true},
	}}
	if err := Lint(chartDir, DefaultRelease.Namespace, vals); err != nil {
		t.Error(err)
	}
}
