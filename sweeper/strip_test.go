package sweeper

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
	"go.klusters.dev/credential-webhook/markers"
)

// Issue 16: the informer transforms keep only what the server reads.

func noise(m map[string]string) map[string]string {
	out := map[string]string{"tenant.example/blob": strings.Repeat("x", 64<<10), "kubectl.kubernetes.io/last-applied-configuration": "{}"}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestStripServiceAccount(t *testing.T) {
	sa := &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{
			Name: "s", Namespace: "demo", UID: "u", ResourceVersion: "7",
			Labels: map[string]string{"big": strings.Repeat("y", 1000)},
			Annotations: noise(map[string]string{
				annotations.SeedRole: "arn:aws:iam::123456789012:role/kubestash/seed", annotations.Pending: "aws:0123456789abcdef",
				annotations.AWSAudience: "sts.amazonaws.com", annotations.ResticCredentials: "true",
			}),
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			OwnerReferences: []metav1.OwnerReference{{Name: "o"}},
		},
		Secrets: []corev1.ObjectReference{{Name: "token"}},
	}
	out, err := NewStripper().ServiceAccount(sa)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.ServiceAccount)
	want := map[string]string{
		annotations.SeedRole: sa.Annotations[annotations.SeedRole], annotations.Pending: "aws:0123456789abcdef",
		annotations.AWSAudience: "sts.amazonaws.com", annotations.ResticCredentials: "true",
	}
	if !reflect.DeepEqual(got.Annotations, want) || got.Labels != nil || got.ManagedFields != nil || got.OwnerReferences != nil || got.Secrets != nil {
		t.Fatalf("stripped ServiceAccount: %+v", got)
	}
	if got.Name != "s" || got.Namespace != "demo" || got.UID != "u" || got.ResourceVersion != "7" {
		t.Fatalf("identity lost: %+v", got.ObjectMeta)
	}
	// An annotations map that existed stays (empty): the patch builders add a whole map when
	// it is absent.
	only := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{"tenant": "x"}}}
	if out, _ := NewStripper().ServiceAccount(only); out.(*corev1.ServiceAccount).Annotations == nil {
		t.Error("an existing annotations map became nil")
	}
	if out, _ := NewStripper().ServiceAccount(&corev1.ServiceAccount{}); out.(*corev1.ServiceAccount).Annotations != nil {
		t.Error("an absent annotations map became non-nil")
	}
}

func TestStripJob(t *testing.T) {
	job := newHeldJob(func(j *batchv1.Job) {
		j.Labels = noise(j.Labels)
		j.Labels[hold.KueueQueueLabel] = "q"
		j.Annotations = noise(j.Annotations)
		j.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubestash"}}
		j.Spec.ManagedBy = ptr.To("kueue.x-k8s.io/multikueue")
		j.Spec.Template.Spec.Containers = []corev1.Container{{Name: "restic", Image: "x", Args: []string{strings.Repeat("a", 10000)}}}
		j.Spec.Template.Annotations = map[string]string{"a": "b"}
	})
	out, _ := NewStripper().Job(job)
	view, ok := asJob(out)
	if !ok {
		t.Fatalf("StripJob returned a %T", out)
	}
	got := &view
	if len(got.Labels) != 2 || got.Labels[hold.KueueQueueLabel] != "q" || got.Labels[annotations.ManagedByLabel] != annotations.ManagedByValue {
		t.Errorf("labels %v", got.Labels)
	}
	if len(got.Annotations) != 2 || got.Annotations[annotations.HeldSince] == "" || got.Annotations[annotations.HoldReason] == "" {
		t.Errorf("annotations %v", got.Annotations)
	}
	if got.ManagedFields != nil || len(got.Spec.Template.Spec.Containers) != 0 || got.Spec.Template.Annotations != nil {
		t.Errorf("kept what is never read: %+v", got)
	}
	if *got.Spec.ManagedBy != *job.Spec.ManagedBy || *got.Spec.Suspend != *job.Spec.Suspend ||
		hold.ServiceAccountName(&got.Spec.Template.Spec) != hold.ServiceAccountName(&job.Spec.Template.Spec) {
		t.Errorf("spec fields read by the sweeper lost: %+v", got.Spec)
	}
	// The cache may copy an entry (client-go's mutation detector): a copy is equal and apart.
	c := out.(*cachedJob)
	cp := c.DeepCopyObject().(*cachedJob)
	if !reflect.DeepEqual(cp, c) {
		t.Errorf("copy differs: %+v, %+v", cp, c)
	}
	*cp.suspend, cp.Labels["x"] = false, "y"
	if !*c.suspend || c.Labels["x"] != "" {
		t.Error("the copy shares the original's fields")
	}
}

// fixtureObjects reads the Jobs and ServiceAccounts of the jobs and admission fixtures.
func fixtureObjects(t *testing.T) (jobsOut []*batchv1.Job, sas []*corev1.ServiceAccount, names []string) {
	t.Helper()
	add := func(name string, raw []byte) {
		var tm metav1.TypeMeta
		if json.Unmarshal(raw, &tm) != nil {
			return
		}
		switch tm.Kind {
		case "Job":
			var j batchv1.Job
			if json.Unmarshal(raw, &j) == nil {
				jobsOut = append(jobsOut, &j)
			}
		case "ServiceAccount":
			var sa corev1.ServiceAccount
			if json.Unmarshal(raw, &sa) == nil {
				sas = append(sas, &sa)
			}
		}
		names = append(names, name)
	}
	files, _ := filepath.Glob("../jobs/testdata/*/*.json")
	reqs, _ := filepath.Glob("../admission/testdata/*/request.json")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err == nil {
			add(f, raw)
		}
	}
	for _, f := range reqs {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r struct {
			Request struct {
				Kind      metav1.GroupVersionKind `json:"kind"`
				Object    json.RawMessage         `json:"object"`
				OldObject json.RawMessage         `json:"oldObject"`
			} `json:"request"`
		}
		if json.Unmarshal(raw, &r) != nil {
			continue
		}
		for _, o := range []json.RawMessage{r.Request.Object, r.Request.OldObject} {
			if len(o) > 0 && !bytes.Equal(o, []byte("null")) {
				var m map[string]any
				if json.Unmarshal(o, &m) == nil {
					m["kind"] = r.Request.Kind.Kind
					b, _ := json.Marshal(m)
					add(f, b)
				}
			}
		}
	}
	if len(jobsOut) < 5 || len(sas) < 5 {
		t.Fatalf("found %d Jobs and %d ServiceAccounts in the fixtures", len(jobsOut), len(sas))
	}
	return jobsOut, sas, names
}

// Every decision the server takes from a cached object is the same on the transformed object,
// for every Job and ServiceAccount of the existing fixtures, as they are, held, and with
// tenant noise added.
func TestTransformedFixturesDecideAlike(t *testing.T) {
	fixtureJobs, fixtureSAs, _ := fixtureObjects(t)
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	var allJobs []*batchv1.Job
	for _, j := range fixtureJobs {
		held := j.DeepCopy()
		held.Spec.Suspend = ptr.To(true)
		held.Annotations = noise(held.Annotations)
		held.Annotations[annotations.HeldSince] = "2026-05-06T11:59:00Z"
		held.Annotations[annotations.HoldReason] = hold.ReasonIdentityPending
		allJobs = append(allJobs, j, held)
	}
	var allSAs []*corev1.ServiceAccount
	for _, sa := range fixtureSAs {
		noisy := sa.DeepCopy()
		noisy.Annotations = noise(noisy.Annotations)
		noisy.Labels = noise(noisy.Labels)
		if noisy.UID == "" {
			noisy.UID = "uid-fixture"
		}
		allSAs = append(allSAs, sa, noisy, &corev1.ServiceAccount{ObjectMeta: *noisy.ObjectMeta.DeepCopy()})
	}
	clouds := cloudMap(awsCloud(), azureCloud())

	type jobView struct {
		Held, Elsewhere bool
		Since           time.Time
		SA              string
		ScreenOK        bool
		ScreenReason    string
		Resumed         bool
		Release         string
	}
	viewJob := func(j *batchv1.Job) jobView {
		ok, reason := hold.Screen(j)
		v := jobView{Held: hold.IsHeld(j), Elsewhere: hold.ManagedElsewhere(j), Since: hold.HeldSince(j), SA: hold.ServiceAccountName(&j.Spec.Template.Spec), ScreenOK: ok, ScreenReason: reason,
			Resumed: hold.ResumedElsewhere(j)}
		if p, err := hold.ReleasePatch(j); err == nil {
			v.Release = string(p)
		} else {
			v.Release = "error: " + err.Error()
		}
		return v
	}
	type saView struct {
		Identity    hold.Identity
		Fingerprint string
		Claims      string
		Work, Drops string
		Finish      string
		Keeps       [2]bool
		Decisions   string
		Prechecks   [2]hold.Verdict
	}
	viewSA := func(sa *corev1.ServiceAccount) saView {
		v := saView{Identity: hold.IdentityOf(sa), Fingerprint: fingerprint(sa), Claims: markerClaims(sa).String()}
		work, drops, err := Triage(sa, clouds, true)
		v.Work, v.Drops = fmt.Sprint(work, err), fmt.Sprint(drops)
		if p, err := FinishPatch(sa, Finished{Set: map[string]string{annotations.AWSRoleARN: "arn:aws:iam::123456789012:role/kubestash/seed-0"},
			Granted: markers.Claims{markers.For(markers.AWS, sa.Annotations[annotations.SeedRole])}, Clear: []string{annotations.AzureClientID}}); err == nil {
			v.Finish = string(p)
		} else {
			v.Finish = "error: " + err.Error()
		}
		for i, c := range []*testCloud{awsCloud(), azureCloud()} {
			if want, ok := c.Claim(sa.Annotations); ok {
				v.Keeps[i] = markers.Keeps(sa, true, c.Claim, want)
			}
		}
		for i, ready := range []bool{false, true} {
			v.Prechecks[i] = hold.Precheck(sa.Namespace, sa.Name, sa, ready)
		}
		for _, j := range allJobs {
			for _, ready := range []bool{false, true} {
				v.Decisions += fmt.Sprintf("%+v;", hold.Decide(j, sa, ready, now))
			}
		}
		return v
	}

	for i, j := range allJobs {
		s, _ := NewStripper().Job(j.DeepCopy())
		stripped, _ := asJob(s)
		if a, b := viewJob(j), viewJob(&stripped); !reflect.DeepEqual(a, b) {
			t.Errorf("Job %d (%s): decisions differ after the transform:\n  %+v\n  %+v", i, j.Name, a, b)
		}
	}
	for i, sa := range allSAs {
		s, _ := NewStripper().ServiceAccount(sa.DeepCopy())
		if a, b := viewSA(sa), viewSA(s.(*corev1.ServiceAccount)); !reflect.DeepEqual(a, b) {
			t.Errorf("ServiceAccount %d (%s): decisions differ after the transform:\n  %+v\n  %+v", i, sa.Name, a, b)
		}
	}
	t.Logf("%d Jobs and %d ServiceAccounts (fixtures, held, with noise) decide alike", len(allJobs), len(allSAs))
}

func TestBuckets(t *testing.T) {
	b := newBuckets(10*time.Second, 2)
	t0 := time.Unix(1000, 0)
	if b.take("s", t0) != 0 || b.take("s", t0) != 0 {
		t.Fatal("burst of 2 refused")
	}
	if w := b.take("s", t0); w != 10*time.Second {
		t.Fatalf("third take waits %s, want 10s", w)
	}
	if b.take("other", t0) != 0 {
		t.Fatal("buckets are per key")
	}
	if w := b.take("s", t0.Add(5*time.Second)); w != 5*time.Second {
		t.Fatalf("after 5 s: wait %s, want 5s", w)
	}
	if b.take("s", t0.Add(10*time.Second)) != 0 {
		t.Fatal("token not refilled after the interval")
	}
	b.keep(map[string]bool{}, t0.Add(time.Hour))
	if len(b.m) != 0 {
		t.Errorf("buckets of gone keys kept: %v", b.m)
	}
}

// Issue 18: the transforms share one copy of the strings many cached objects repeat, and never
// hold more than the interner's bound.
func TestStripSharesRepeatedStrings(t *testing.T) {
	seed := "arn:aws:iam::123456789012:role/kubestash/seed"
	sa := func(name string) *corev1.ServiceAccount {
		// Each decoded object has its own copies: build them apart.
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: strings.Clone("demo"), UID: types.UID(name),
			Annotations: map[string]string{
				strings.Clone(annotations.SeedRole): strings.Clone(seed),
				strings.Clone(annotations.Granted):  name + " aws:0123456789abcdef",
			},
		}}
	}
	st := NewStripper()
	a, _ := st.ServiceAccount(sa("a"))
	b, _ := st.ServiceAccount(sa("b"))
	x, y := a.(*corev1.ServiceAccount), b.(*corev1.ServiceAccount)
	same := func(s, t string) bool { return unsafe.StringData(s) == unsafe.StringData(t) }
	if !same(x.Namespace, y.Namespace) || !same(x.Annotations[annotations.SeedRole], y.Annotations[annotations.SeedRole]) {
		t.Error("namespace or seed role not shared between two ServiceAccounts")
	}
	for k := range x.Annotations {
		for k2 := range y.Annotations {
			if k == k2 && !same(k, k2) {
				t.Errorf("annotation key %s not shared", k)
			}
		}
	}
	if x.Annotations[annotations.Granted] != "a aws:0123456789abcdef" || y.Namespace != "demo" || y.Annotations[annotations.SeedRole] != seed {
		t.Errorf("values changed: %v %v", x.Annotations, y)
	}

	// Jobs share their kept labels (KubeStash's) and, when not held, their empty annotations.
	plain := func(name string) *cachedJob {
		j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo",
			Labels:      map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue, "app": name},
			Annotations: map[string]string{"kubestash.com/backup-session": name}}}
		out, _ := st.Job(j)
		return out.(*cachedJob)
	}
	j1, j2 := plain("a"), plain("b")
	if reflect.ValueOf(j1.Labels).UnsafePointer() != reflect.ValueOf(j2.Labels).UnsafePointer() ||
		reflect.ValueOf(j1.Annotations).UnsafePointer() != reflect.ValueOf(j2.Annotations).UnsafePointer() {
		t.Error("two plain KubeStash Jobs do not share their label and annotation maps")
	}
	if len(j1.Labels) != 1 || j1.Annotations == nil || len(j1.Annotations) != 0 {
		t.Errorf("labels %v, annotations %v", j1.Labels, j1.Annotations)
	}

	in := newInterner(3)
	for i := range 10 {
		s := fmt.Sprint("v", i)
		if got := in.intern(s); got != s {
			t.Fatalf("intern(%q) = %q", s, got)
		}
		if len(in.m) > 3 {
			t.Fatalf("interner holds %d strings, bound 3", len(in.m))
		}
	}
	if in.intern("") != "" {
		t.Error("empty string")
	}
}
