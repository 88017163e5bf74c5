package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"sigs.k8s.io/yaml"
)

const chartDir = "../chart"

var (
	chartOnce   sync.Once
	loadedChart *chart.Chart
	chartErr    error
)

// testChart loads the chart once per test binary; renders never modify it.
func testChart(t *testing.T) *chart.Chart {
	t.Helper()
	chartOnce.Do(func() { loadedChart, chartErr = LoadChart(chartDir) })
	if chartErr != nil {
		t.Fatal(chartErr)
	}
	return loadedChart
}

// renderFile renders the chart with a values file from testdata/values (name without .yaml).
func renderFile(t *testing.T, rel Release, name string) *Rendered {
	t.Helper()
	vals, err := ReadValues(filepath.Join("testdata", "values", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render(context.Background(), testChart(t), rel, vals)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// object is one rendered document, parsed.
type object struct {
	Template string
	Kind     string
	Name     string
	YAML     string
	Map      map[string]any
}

func objects(t *testing.T, r *Rendered) []object {
	t.Helper()
	docs, err := Documents(r.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]object, 0, len(docs))
	for _, d := range docs {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d.YAML), &m); err != nil {
			t.Fatalf("%s: %v\n%s", d.Template, err, d.YAML)
		}
		md, _ := m["metadata"].(map[string]any)
		name, _ := md["name"].(string)
		kind, _ := m["kind"].(string)
		out = append(out, object{Template: d.Template, Kind: kind, Name: name, YAML: d.YAML, Map: m})
	}
	return out
}

// find returns the only object of kind (and name, when not empty); it fails the test otherwise.
func find(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	var hits []object
	for _, o := range objs {
		if o.Kind == kind && (name == "" || o.Name == name) {
			hits = append(hits, o)
		}
	}
	if len(hits) != 1 {
		t.Fatalf("want exactly one %s %q, found %d (objects: %s)", kind, name, len(hits), kinds(objs))
	}
	return hits[0]
}

func count(objs []object, kind string) int {
	n := 0
	for _, o := range objs {
		if o.Kind == kind {
			n++
		}
	}
	return n
}

func kinds(objs []object) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.Kind+"/"+o.Name)
	}
	return strings.Join(s, " ")
}

// into decodes an object strictly into a typed struct: an unknown field (a typo in a template)
// fails the test.
func into(t *testing.T, o object, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(o.YAML), v); err != nil {
		t.Fatalf("%s %s (%s) does not match its API type: %v", o.Kind, o.Name, o.Template, err)
	}
}

// field reads a nested field of an untyped object ("spec.issuerRef.name").
func field(t *testing.T, m map[string]any, p string) any {
	t.Helper()
	var cur any = m
	for _, k := range strings.Split(p, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%s: %q is not an object (%T)", p, k, cur)
		}
		cur = mm[k]
	}
	return cur
}

func str(v any) string { return fmt.Sprint(v) }
