package pods

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/patches"
)

// fixtureConfig is the configuration of every case under testdata/ unless its config.yaml
// overrides fields.
func fixtureConfig() Config {
	return Config{Region: "eu-west-1", SidecarImage: "ghcr.io/klusters/credential-webhook:v0.1.0"}
}

// saMap serves ServiceAccounts from memory, answering NotFound like a lister.
type saMap map[string]*corev1.ServiceAccount

func (m saMap) Get(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	if sa, ok := m[ns+"/"+name]; ok {
		return sa, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, name)
}

type fixture struct {
	dir    string
	rawPod []byte
	sa     *corev1.ServiceAccount
	cfg    Config
}

func loadFixture(t testing.TB, dir string) fixture {
	t.Helper()
	f := fixture{dir: dir, cfg: fixtureConfig()}
	y, err := os.ReadFile(filepath.Join(dir, "pod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if f.rawPod, err = yaml.YAMLToJSON(y); err != nil {
		t.Fatalf("%s/pod.yaml: %v", dir, err)
	}
	y, err = os.ReadFile(filepath.Join(dir, "serviceaccount.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f.sa = &corev1.ServiceAccount{}
	if err := yaml.UnmarshalStrict(y, f.sa); err != nil {
		t.Fatalf("%s/serviceaccount.yaml: %v", dir, err)
	}
	if y, err = os.ReadFile(filepath.Join(dir, "config.yaml")); err == nil {
		if err := yaml.UnmarshalStrict(y, &f.cfg); err != nil {
			t.Fatalf("%s/config.yaml: %v", dir, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return f
}

// fixtureDirs lists the case folders under testdata.
func fixtureDirs(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		// testdata/fuzz holds FuzzDecodePod's regression inputs, if it ever fails.
		if e.IsDir() && e.Name() != "fuzz" {
			dirs = append(dirs, filepath.Join("testdata", e.Name()))
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no fixtures under testdata")
	}
	return dirs
}

// admit runs the plugin as the admission server would, on raw.
func admit(t testing.TB, f fixture, raw []byte) *admission.Response {
	t.Helper()
	p := NewPlugin(saMap{f.sa.Namespace + "/" + f.sa.Name: f.sa}, f.cfg)
	resp := &admission.Response{Patch: patches.NewBuilder()}
	req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: raw}
	if err := p.Admit(context.Background(), req, resp); err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return resp
}

// TestFixtures walks testdata/<case>/: pod.yaml and serviceaccount.yaml (and optional config.yaml)
// in, patch.json (and warnings.txt when there are warnings) expected. UPDATE_GOLDEN=1 rewrites
// the expectations; review the diff. Beyond the golden files, every case checks properties that
// hold whatever the case: the patch applies to the raw Pod, removes or changes nothing that was
// there (so unknown fields survive), duplicates no env var, mount or volume, and a second run on
// the patched Pod adds nothing.
func TestFixtures(t *testing.T) {
	update := os.Getenv("UPDATE_GOLDEN") == "1"
	for _, dir := range fixtureDirs(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			f := loadFixture(t, dir)
			resp := admit(t, f, f.rawPod)

			ops := resp.Patch.Ops()
			gotPatch, err := json.MarshalIndent(ops, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			if len(ops) == 0 {
				gotPatch = []byte("[]")
			}
			gotPatch = append(gotPatch, '\n')
			var gotWarnings []byte
			if len(resp.Warnings) > 0 {
				gotWarnings = []byte(strings.Join(resp.Warnings, "\n") + "\n")
			}
			golden(t, filepath.Join(dir, "patch.json"), gotPatch, update)
			golden(t, filepath.Join(dir, "warnings.txt"), gotWarnings, update)

			patched := applyPatch(t, f.rawPod, gotPatch)
			var before, after any
			mustUnmarshal(t, f.rawPod, &before)
			mustUnmarshal(t, patched, &after)
			if path, ok := contains(before, after, ""); !ok {
				t.Errorf("patch removed or changed %s of the original Pod", path)
			}
			checkNoDuplicates(t, patched)
			if again := admit(t, f, patched); again.Patch.Len() != 0 {
				t.Errorf("second run on the patched Pod is not a no-op: %v", again.Patch.Ops())
			}
		})
	}
}

func golden(t *testing.T, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if got == nil {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			return
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		want, err = nil, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (UPDATE_GOLDEN=1 to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// applyPatch applies the patch with evanphx/json-patch, the library the apiserver itself uses
// to apply webhook patches.
func applyPatch(t testing.TB, doc, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	return out
}

func mustUnmarshal(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// contains reports whether everything in a is still in b: map keys with contained values, array
// elements in order (b may have elements inserted anywhere), equal scalars. It returns the first
// JSON path that is missing.
func contains(a, b any, path string) (string, bool) {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return path, false
		}
		for k, v := range av {
			w, ok := bv[k]
			if !ok {
				return path + "/" + k, false
			}
			if p, ok := contains(v, w, path+"/"+k); !ok {
				return p, false
			}
		}
		return "", true
	case []any:
		bv, ok := b.([]any)
		if !ok {
			return path, false
		}
		j := 0
		for i, v := range av {
			for j < len(bv) {
				if _, ok := contains(v, bv[j], ""); ok {
					break
				}
				j++
			}
			if j == len(bv) {
				return path + "/" + strconv.Itoa(i), false
			}
			j++
		}
		return "", true
	default:
		return path, reflect.DeepEqual(a, b)
	}
}

// checkNoDuplicates decodes the patched Pod and fails on a repeated env var name or mount path in
// a container, or a repeated volume name: what the apiserver would reject or, for env, silently
// resolve to the last entry.
func checkNoDuplicates(t *testing.T, raw []byte) {
	t.Helper()
	var pod corev1.Pod
	mustUnmarshal(t, raw, &pod)
	seen := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if seen[v.Name] {
			t.Errorf("volume %s twice", v.Name)
		}
		seen[v.Name] = true
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		env, mounts := map[string]bool{}, map[string]bool{}
		for _, e := range c.Env {
			if env[e.Name] {
				t.Errorf("container %s: env %s twice", c.Name, e.Name)
			}
			env[e.Name] = true
		}
		for _, m := range c.VolumeMounts {
			if mounts[m.MountPath] {
				t.Errorf("container %s: mount path %s twice", c.Name, m.MountPath)
			}
			mounts[m.MountPath] = true
			if !seen[m.Name] {
				t.Errorf("container %s mounts volume %s, which the Pod lacks", c.Name, m.Name)
			}
		}
	}
}

// TestUnknownFieldsSurvive spells out, for the fixture with fields newer than our k8s.io/api,
// what contains() checks generically: the patched Pod still carries them where they were.
func TestUnknownFieldsSurvive(t *testing.T) {
	f := loadFixture(t, filepath.Join("testdata", "native-sidecar-present"))
	resp := admit(t, f, f.rawPod)
	if resp.Patch.Len() == 0 {
		t.Fatal("expected a patch")
	}
	patch, err := json.Marshal(resp.Patch.Ops())
	if err != nil {
		t.Fatal(err)
	}
	var pod struct {
		Spec struct {
			FuturePodField map[string]any `json:"futurePodField"`
			InitContainers []struct {
				Name                 string         `json:"name"`
				RestartPolicy        string         `json:"restartPolicy"`
				FutureContainerField map[string]any `json:"futureContainerField"`
				Env                  []corev1.EnvVar
			} `json:"initContainers"`
			Containers []struct {
				FutureContainerField map[string]any   `json:"futureContainerField"`
				VolumeMounts         []map[string]any `json:"volumeMounts"`
			} `json:"containers"`
			Volumes []map[string]any `json:"volumes"`
		} `json:"spec"`
	}
	mustUnmarshal(t, applyPatch(t, f.rawPod, patch), &pod)
	s := pod.Spec
	if s.FuturePodField["enabled"] != true {
		t.Errorf("spec.futurePodField lost: %v", s.FuturePodField)
	}
	if len(s.InitContainers) != 1 || s.InitContainers[0].RestartPolicy != "Always" ||
		s.InitContainers[0].FutureContainerField["mode"] != "shiny" || len(s.InitContainers[0].FutureContainerField["list"].([]any)) != 3 {
		t.Errorf("native sidecar changed: %+v", s.InitContainers)
	}
	if !slices.ContainsFunc(s.InitContainers[0].Env, func(e corev1.EnvVar) bool { return e.Name == EnvRoleARN }) {
		t.Errorf("native sidecar did not get %s: %v", EnvRoleARN, s.InitContainers[0].Env)
	}
	if s.Containers[0].FutureContainerField["mode"] != "plain" || s.Containers[0].VolumeMounts[0]["futureMountField"] != "x" {
		t.Errorf("container's unknown fields lost: %+v", s.Containers[0])
	}
	if s.Volumes[0]["futureVolumeField"] != float64(7) {
		t.Errorf("volume's unknown field lost: %v", s.Volumes[0])
	}
}

// TestDecodeViewEquivalent: the plugin decodes only what inject reads (decodePod); on every
// fixture, inject must produce the same operations and warnings from that view as Inject from
// the fully decoded Pod.
func TestDecodeViewEquivalent(t *testing.T) {
	for _, dir := range fixtureDirs(t) {
		f := loadFixture(t, dir)
		var full corev1.Pod
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(f.rawPod, &full); err != nil {
			t.Fatal(err)
		}
		skel, err := decodePod(f.rawPod)
		if err != nil {
			t.Fatal(err)
		}
		b1, b2 := patches.NewBuilder(), patches.NewBuilder()
		w1 := Inject(&full, f.sa, f.cfg, b1)
		w2, _ := inject(skel, f.sa, f.cfg, b2)
		j1, _ := json.Marshal(b1.Ops())
		j2, _ := json.Marshal(b2.Ops())
		if !bytes.Equal(j1, j2) || !reflect.DeepEqual(w1, w2) {
			t.Errorf("%s: skeleton Pod gives a different result:\nfull: %s %q\nview: %s %q", dir, j1, w1, j2, w2)
		}
	}
}
