package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// persisted is a ServiceAccount as the writer and the sweeper see it: read back from the
// apiserver, with a UID.
func persisted(name string, uid types.UID, ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: uid, Annotations: ann}}
}

func TestCloudFinishAgainstMoto(t *testing.T) {
	e := motoEnv(t, "finish-seed", 2048)
	cloud := Cloud{Assigner: e.assigner(NewLocalLocker(), Config{})}
	role0 := e.seed.String() + "-0"
	withSeed := func(seed string) map[string]string {
		return map[string]string{annotations.SeedRole: seed, annotations.Pending: markers.For(markers.AWS, seed).String()}
	}

	if cloud.Name() != markers.AWS || !slices.Equal(cloud.Outputs(), []string{annotations.AWSRoleARN}) {
		t.Fatalf("Name %q, Outputs %v", cloud.Name(), cloud.Outputs())
	}
	if c, ok := cloud.Claim(withSeed(e.seed.String())); !ok || c != markers.For(markers.AWS, e.seed.String()) {
		t.Fatalf("Claim = %v, %v", c, ok)
	}

	t.Run("writes the trust policy and returns the role", func(t *testing.T) {
		ctx := ctxT(t)
		set, err := cloud.Finish(ctx, persisted(sessionSA(0), "uid-0", withSeed(e.seed.String())))
		if err != nil {
			t.Fatal(err)
		}
		if len(set) != 1 || set[annotations.AWSRoleARN] != role0 {
			t.Fatalf("Finish set %v, want only %s=%s", set, annotations.AWSRoleARN, role0)
		}
		if !e.trustOf(derivedName(e.seed, 0)).Has(sessionSubject(0)) {
			t.Fatal("trust policy does not list the ServiceAccount")
		}
		// A finish is retried after a failed patch, and two replicas may race: idempotent.
		e.proxy.ResetCalls()
		if set, err := cloud.Finish(ctx, persisted(sessionSA(0), "uid-0", withSeed(e.seed.String()))); err != nil || set[annotations.AWSRoleARN] != role0 {
			t.Fatalf("second Finish = %v, %v", set, err)
		}
		for action, n := range e.calls() {
			if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
				t.Errorf("second Finish wrote: %d %s", n, action)
			}
		}
	})

	// Permanent refusals wrap markers.ErrRefused (the claim is dropped with an Event) and cost no
	// IAM call; they must never be confused with a failure worth retrying.
	t.Run("refusals", func(t *testing.T) {
		outside := "arn:aws:iam::" + moto.AccountID + ":role/other/finish-seed"
		for _, tc := range []struct {
			name  string
			sa    *corev1.ServiceAccount
			cause error // also wrapped, when set
		}{
			{"seed not in the allowlist", persisted("sa-outside", "uid-1", withSeed(outside)), ErrNotAllowed},
			{"seed annotation not an ARN", persisted("sa-bad", "uid-2", map[string]string{annotations.SeedRole: "admin"}), nil},
			{"seed annotation removed", persisted("sa-none", "uid-3", map[string]string{}), nil},
			{"no annotations at all", persisted("sa-nil", "uid-4", nil), nil},
			{"name IAM cannot hold", persisted("evil-*", "uid-5", withSeed(e.seed.String())), ErrInvalidSubject},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e.proxy.ResetCalls()
				set, err := cloud.Finish(ctxT(t), tc.sa)
				if !errors.Is(err, markers.ErrRefused) || set != nil {
					t.Fatalf("Finish = %v, %v; want ErrRefused", set, err)
				}
				if tc.cause != nil && !errors.Is(err, tc.cause) {
					t.Errorf("err %v does not wrap %v", err, tc.cause)
				}
				if c := e.calls(); len(c) != 0 {
					t.Errorf("a refusal cost IAM calls: %v", c)
				}
			})
		}
		// The allowlist is the Assigner's as configured now, not what admission saw.
		narrow, _ := ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/other/*")
		now := Cloud{Assigner: e.assigner(NewLocalLocker(), Config{Seeds: narrow})}
		if _, err := now.Finish(ctxT(t), persisted(sessionSA(1), "uid-6", withSeed(e.seed.String()))); !errors.Is(err, markers.ErrRefused) || !errors.Is(err, ErrNotAllowed) {
			t.Fatalf("seed removed from the allowlist since admission: %v", err)
		}
	})

	t.Run("IAM too slow: an error to retry, not a refusal", func(t *testing.T) {
		e.proxy.SetFaults(iamproxy.Faults{Latency: 3 * time.Second})
		defer e.proxy.SetFaults(iamproxy.Faults{})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		set, err := cloud.Finish(ctx, persisted(sessionSA(2), "uid-7", withSeed(e.seed.String())))
		if err == nil || errors.Is(err, markers.ErrRefused) || set != nil {
			t.Fatalf("Finish = %v, %v; want a retryable error", set, err)
		}
	})
}

func TestCollectorAgainstMoto(t *testing.T) {
	e := motoEnv(t, "gc-seed", 2048)
	ctx := ctxT(t)
	a := e.assigner(NewLocalLocker(), Config{})
	seed := e.seed.String()
	claim := markers.For(markers.AWS, seed)
	otherSeed := "arn:aws:iam::" + moto.AccountID + ":role/kubestash/gc-other"
	granted := func(uid types.UID) map[string]string {
		return map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: seed + "-0",
			annotations.Granted: markers.FormatGranted(uid, markers.Claims{claim})}
	}

	// What the apiserver holds now, by name; absent names are gone. unknown: may exist, not
	// known yet (the grace period), so everything it holds stays.
	live := map[string]*corev1.ServiceAccount{
		"granted":     persisted("granted", "uid-a", granted("uid-a")),
		"recreated":   persisted("recreated", "uid-new", granted("uid-old")), // deleted and created again by someone else
		"pending":     persisted("pending", "uid-p", map[string]string{annotations.SeedRole: seed, annotations.Pending: claim.String()}),
		"reseeded":    persisted("reseeded", "uid-r", map[string]string{annotations.SeedRole: otherSeed, annotations.Granted: markers.FormatGranted("uid-r", markers.Claims{claim})}),
		"unannotated": persisted("unannotated", "uid-u", map[string]string{annotations.Granted: markers.FormatGranted("uid-u", markers.Claims{claim})}),
		"forged":      persisted("forged", "uid-f", map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: seed + "-0"}), // a role ARN, no marker
	}
	lookups := map[string]int{}
	lookup := func(ns, name string) (*corev1.ServiceAccount, bool) {
		lookups[ns+"/"+name]++
		if ns != "demo" {
			return nil, false
		}
		if name == "unknown" {
			return nil, true
		}
		sa, ok := live[name]
		return sa, ok
	}
	names := []string{"granted", "recreated", "pending", "reseeded", "unannotated", "forged", "unknown", "deleted"}
	for _, n := range names {
		if _, err := a.Assign(ctx, e.seed, "demo", n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Assign(ctx, e.seed, "elsewhere", "granted"); err != nil { // same name, namespace gone
		t.Fatal(err)
	}

	// Seeds may name seeds outside the allowlist (a Lease left from an older configuration, a
	// ServiceAccount's annotation) or no ARN at all: those are skipped without an IAM call.
	c := Collector{Assigner: a, Seeds: func(context.Context) ([]string, error) {
		return []string{seed, "arn:aws:iam::" + moto.AccountID + ":role/other/gc-seed", "not-an-arn"}, nil
	}}
	removed, err := c.Collect(ctx, lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{mustSubject("demo", "granted"), mustSubject("demo", "pending"), mustSubject("demo", "unknown")}
	got := e.trustOf(derivedName(e.seed, 0)).Subjects()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("subjects left %v, want %v", got, want)
	}
	if removed != 6 {
		t.Errorf("removed %d, want 6 (recreated, reseeded, unannotated, forged, deleted, elsewhere/granted)", removed)
	}
	if lookups["demo/granted"] == 0 || lookups["elsewhere/granted"] == 0 {
		t.Errorf("lookups %v", lookups)
	}

	// Nothing left to collect: a second pass reads but writes nothing.
	e.proxy.ResetCalls()
	if removed, err := c.Collect(ctx, lookup); err != nil || removed != 0 {
		t.Fatalf("second Collect = %d, %v", removed, err)
	}
	for action, n := range e.calls() {
		if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
			t.Errorf("second Collect wrote: %d %s", n, action)
		}
	}

	// A failing Seeds is reported, and nothing is collected on a guess.
	boom := errors.New("lease list failed")
	if _, err := (Collector{Assigner: a, Seeds: func(context.Context) ([]string, error) { return nil, boom }}).Collect(ctx, lookup); !errors.Is(err, boom) {
		t.Fatalf("Seeds error: %v", err)
	}
}

// mustSubject is Subject for names known to be valid.
func mustSubject(ns, name string) string {
	s, err := Subject(ns, name)
	if err != nil {
		panic(err)
	}
	return s
}

// Issue 16: the garbage collection the sweeper runs with this Collector is driven only by
// ServiceAccounts our markers say we gave something, for the server's own configured seeds.
// Deleting 200 ServiceAccounts that name a seed outside the allowlist (half of them with a
// claim marker for it forged into their annotations) and 100 without any annotation costs IAM
// nothing; deleting one granted ServiceAccount of the configured seed collects its subject.
func TestGCIgnoresDeletionsOfUnrelatedServiceAccounts(t *testing.T) {
	e := motoEnv(t, "gc-dos-seed", 2048)
	ctx := ctxT(t)
	a := e.assigner(NewLocalLocker(), Config{}) // allowlist: role/kubestash/*
	seed := e.seed.String()
	notConfigured := "arn:aws:iam::" + moto.AccountID + ":role/other/gc-dos-seed"
	foreign := markers.For(markers.AWS, notConfigured)

	var objs []runtime.Object
	for i := range 300 {
		ann := map[string]string{annotations.SeedRole: notConfigured}
		switch {
		case i >= 200:
			ann = nil
		case i%2 == 0:
			ann[annotations.Granted] = markers.FormatGranted(types.UID(fmt.Sprint("uid-", i)), markers.Claims{foreign})
		}
		objs = append(objs, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: fmt.Sprint("tenant-", i), UID: types.UID(fmt.Sprint("uid-", i)), Annotations: ann}})
	}
	claim := SeedClaim(e.seed)
	objs = append(objs, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "granted", UID: "uid-g",
		Annotations: map[string]string{annotations.SeedRole: seed, annotations.Granted: markers.FormatGranted("uid-g", markers.Claims{claim})}}})
	if _, err := a.Assign(ctx, e.seed, "demo", "granted"); err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset(objs...)
	reg := prometheus.NewRegistry()
	// Seeds stands for the lock Lease keys: the configured seed and one left from an older
	// configuration, which is not collected.
	col := Collector{Assigner: a, Seeds: func(context.Context) ([]string, error) { return []string{seed, notConfigured}, nil }}
	s := sweeper.New(kubeadapter.Wrap(cs), sweeper.Config{Namespace: "lease-ns", Identity: "a", GCInterval: time.Hour, GCGrace: 500 * time.Millisecond},
		sweeper.Deps{Collectors: []sweeper.Collector{col}, Registerer: reg, Recorder: record.NewFakeRecorder(100)}, nil)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	gcRuns := func() float64 {
		return testutil.ToFloat64(mustCounterVec(t, reg, "credential_webhook_gc_runs_total"))
	}
	waitFor(t, 20*time.Second, "the leader's first collection", func() bool { return gcRuns() >= 1 })
	e.proxy.ResetCalls()
	runs := gcRuns()
	for i := range 300 {
		if err := cs.CoreV1().ServiceAccounts("demo").Delete(ctx, fmt.Sprint("tenant-", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(200 * time.Millisecond) // the fake watch buffers 100 events
		}
	}
	time.Sleep(5 * time.Second) // past the 2 s debounce, twice
	if c := e.calls(); len(c) != 0 {
		t.Fatalf("deleting ServiceAccounts unrelated to any configured seed cost IAM calls: %v", c)
	}
	if got := gcRuns(); got != runs {
		t.Errorf("gc runs went from %v to %v: deletions of unrelated ServiceAccounts triggered a collection", runs, got)
	}

	// The control: a ServiceAccount granted the configured seed is collected once deleted.
	if err := cs.CoreV1().ServiceAccounts("demo").Delete(ctx, "granted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the granted ServiceAccount's subject collected", func() bool {
		return !e.trustOf(derivedName(e.seed, 0)).Has(mustSubject("demo", "granted"))
	})
	calls := e.calls()
	// One trust policy write and no read: the collection after a deletion decides on the lock
	// session's view, which the generation proves current (RemoveUnless).
	if calls["iam:ListRoles"] != 0 || calls["iam:GetRole"] != 0 || calls["iam:UpdateAssumeRolePolicy"] != 1 {
		t.Errorf("collecting one deleted ServiceAccount: %v", calls)
	}
	t.Logf("IAM calls for the deletion of the granted ServiceAccount: %v", calls)
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mustCounterVec sums a counter family of reg into one collector for testutil.
func mustCounterVec(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
	c.Add(total)
	return c
}

// Scopes are the configured seeds only, each with the claim its grants carry.
func TestCollectorScopes(t *testing.T) {
	allow, _ := ParseAllowlist("arn:aws:iam::123456789012:role/kubestash-*")
	a := NewAssigner(nil, NewLocalLocker(), Config{Seeds: allow}, nil)
	in := []string{"arn:aws:iam::123456789012:role/kubestash-a", "arn:aws:iam::123456789012:role/other", "not-an-arn", "arn:aws:iam::123456789012:role/kubestash-a"}
	scopes, err := Collector{Assigner: a, Seeds: func(context.Context) ([]string, error) { return in, nil }}.Scopes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ParseRoleARN(in[0])
	if len(scopes) != 1 || scopes[0].Key != in[0] || scopes[0].Claim != SeedClaim(seed) {
		t.Fatalf("Scopes = %+v", scopes)
	}
}
