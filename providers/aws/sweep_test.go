package aws

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// persisted is a ServiceAccount as the writer and the sweeper see it: read back from the
// apiserver, with a UID.
func persisted(name string, uid types.UID, ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: uid, Annotations: ann}}
}

func TestCloudFinishAgainstMoto(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t) // nothing in this process may fall back to real AWS or instance metadata
	e := newEnv(t, srv, "finish-seed", 2048)
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
	srv := moto.Start(t)
	srv.SetEnv(t)
	e := newEnv(t, srv, "gc-seed", 2048)
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
