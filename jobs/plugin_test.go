package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

// fixtureNow is the clock of every fixture, so held-since is stable in the golden patches.
var fixtureNow = time.Date(2026, 5, 6, 12, 55, 38, 0, time.UTC)

// saMap serves ServiceAccounts from memory, answering NotFound like a lister; err, when set, is
// returned for every read (an apiserver that cannot be reached).
type saMap struct {
	m   map[string]*corev1.ServiceAccount
	err error
}

func (s saMap) Get(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	if s.err != nil {
		return nil, s.err
	}
	if sa, ok := s.m[ns+"/"+name]; ok {
		return sa, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, name)
}

var metaJob = metav1.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}

type readySet map[string]bool

func (r readySet) Ready(ns, name string) bool { return r[ns+"/"+name] }

// caseConfig is testdata/<case>/case.json (optional).
type caseConfig struct {
	// KnownReady: the sweeper has proven the ServiceAccount's credentials.
	KnownReady bool `json:"knownReady"`
	// ServiceAccountError: reading the ServiceAccount fails with this (not NotFound).
	ServiceAccountError string `json:"serviceAccountError"`
}

type fixture struct {
	rawJob []byte
	sas    saMap
	ready  readySet
}

func loadFixture(t testing.TB, dir string) fixture {
	t.Helper()
	var f fixture
	var err error
	if f.rawJob, err = os.ReadFile(filepath.Join(dir, "job.json")); err != nil {
		t.Fatal(err)
	}
	f.sas.m = map[string]*corev1.ServiceAccount{}
	f.ready = readySet{}
	if b, err := os.ReadFile(filepath.Join(dir, "serviceaccount.json")); err == nil {
		sa := &corev1.ServiceAccount{}
		if err := json.Unmarshal(b, sa); err != nil {
			t.Fatalf("%s/serviceaccount.json: %v", dir, err)
		}
		f.sas.m[sa.Namespace+"/"+sa.Name] = sa
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var cfg caseConfig
	if b, err := os.ReadFile(filepath.Join(dir, "case.json")); err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			t.Fatalf("%s/case.json: %v", dir, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if cfg.ServiceAccountError != "" {
		f.sas.err = apierrors.NewServiceUnavailable(cfg.ServiceAccountError)
	}
	if cfg.KnownReady {
		for k := range f.sas.m {
			f.ready[k] = true
		}
	}
	return f
}

func newPlugin(f fixture) *Plugin {
	p := NewPlugin(f.sas, f.ready)
	p.Now = func() time.Time { return fixtureNow }
	return p
}

// review runs the Job route as production does: the own-annotations guard, then this plugin,
// sharing one patch Builder.
func review(t testing.TB, f fixture, raw []byte, dryRun bool, withGuard bool) *admission.Response {
	t.Helper()
	resp := &admission.Response{Patch: patches.NewBuilder()}
	req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: raw, DryRun: dryRun,
		Kind: metaJob}
	req.UserInfo.Username = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	plugins := []admission.Plugin{newPlugin(f)}
	if withGuard {
		plugins = append([]admission.Plugin{admission.OwnAnnotationsGuard{}}, plugins...)
	}
	for _, p := range plugins {
		if err := p.Admit(context.Background(), req, resp); err != nil {
			t.Fatalf("%s: %v", p.Name(), err)
		}
	}
	return resp
}

// TestFixtures walks testdata/<case>/: job.json (the object of a Job CREATE review) and
// serviceaccount.json (absent: the ServiceAccount does not exist) in, optional case.json, and
// patch.json and warnings.txt expected (UPDATE_GOLDEN=1 rewrites them; review the diff). Beyond
// the golden files every case checks properties: the patch applies to the raw Job and touches
// nothing but spec.suspend and our annotations; a held Job comes out suspended with a parseable
// held-since; dryRun gives the same patch; and a second review of the patched Job adds nothing.
func TestFixtures(t *testing.T) {
	dirs, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	update := os.Getenv("UPDATE_GOLDEN") == "1"
	n := 0
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		n++
		t.Run(d.Name(), func(t *testing.T) {
			dir := filepath.Join("testdata", d.Name())
			f := loadFixture(t, dir)
			resp := review(t, f, f.rawJob, false, true)
			gotPatch := marshalOps(t, resp)
			var gotWarnings []byte
			if len(resp.Warnings) > 0 {
				gotWarnings = []byte(strings.Join(resp.Warnings, "\n") + "\n")
			}
			golden(t, filepath.Join(dir, "patch.json"), gotPatch, update)
			golden(t, filepath.Join(dir, "warnings.txt"), gotWarnings, update)

			if dry := marshalOps(t, review(t, f, f.rawJob, true, true)); !bytes.Equal(dry, gotPatch) {
				t.Errorf("dryRun patch differs:\n%s\nwant\n%s", dry, gotPatch)
			}
			for _, op := range resp.Patch.Ops() {
				if op.Path != "/spec/suspend" && !strings.HasPrefix(op.Path, "/metadata/annotations") {
					t.Errorf("patch touches %s; only spec.suspend and annotations may change", op.Path)
				}
			}
			patched := applyPatch(t, f.rawJob, gotPatch)
			checkPreserved(t, f.rawJob, patched)
			if resp.Patch.Len() == 0 {
				return
			}
			job, err := decodeJob(patched)
			if err != nil {
				t.Fatal(err)
			}
			if job.Spec.Suspend == nil || !*job.Spec.Suspend {
				t.Error("held Job is not suspended")
			}
			if got := job.Annotations[annotations.HeldSince]; got != fixtureNow.Format(time.RFC3339) {
				t.Errorf("held-since = %q, want %q", got, fixtureNow.Format(time.RFC3339))
			}
			if job.Annotations[annotations.HoldReason] == "" {
				t.Error("held Job has no hold reason")
			}
			if len(resp.Warnings) == 0 {
				t.Error("held Job without an admission warning")
			}
			if again := review(t, f, patched, false, false); again.Patch.Len() != 0 {
				t.Errorf("second review of the held Job is not a no-op: %v", again.Patch.Ops())
			}
		})
	}
	if n == 0 {
		t.Fatal("no fixtures in testdata/")
	}
}

// checkPreserved asserts that every field of before is in after unchanged, except spec.suspend
// and our own annotations.
func checkPreserved(t *testing.T, before, after []byte) {
	t.Helper()
	var b, a map[string]any
	if err := json.Unmarshal(before, &b); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(after, &a); err != nil {
		t.Fatal(err)
	}
	strip := func(m map[string]any) {
		delete(m["spec"].(map[string]any), "suspend")
		if ann, ok := m["metadata"].(map[string]any)["annotations"].(map[string]any); ok {
			delete(ann, annotations.HoldReason)
			delete(ann, annotations.HeldSince)
			if len(ann) == 0 {
				delete(m["metadata"].(map[string]any), "annotations")
			}
		}
	}
	strip(b)
	strip(a)
	bb, _ := json.Marshal(b)
	ab, _ := json.Marshal(a)
	if !bytes.Equal(bb, ab) {
		t.Errorf("patch changed more than spec.suspend and our annotations:\nbefore %s\nafter  %s", bb, ab)
	}
}

func marshalOps(t testing.TB, resp *admission.Response) []byte {
	t.Helper()
	ops := resp.Patch.Ops()
	if len(ops) == 0 {
		return []byte("[]\n")
	}
	b, err := json.MarshalIndent(ops, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func applyPatch(t testing.TB, raw, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch to the raw Job: %v", err)
	}
	return out
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

// A decode failure denies with 400 rather than failing as an internal error, and a non-CREATE
// review is left alone.
func TestAdmitMalformedAndOtherOperations(t *testing.T) {
	p := NewPlugin(saMap{}, nil)
	resp := &admission.Response{Patch: patches.NewBuilder()}
	err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Create, Object: []byte(`{"spec":`)}, resp)
	if d, ok := admission.IsDenied(err); !ok || d.Code != 400 {
		t.Errorf("malformed Job: err = %v, want a 400 denial", err)
	}
	raw, err := os.ReadFile("testdata/backup-aws-role-not-assigned/job.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Update, Object: raw}, resp); err != nil || resp.Patch.Len() != 0 {
		t.Errorf("UPDATE: err %v, ops %v; want nothing", err, resp.Patch.Ops())
	}
}

// BenchmarkJobHold measures one Job review that ends in a hold: decoding the 4 KB KubeStash
// backup Job, the ServiceAccount lookup (in memory), the decision and the patch.
func BenchmarkJobHold(b *testing.B) {
	f := loadFixture(b, "testdata/backup-aws-assigned-unverified")
	p := newPlugin(f)
	req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: f.rawJob}
	ctx := context.Background()
	b.SetBytes(int64(len(f.rawJob)))
	b.ReportAllocs()
	for b.Loop() {
		resp := &admission.Response{Patch: patches.NewBuilder()}
		if err := p.Admit(ctx, req, resp); err != nil || resp.Patch.Len() == 0 {
			b.Fatalf("err %v, ops %d", err, resp.Patch.Len())
		}
		if _, err := json.Marshal(resp.Patch.Ops()); err != nil {
			b.Fatal(err)
		}
	}
}

// On UPDATE the plugin turns back a resume of a Job this server holds, by anyone but the server
// itself (the KubeStash operator resumes Jobs once the role ARN is on the ServiceAccount, before
// the trust policy works); everything else passes untouched.
func TestAdmitUpdateKeepsHeldJobsHeld(t *testing.T) {
	const self = "system:serviceaccount:credential-webhook:credential-webhook"
	const operator = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	job := func(suspend *bool, ann map[string]string, labels map[string]string) []byte {
		b, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"namespace": "demo", "labels": labels, "annotations": ann},
			"spec":     map[string]any{"suspend": suspend, "template": map[string]any{"spec": map[string]any{"serviceAccountName": "sa"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	yes, no := true, false
	held := map[string]string{annotations.HeldSince: "2026-05-06T12:55:38Z", annotations.HoldReason: "CredentialsUnverified"}
	kubestash := map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue}
	kueue := map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue, "kueue.x-k8s.io/queue-name": "q"}
	for _, tc := range []struct {
		name      string
		user      string
		old, cur  []byte
		wantPatch bool
	}{
		{"operator resumes a held Job", operator, job(&yes, held, kubestash), job(&no, held, kubestash), true},
		{"the server releases it", self, job(&yes, held, kubestash), job(&no, nil, kubestash), false},
		{"operator resumes a Job not held by us", operator, job(&yes, nil, kubestash), job(&no, nil, kubestash), false},
		{"operator resumes a held Job in a Kueue queue", operator, job(&yes, held, kueue), job(&no, held, kueue), false},
		{"operator changes something else", operator, job(&yes, held, kubestash), job(&yes, held, kubestash), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPlugin(saMap{}, nil)
			p.Self = map[string]bool{self: true}
			resp := &admission.Response{Patch: patches.NewBuilder()}
			req := &admission.Request{Operation: admissionv1.Update, Namespace: "demo", Object: tc.cur, OldObject: tc.old}
			req.UserInfo.Username = tc.user
			if err := p.Admit(context.Background(), req, resp); err != nil {
				t.Fatal(err)
			}
			ops := resp.Patch.Ops()
			if !tc.wantPatch {
				if len(ops) != 0 || len(resp.Warnings) != 0 {
					t.Fatalf("ops %v, warnings %v; want none", ops, resp.Warnings)
				}
				return
			}
			if len(ops) != 1 || ops[0].Path != "/spec/suspend" || ops[0].Value != true || len(resp.Warnings) != 1 {
				t.Fatalf("ops %v, warnings %v; want spec.suspend kept true with a warning", ops, resp.Warnings)
			}
			// The patch applies to the object the operator sent and keeps it suspended.
			patch, _ := json.Marshal(ops)
			p2, err := jsonpatchapply.DecodePatch(patch)
			if err != nil {
				t.Fatal(err)
			}
			out, err := p2.Apply(tc.cur)
			if err != nil || !bytes.Contains(out, []byte(`"suspend":true`)) {
				t.Fatalf("patched object %s (err %v)", out, err)
			}
		})
	}
	p := NewPlugin(saMap{}, nil)
	err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Update, Object: job(&no, held, kubestash), OldObject: []byte(`{"spec":`)},
		&admission.Response{Patch: patches.NewBuilder()})
	if d, ok := admission.IsDenied(err); !ok || d.Code != 400 {
		t.Errorf("malformed old Job: err = %v, want a 400 denial", err)
	}
}

// A KubeStash Job whose spec.managedBy names another controller is never held: that controller
// owns spec.suspend (the decoder must read spec.managedBy for hold.Screen to see it).
func TestAdmitCreateManagedByAnotherController(t *testing.T) {
	raw, err := os.ReadFile("testdata/backup-aws-role-not-assigned/job.json")
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	f := loadFixture(t, "testdata/backup-aws-role-not-assigned")
	p := newPlugin(f)
	admit := func(raw []byte) int {
		resp := &admission.Response{Patch: patches.NewBuilder()}
		if err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: raw}, resp); err != nil {
			t.Fatal(err)
		}
		return resp.Patch.Len()
	}
	if admit(raw) == 0 {
		t.Fatal("the fixture is not held to begin with")
	}
	obj["spec"].(map[string]any)["managedBy"] = "kueue.x-k8s.io/multikueue"
	managed, _ := json.Marshal(obj)
	if n := admit(managed); n != 0 {
		t.Fatalf("a Job managed by another controller was held (%d ops)", n)
	}
}
