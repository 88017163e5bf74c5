package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func staticFiles(t *testing.T) map[string][]byte {
	t.Helper()
	vals, err := ReadValues("static-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render(context.Background(), testChart(t), DefaultRelease, vals)
	if err != nil {
		t.Fatal(err)
	}
	files, err := StaticFiles(r)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// The checked-in manifests/ are a fresh render of the chart (what scripts/manifests.sh --check
// enforces); a chart change without `make manifests` fails here.
func TestStaticManifestsUpToDate(t *testing.T) {
	changed, stale, err := Diff("..", staticFiles(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(changed)+len(stale) > 0 {
		t.Errorf("manifests/ out of date: changed %v, stale %v; run make manifests", changed, stale)
	}
}

// The kustomize base lists every generated YAML file, each marked generated; the IAM policy is a
// JSON file with its placeholders, not an object to apply; the base carries everything a
// provider switched on later by an env patch needs.
func TestStaticFiles(t *testing.T) {
	files := staticFiles(t)
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(files["kustomization.yaml"], &k); err != nil {
		t.Fatal(err)
	}
	var yamls []string
	for name, b := range files {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		if !bytes.HasPrefix(b, []byte(GeneratedHeader)) {
			t.Errorf("%s lacks the generated header", name)
		}
		if name != "kustomization.yaml" {
			yamls = append(yamls, name)
		}
	}
	slices.Sort(yamls)
	listed := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(listed, yamls) {
		t.Errorf("kustomization lists %v, the render wrote %v", listed, yamls)
	}
	if k.Resources[0] != "namespace.yaml" {
		t.Errorf("the Namespace must come first, resources are %v", k.Resources)
	}
	for _, want := range []string{"namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "certificates.yaml", "deployment.yaml", "service.yaml", "poddisruptionbudget.yaml", "mutatingwebhookconfiguration.yaml", "admissionpolicy.yaml"} {
		if _, ok := files[want]; !ok {
			t.Errorf("static manifests lack %s", want)
		}
	}
	if _, ok := files["iam-policy.yaml"]; ok {
		t.Error("the IAM policy ConfigMap is in the kustomize base; it belongs in iam-policy.json only")
	}
	var policy struct{ Statement []map[string]any }
	if err := json.Unmarshal(files["iam-policy.json"], &policy); err != nil {
		t.Fatalf("iam-policy.json: %v", err)
	}
	for _, ph := range []string{"ACCOUNT_ID", "SEED_PATH/SEED_NAME", "SEED_MANAGED_POLICY", "SEED_TAG_KEY", "PERMISSIONS_BOUNDARY"} {
		if !bytes.Contains(files["iam-policy.json"], []byte(ph)) {
			t.Errorf("iam-policy.json lacks the placeholder %s", ph)
		}
	}
	if len(policy.Statement) != 8 {
		t.Errorf("iam-policy.json has %d statements, want 8", len(policy.Statement))
	}
	for _, want := range []string{"use-managed-identity", "clusterrolebindings"} {
		if !bytes.Contains(files["rbac.yaml"], []byte(want)) {
			t.Errorf("static rbac.yaml lacks %s", want)
		}
	}
	if !bytes.Contains(files["mutatingwebhookconfiguration.yaml"], []byte("pods.credential-webhook.klusters.dev")) {
		t.Error("static webhook configuration lacks the Pod webhook")
	}
	// The admission policy's parameters, the one place a kustomize user names the allowed
	// requesters (for the server and the policy): empty, nobody, as the server's default.
	var params struct {
		Kind     string
		Metadata struct{ Name, Namespace string }
		Data     map[string]string
	}
	docs := bytes.Split(files["admissionpolicy.yaml"], []byte("\n---\n"))
	if err := yaml.Unmarshal(docs[0], &params); err != nil {
		t.Fatal(err)
	}
	if params.Kind != "ConfigMap" || params.Metadata.Name != "credential-webhook-admission-policy" || params.Metadata.Namespace != "credential-webhook" ||
		params.Data["allowedRequesters"] != "" || params.Data["selfUsername"] != "system:serviceaccount:credential-webhook:credential-webhook" {
		t.Errorf("static admission policy parameters %+v", params)
	}
	for _, kind := range []string{"kind: ValidatingAdmissionPolicy\n", "kind: ValidatingAdmissionPolicyBinding\n"} {
		if !bytes.Contains(files["admissionpolicy.yaml"], []byte(kind)) {
			t.Errorf("static admissionpolicy.yaml lacks %s", strings.TrimSpace(kind))
		}
	}
	if !bytes.Contains(files["namespace.yaml"], []byte("pod-security.kubernetes.io/enforce: restricted")) {
		t.Error("static Namespace is not Pod Security restricted")
	}
}

// Write replaces what it renders and removes only the generated files it no longer renders;
// hand-written files in the folder are never touched. Diff reports both kinds of difference.
func TestWriteAndDiff(t *testing.T) {
	dir := t.TempDir()
	mustWrite := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("old.yaml", GeneratedHeader+"kind: Gone\n")
	mustWrite("overlay-notes.yaml", "# hand-written\n")
	mustWrite("a.yaml", "outdated\n")
	files := map[string][]byte{"a.yaml": []byte(GeneratedHeader + "kind: A\n"), "b.json": []byte("{}\n")}

	changed, stale, err := Diff(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"a.yaml", "b.json"}) || !slices.Equal(stale, []string{"old.yaml"}) {
		t.Errorf("Diff before Write: changed %v stale %v", changed, stale)
	}
	if err := Write(dir, files); err != nil {
		t.Fatal(err)
	}
	changed, stale, err = Diff(dir, files)
	if err != nil || len(changed)+len(stale) != 0 {
		t.Errorf("Diff after Write: changed %v stale %v err %v", changed, stale, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "old.yaml")); !os.IsNotExist(err) {
		t.Errorf("stale generated file kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "overlay-notes.yaml")); err != nil {
		t.Errorf("hand-written file removed: %v", err)
	}
}

// Documents keeps every document with its template, in order, and drops empty ones.
func TestDocuments(t *testing.T) {
	manifest := "---\n# Source: c/templates/a.yaml\nkind: A\n---\n# Source: c/templates/b.yaml\n\n---\n# Source: c/templates/a.yaml\nkind: A2\nx: |\n  ---\n"
	docs, err := Documents(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0].Template != "a.yaml" || docs[0].YAML != "kind: A\n" || docs[1].YAML != "kind: A2\nx: |\n  ---\n" {
		t.Errorf("docs %+v", docs)
	}
	if _, err := Documents("kind: NoSource\n"); err == nil {
		t.Error("a document without its Source line was accepted")
	}
}
