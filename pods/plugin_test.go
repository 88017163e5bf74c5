package pods

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

type saFunc func(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error)

func (f saFunc) Get(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	return f(ctx, ns, name)
}

const minimalPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}`

func TestPluginServiceAccountLookup(t *testing.T) {
	withRole := &corev1.ServiceAccount{}
	withRole.Name, withRole.Namespace = "default", "demo"
	withRole.Annotations = map[string]string{"eks.amazonaws.com/role-arn": "arn:aws:iam::748392615204:role/r-0"}
	tests := []struct {
		name      string
		policy    MissingPolicy
		sas       ServiceAccounts
		op        admissionv1.Operation
		wantCode  int32 // 0: admitted
		wantWarn  string
		wantPatch bool
	}{
		{"default ServiceAccount is used when the Pod names none", MissingAdmit, saMap{"demo/default": withRole}, admissionv1.Create, 0, "", true},
		{"missing, admit", MissingAdmit, saMap{}, admissionv1.Create, 0, "not found", false},
		{"missing, zero policy admits", "", saMap{}, admissionv1.Create, 0, "not found", false},
		{"missing, deny", MissingDeny, saMap{}, admissionv1.Create, http.StatusNotFound, "", false},
		{"lookup error, deny", MissingDeny, saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
			return nil, errors.New("informer not synced")
		}), admissionv1.Create, http.StatusServiceUnavailable, "", false},
		{"lookup error, admit", MissingAdmit, saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
			return nil, errors.New("informer not synced")
		}), admissionv1.Create, 0, "informer not synced", false},
		{"updates are not ours", MissingDeny, saMap{}, admissionv1.Update, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPlugin(tt.sas, Config{MissingServiceAccount: tt.policy})
			resp := &admission.Response{Patch: patches.NewBuilder()}
			req := &admission.Request{Operation: tt.op, Namespace: "demo", Object: []byte(minimalPod)}
			err := p.Admit(context.Background(), req, resp)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("Admit: %v", err)
				}
			} else {
				d, ok := admission.IsDenied(err)
				if !ok || d.Code != tt.wantCode || !strings.Contains(d.Message, "retry") {
					t.Fatalf("Admit = %v, want a denial with code %d telling to retry", err, tt.wantCode)
				}
			}
			joined := strings.Join(resp.Warnings, "\n")
			if (tt.wantWarn == "") != (joined == "") || !strings.Contains(joined, tt.wantWarn) {
				t.Errorf("warnings %q, want %q", joined, tt.wantWarn)
			}
			if (resp.Patch.Len() > 0) != tt.wantPatch {
				t.Errorf("patch ops %v, want a patch: %v", resp.Patch.Ops(), tt.wantPatch)
			}
		})
	}
}

func TestPluginRejectsUndecodablePod(t *testing.T) {
	p := NewPlugin(saMap{}, Config{})
	resp := &admission.Response{Patch: patches.NewBuilder()}
	err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Create, Object: []byte(`{"spec":`)}, resp)
	if d, ok := admission.IsDenied(err); !ok || d.Code != http.StatusBadRequest {
		t.Fatalf("Admit = %v, want a 400 denial", err)
	}
}

func TestSkipPod(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   bool
	}{
		{nil, false},
		{map[string]string{"app": "restic"}, false},
		{map[string]string{"eks.amazonaws.com/skip-pod-identity-webhook": "true"}, true},
		// The EKS webhook's objectSelector is DoesNotExist: any value opts out, even "false".
		{map[string]string{"eks.amazonaws.com/skip-pod-identity-webhook": "false"}, true},
		{map[string]string{"eks.amazonaws.com/skip-pod-identity-webhook": ""}, true},
		{map[string]string{"eks.amazonaws.com/skip-containers": "c"}, false},
	}
	for _, tt := range tests {
		if got := skipPod(tt.labels); got != tt.want {
			t.Errorf("skipPod(%v) = %v, want %v", tt.labels, got, tt.want)
		}
	}
}

func TestUnreadableLabels(t *testing.T) {
	tests := []struct {
		notFound            bool
		policy              MissingPolicy
		wantReason, wantAct string
	}{
		{true, MissingAdmit, "not-found", "admitted"},
		{true, "", "not-found", "admitted"},
		{true, MissingDeny, "not-found", "denied"},
		{false, MissingAdmit, "error", "admitted"},
		{false, MissingDeny, "error", "denied"},
	}
	for _, tt := range tests {
		if r, a := unreadableLabels(tt.notFound, tt.policy); r != tt.wantReason || a != tt.wantAct {
			t.Errorf("unreadableLabels(%v, %q) = %s, %s; want %s, %s", tt.notFound, tt.policy, r, a, tt.wantReason, tt.wantAct)
		}
	}
}

// The counters through the plugin: a Pod counts as injected once (not on a reinvocation that
// adds nothing, nor on a dry run, nor when the skip label keeps it away), by sidecar; an
// unreadable ServiceAccount counts by reason and action.
func TestPluginMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	sa := &corev1.ServiceAccount{}
	sa.Name, sa.Namespace = "default", "demo"
	sa.Annotations = map[string]string{"eks.amazonaws.com/role-arn": "arn:aws:iam::748392615204:role/r-0"}
	p := &Plugin{ServiceAccounts: saMap{"demo/default": sa}, Config: Config{SidecarImage: "img"}, Metrics: m}
	review := func(p *Plugin, raw string, dryRun bool) []byte {
		t.Helper()
		resp := &admission.Response{Patch: patches.NewBuilder()}
		req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: []byte(raw), DryRun: dryRun}
		if err := p.Admit(context.Background(), req, resp); err != nil {
			if _, ok := admission.IsDenied(err); !ok {
				t.Fatalf("Admit: %v", err)
			}
		}
		out, err := json.Marshal(resp.Patch.Ops())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Patch.Len() == 0 {
			return []byte(raw)
		}
		patched, err := jsonpatchapply.DecodePatch(out)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := patched.Apply([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	injected := review(p, minimalPod, false)
	review(p, string(injected), false) // reinvocation: nothing added
	review(p, minimalPod, true)        // dry run
	review(p, `{"metadata":{"annotations":{"go.klusters.dev/restic-credentials":"true"}},"spec":{"containers":[{"name":"c"}]}}`, false)
	review(p, `{"metadata":{"labels":{"eks.amazonaws.com/skip-pod-identity-webhook":"true"}},"spec":{"containers":[{"name":"c"}]}}`, false)
	if got := testutil.ToFloat64(m.Injected.WithLabelValues("false")); got != 1 {
		t.Errorf("injected{sidecar=false} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Injected.WithLabelValues("true")); got != 1 {
		t.Errorf("injected{sidecar=true} = %v, want 1", got)
	}

	missing := &Plugin{ServiceAccounts: saMap{}, Metrics: m}
	review(missing, minimalPod, false)
	missing.Config.MissingServiceAccount = MissingDeny
	review(missing, minimalPod, false)
	broken := &Plugin{ServiceAccounts: saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
		return nil, errors.New("informer not synced")
	}), Metrics: m}
	review(broken, minimalPod, false)
	for labels, want := range map[[2]string]float64{
		{"not-found", "admitted"}: 1, {"not-found", "denied"}: 1, {"error", "admitted"}: 1, {"error", "denied"}: 0,
	} {
		if got := testutil.ToFloat64(m.ServiceAccountUnreadable.WithLabelValues(labels[0], labels[1])); got != want {
			t.Errorf("serviceaccount_unreadable%v = %v, want %v", labels, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 9 {
		t.Errorf("series: %d, %v; want 9 (2 injected, 4 unreadable, 3 grant wait outcomes)", n, err)
	}
	// A plugin without metrics works as before.
	review(&Plugin{ServiceAccounts: saMap{}}, minimalPod, false)
}

// A Pod whose ServiceAccount's role ARN is still only planned (its AWS claim pending) waits for
// the grant and gets the granted role, which may not be the planned one; past the wait, the
// missing-ServiceAccount policy decides. A ServiceAccount with nothing pending is read once.
func TestPluginWaitsForTheGrant(t *testing.T) {
	const plannedARN, grantedARN = "arn:aws:iam::748392615204:role/seed-0", "arn:aws:iam::748392615204:role/seed-3"
	sa := func(pending bool, arn string) *corev1.ServiceAccount {
		s := &corev1.ServiceAccount{}
		s.Name, s.Namespace = "default", "demo"
		s.Annotations = map[string]string{annotations.AWSRoleARN: arn}
		if pending {
			s.Annotations[annotations.Pending] = "aws:0123456789abcdef"
		}
		return s
	}
	// grantedAfter answers the planned ServiceAccount n times, then the granted one.
	grantedAfter := func(n int, reads *atomic.Int32) ServiceAccounts {
		return saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
			if int(reads.Add(1)) <= n {
				return sa(true, plannedARN), nil
			}
			return sa(false, grantedARN), nil
		})
	}
	for _, tc := range []struct {
		name        string
		after       int // reads answering the plan; -1: never granted
		policy      MissingPolicy
		wait        time.Duration
		wantARN     string // "" : no patch
		wantCode    int32
		wantWarn    string
		wantReads   int32  // 0: any
		wantOutcome string // the grant_waits outcome counted; "": none
	}{
		{"granted already: one read", 0, MissingAdmit, time.Minute, grantedARN, 0, "", 1, ""},
		{"granted while waiting: the granted role, not the plan", 3, MissingAdmit, time.Minute, grantedARN, 0, "", 4, grantGranted},
		{"never granted, admit: the plan, with a warning", -1, MissingAdmit, 100 * time.Millisecond, plannedARN, 0, "not in its IAM role yet", 0, grantPlanned},
		{"never granted, deny: retry", -1, MissingDeny, 100 * time.Millisecond, "", http.StatusServiceUnavailable, "", 0, grantDenied},
		{"a negative wait does not wait", -1, MissingAdmit, -1, plannedARN, 0, "not in its IAM role yet", 1, grantPlanned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reads atomic.Int32
			n := tc.after
			if n < 0 {
				n = 1 << 30
			}
			p := NewPlugin(grantedAfter(n, &reads), Config{MissingServiceAccount: tc.policy, GrantWait: tc.wait})
			p.Metrics = NewMetrics(prometheus.NewRegistry())
			defer func() {
				for _, o := range []string{grantGranted, grantPlanned, grantDenied} {
					want := 0.0
					if o == tc.wantOutcome {
						want = 1
					}
					if got := testutil.ToFloat64(p.Metrics.GrantWaits.WithLabelValues(o)); got != want {
						t.Errorf("grant_waits{outcome=%q} = %v, want %v", o, got, want)
					}
				}
			}()
			resp := &admission.Response{Patch: patches.NewBuilder()}
			req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: []byte(minimalPod)}
			err := p.Admit(context.Background(), req, resp)
			if tc.wantCode != 0 {
				if d, ok := admission.IsDenied(err); !ok || d.Code != tc.wantCode || !strings.Contains(d.Message, "retry") {
					t.Fatalf("Admit = %v, want a denial with code %d telling to retry", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Admit: %v", err)
			}
			ops, err := json.Marshal(resp.Patch.Ops())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(ops), tc.wantARN) || tc.wantARN == grantedARN && strings.Contains(string(ops), plannedARN) {
				t.Errorf("patch %s, want the role %s", ops, tc.wantARN)
			}
			if joined := strings.Join(resp.Warnings, "\n"); (tc.wantWarn == "") != (joined == "") || !strings.Contains(joined, tc.wantWarn) {
				t.Errorf("warnings %q, want %q", joined, tc.wantWarn)
			}
			if tc.wantReads != 0 && reads.Load() != tc.wantReads {
				t.Errorf("ServiceAccount read %d times, want %d", reads.Load(), tc.wantReads)
			}
		})
	}
}

// The wait never takes more than half of what is left of the review's budget.
func TestPluginGrantWaitWithinBudget(t *testing.T) {
	s := &corev1.ServiceAccount{}
	s.Name, s.Namespace = "default", "demo"
	s.Annotations = map[string]string{annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/seed-0", annotations.Pending: "aws:0123456789abcdef"}
	p := NewPlugin(saMap{"demo/default": s}, Config{GrantWait: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp := &admission.Response{Patch: patches.NewBuilder()}
	if err := p.Admit(ctx, &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: []byte(minimalPod)}, resp); err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the wait used the whole budget: the review's context ended")
	}
	if !strings.Contains(strings.Join(resp.Warnings, "\n"), "not in its IAM role yet") {
		t.Errorf("warnings %q, want the not-granted one", resp.Warnings)
	}
}

// A Pod that already has the token volume (a reinvocation, or the EKS webhook ran first) gets
// nothing from inject, so its review does not wait for a pending ServiceAccount's grant; nor do
// more than maxGrantWaiters reviews at once.
func TestPluginWaitsOnlyWhenItHelps(t *testing.T) {
	s := &corev1.ServiceAccount{}
	s.Name, s.Namespace = "default", "demo"
	s.Annotations = map[string]string{annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/seed-0", annotations.Pending: "aws:0123456789abcdef"}
	var reads atomic.Int32
	sas := saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) { reads.Add(1); return s, nil })
	const withVolume = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"volumes":[{"name":"aws-iam-token","projected":{"sources":[]}}],"containers":[{"name":"c","image":"i"}]}}`
	admit := func(p *Plugin, pod string) {
		t.Helper()
		resp := &admission.Response{Patch: patches.NewBuilder()}
		if err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: []byte(pod)}, resp); err != nil {
			t.Fatalf("Admit: %v", err)
		}
	}
	p := NewPlugin(sas, Config{GrantWait: time.Hour})
	admit(p, withVolume)
	if n := reads.Load(); n != 1 {
		t.Errorf("a Pod with the token volume read its ServiceAccount %d times, want 1 (no wait)", n)
	}
	reads.Store(0)
	p.waiters.Store(maxGrantWaiters)
	admit(p, minimalPod)
	if n := reads.Load(); n != 1 {
		t.Errorf("with %d reviews waiting already, the ServiceAccount was read %d times, want 1 (no wait)", maxGrantWaiters, n)
	}
	if n := p.waiters.Load(); n != maxGrantWaiters {
		t.Errorf("waiters %d after a review that did not wait, want %d", n, maxGrantWaiters)
	}
}
