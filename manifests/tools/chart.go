package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"regexp"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	release "helm.sh/helm/v4/pkg/release/v1"
)

// Release names the release a chart is rendered as.
type Release struct {
	Name, Namespace string
}

// KubeVersion is the Kubernetes version renders and lints assume: the one the e2e harness runs.
// Without it the SDK assumes its own default (v1.20 under go test), below the chart's
// kubeVersion constraint.
const KubeVersion = "v1.37.2"

// DefaultRelease is how the static manifests are rendered and what the README installs.
var DefaultRelease = Release{Name: "credential-webhook", Namespace: "credential-webhook"}

// Rendered is one render of the chart, as `helm template` prints it.
type Rendered struct {
	// Manifest is every object, in Helm's install order, each document headed by
	// "# Source: <chart>/templates/<file>".
	Manifest string
	// Notes is the rendered NOTES.txt.
	Notes string
}

// LoadChart reads the chart folder.
func LoadChart(dir string) (*chart.Chart, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return ch, nil
}

// ReadValues merges values files in order (later files win), as `helm -f a -f b` does.
func ReadValues(files ...string) (map[string]any, error) {
	opts := values.Options{ValueFiles: files}
	v, err := opts.MergeValues(nil)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return v, nil
}

// Render renders ch with vals (merged over values.yaml) client-side, exactly as `helm template`
// and the dry run of `helm install` do: action.Install with a client dry run, schema validation
// and the chart's kubeVersion check included. It talks to no cluster.
func Render(ctx context.Context, ch *chart.Chart, rel Release, vals map[string]any) (*Rendered, error) {
	install := action.NewInstall(action.NewConfiguration(action.ConfigurationSetLogger(slog.NewTextHandler(io.Discard, nil))))
	install.DryRunStrategy = action.DryRunClient
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	install.KubeVersion = kv
	install.ReleaseName = rel.Name
	install.Namespace = rel.Namespace
	// No release storage to check names against: this is a render, not an install.
	install.Replace = true
	if vals == nil {
		vals = map[string]any{}
	}
	r, err := install.RunWithContext(ctx, ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render %s as %s/%s: %w", ch.Name(), rel.Namespace, rel.Name, err)
	}
	out, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("render %s: unexpected release type %T", ch.Name(), r)
	}
	notes := ""
	if out.Info != nil {
		notes = out.Info.Notes
	}
	return &Rendered{Manifest: out.Manifest, Notes: notes}, nil
}

// Lint runs `helm lint --strict` (action.Lint) on the chart folder with vals: every warning
// counts as an error.
func Lint(dir, namespace string, vals map[string]any) error {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = namespace
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return err
	}
	l.KubeVersion = kv
	res := l.Run([]string{dir}, vals)
	var errs []error
	for _, m := range res.Messages {
		// INFO messages (e.g. "icon is recommended") are advice, not defects.
		if m.Severity > support.InfoSev {
			errs = append(errs, fmt.Errorf("%s: %w", m.Path, m.Err))
		}
	}
	errs = append(errs, res.Errors...)
	if len(errs) > 0 {
		return fmt.Errorf("helm lint %s: %w", dir, errors.Join(dedupe(errs)...))
	}
	return nil
}

func dedupe(errs []error) []error {
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		if !seen[e.Error()] {
			seen[e.Error()] = true
			out = append(out, e)
		}
	}
	return out
}

// Document is one rendered object's YAML and the template it came from.
type Document struct {
	// Template is the file under templates/, e.g. "rbac.yaml".
	Template string
	// YAML is the document without the "# Source:" line.
	YAML string
}

var sourceLine = regexp.MustCompile(`^# Source: [^/]+/templates/(.+)$`)

// Documents splits a rendered manifest into its documents, in order, each with its template.
func Documents(manifest string) ([]Document, error) {
	var out []Document
	for _, part := range strings.Split(manifest, "\n---\n") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "---\n")
		if part == "" {
			continue
		}
		first, rest, _ := strings.Cut(part, "\n")
		m := sourceLine.FindStringSubmatch(first)
		if m == nil {
			return nil, fmt.Errorf("rendered document without a Source line: %.80q", part)
		}
		if strings.TrimSpace(rest) == "" {
			continue
		}
		out = append(out, Document{Template: path.Clean(m[1]), YAML: strings.TrimRight(rest, "\n") + "\n"})
	}
	return out, nil
}
