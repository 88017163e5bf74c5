package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

func TestDecide(t *testing.T) {
	const seed = "arn:aws:iam::123456789012:role/kubestash/seed"
	claim, ok := ClaimOf(map[string]string{annotations.SeedRole: seed})
	if !ok {
		t.Fatal("ClaimOf: no claim for a valid seed")
	}
	other := markers.For(markers.AWS, seed+"2")
	grantedTo := func(cs ...markers.Claim) string { return markers.FormatGranted("uid-1", cs) }
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: seed + "-3"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	withSeed := map[string]string{annotations.SeedRole: seed}
	assigned := with(map[string]string{annotations.Granted: grantedTo(claim)})
	// A role ARN without the granted marker is what a requester can write themselves (or what
	// an admission that only planned left behind): it proves nothing was written to IAM.
	ungranted := with(nil)
	pending := with(map[string]string{annotations.Pending: claim.String()})
	pendingAndGranted := with(map[string]string{annotations.Pending: claim.String(), annotations.Granted: grantedTo(claim)})
	grantedOtherSeed := with(map[string]string{annotations.Granted: grantedTo(other)})
	grantedMalformed := with(map[string]string{annotations.Granted: "uid-1 aws:" + claim.Digest[:8]})
	grantedUIDOnly := with(map[string]string{annotations.Granted: grantedTo()})
	borrowed := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: "arn:aws:iam::123456789012:role/admin", annotations.Granted: grantedTo(claim)}
	cases := []struct {
		name     string
		op       admissionv1.Operation
		cur, old map[string]string
		want     Action
	}{
		{"no seed", admissionv1.Create, map[string]string{"x": "y"}, nil, ActionNone},
		{"no seed, granted marker left over", admissionv1.Update, map[string]string{annotations.Granted: grantedTo(claim)}, assigned, ActionNone},
		{"create", admissionv1.Create, withSeed, nil, ActionAssign},
		{"create with a role already (copied template)", admissionv1.Create, assigned, nil, ActionAssign},
		{"update unchanged, granted", admissionv1.Update, assigned, assigned, ActionUnchanged},
		{"update unchanged, granted (old object without the marker)", admissionv1.Update, assigned, ungranted, ActionUnchanged},
		{"update with a role arn but never granted", admissionv1.Update, ungranted, ungranted, ActionAssign},
		{"update still pending", admissionv1.Update, pending, pending, ActionAssign},
		{"update pending and granted (seed re-requested)", admissionv1.Update, pendingAndGranted, pendingAndGranted, ActionAssign},
		{"update granted for another seed", admissionv1.Update, grantedOtherSeed, grantedOtherSeed, ActionAssign},
		{"update granted marker malformed", admissionv1.Update, grantedMalformed, grantedMalformed, ActionAssign},
		{"update granted marker with the UID only", admissionv1.Update, grantedUIDOnly, grantedUIDOnly, ActionAssign},
		{"update seed changed", admissionv1.Update, assigned, map[string]string{annotations.SeedRole: seed + "2"}, ActionAssign},
		{"update role arn not derived from seed", admissionv1.Update, borrowed, borrowed, ActionAssign},
		{"update seed added", admissionv1.Update, withSeed, map[string]string{}, ActionAssign},
	}
	for _, tc := range cases {
		if got := Decide(tc.op, tc.cur, tc.old); got != tc.want {
			t.Errorf("%s: Decide = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIsDerivedFrom(t *testing.T) {
	const seed = "arn:aws:iam::123456789012:role/kubestash/seed"
	for arn, want := range map[string]bool{
		seed + "-0":   true,
		seed + "-99":  true,
		seed:          false,
		seed + "-x":   false,
		seed + "-1-2": false,
		"arn:aws:iam::123456789012:role/other/seed-0":     false,
		"arn:aws:iam::999999999999:role/kubestash/seed-0": false,
		"": false,
	} {
		if got := IsDerivedFrom(arn, seed); got != want {
			t.Errorf("IsDerivedFrom(%q) = %v", arn, got)
		}
	}
}

type pluginEnv struct {
	*env
	plugin *Plugin
}

func newPluginEnv(t *testing.T) *pluginEnv {
	e := motoEnv(t, "plugin-seed", 2048)
	pol, err := access.Parse("*", "system:serviceaccount:kubestash:kubestash-kubestash-operator")
	if err != nil {
		t.Fatal(err)
	}
	seeds, _ := ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/kubestash/*")
	return &pluginEnv{env: e, plugin: &Plugin{Assigner: e.assigner(NewLocalLocker(), Config{Seeds: seeds}), Seeds: seeds, Access: pol}}
}

// admit reviews the CREATE of ServiceAccount demo/name by the operator. authenticated is what
// the server sets when the review came over a client certificate with an allowed name.
func (p *pluginEnv) admit(t *testing.T, name string, dryRun, authenticated bool, budget time.Duration) *admission.Response {
	t.Helper()
	return admitWith(t, p.plugin, p.seed, name, dryRun, authenticated, budget)
}

func admitWith(t *testing.T, plugin *Plugin, seed RoleARN, name string, dryRun, authenticated bool, budget time.Duration) *admission.Response {
	t.Helper()
	obj, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": name, "namespace": "demo",
		"annotations": map[string]string{annotations.SeedRole: seed.String()}}})
	req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Name: name, DryRun: dryRun, Object: obj,
		Authenticated: authenticated, Log: slog.New(slog.DiscardHandler)}
	req.UserInfo.Username = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	resp := &admission.Response{Patch: patches.NewBuilder()}
	if err := plugin.Admit(ctx, req, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func valueAt(resp *admission.Response, key string) string {
	for _, op := range resp.Patch.Ops() {
		if op.Path == "/metadata/annotations/"+strings.ReplaceAll(key, "/", "~1") {
			return fmt.Sprint(op.Value)
		}
		if m, ok := op.Value.(map[string]any); ok && op.Path == "/metadata/annotations" {
			if v, ok := m[key]; ok {
				return fmt.Sprint(v)
			}
		}
	}
	return ""
}

func TestPluginAgainstMoto(t *testing.T) {
	p := newPluginEnv(t)
	role0 := p.seed.String() + "-0"
	claim := markers.For(markers.AWS, p.seed.String())
	// onlyReads fails on any IAM call that is not a read.
	onlyReads := func(t *testing.T, what string) {
		t.Helper()
		for action, n := range p.calls() {
			if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
				t.Errorf("%s made %d %s calls", what, n, action)
			}
		}
	}
	listed := func(t *testing.T, name string) bool {
		t.Helper()
		if _, err := p.direct.GetRole(context.Background(), roleInput(derivedName(p.seed, 0))); err != nil {
			return false
		}
		return p.trustOf(derivedName(p.seed, 0)).Has(SubjectPrefix + "demo:" + name)
	}

	t.Run("dry run writes nothing to IAM and claims nothing", func(t *testing.T) {
		p.proxy.ResetCalls()
		resp := p.admit(t, sessionSA(0), true, false, 5*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 {
			t.Errorf("dry run role = %q, want %q", got, role0)
		}
		onlyReads(t, "dry run")
		if _, err := p.direct.GetRole(context.Background(), roleInput(derivedName(p.seed, 0))); err == nil {
			t.Error("dry run created a role")
		}
		if len(resp.Pending) != 0 {
			t.Errorf("dry run claimed %v", resp.Pending)
		}
	})

	// The security property of planning at admission: a review body proves nothing about who
	// sent it, so without a client certificate nothing reaches IAM before the ServiceAccount is
	// persisted; the answer and the claim are all it leaves.
	t.Run("a review that is not authenticated plans and writes nothing", func(t *testing.T) {
		p.proxy.ResetCalls()
		resp := p.admit(t, sessionSA(1), false, false, 8*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 {
			t.Fatalf("planned role = %q, want %q", got, role0)
		}
		if !resp.Pending.Has(claim) || len(resp.Pending) != 1 {
			t.Errorf("pending claims %v, want exactly %v", resp.Pending, claim)
		}
		if len(resp.Warnings) != 0 {
			t.Errorf("warnings %q", resp.Warnings)
		}
		// The seed was read by the dry run already: planning again costs nothing at all.
		if c := p.calls(); len(c) != 0 {
			t.Errorf("planning with a warm view made IAM calls %v", c)
		}
		if listed(t, sessionSA(1)) {
			t.Error("an unauthenticated review wrote the trust policy")
		}
	})

	t.Run("an authenticated review writes at admission; steady state costs one IAM call", func(t *testing.T) {
		resp := p.admit(t, sessionSA(1), false, true, 8*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 {
			t.Fatalf("role = %q (warnings %q)", got, resp.Warnings)
		}
		if !listed(t, sessionSA(1)) {
			t.Fatal("authenticated review did not write the trust policy")
		}
		// Written, but not yet bound to the persisted object's UID: the writer does that.
		if !resp.Pending.Has(claim) {
			t.Errorf("pending claims %v, want %v", resp.Pending, claim)
		}
		p.proxy.ResetCalls()
		resp = p.admit(t, sessionSA(2), false, true, 8*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 {
			t.Fatalf("role = %q", got)
		}
		if c := p.calls(); len(c) != 1 || c["iam:UpdateAssumeRolePolicy"] != 1 {
			t.Errorf("steady-state calls = %v, want exactly one UpdateAssumeRolePolicy", c)
		}
		// And an unauthenticated review after that still writes nothing.
		p.proxy.ResetCalls()
		resp = p.admit(t, sessionSA(4), false, false, 8*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 || !resp.Pending.Has(claim) {
			t.Fatalf("planned role = %q, pending %v", got, resp.Pending)
		}
		onlyReads(t, "unauthenticated review")
		if listed(t, sessionSA(4)) {
			t.Error("an unauthenticated review wrote the trust policy")
		}
	})

	t.Run("IAM slower than the budget, authenticated: admitted, claim pending, warned", func(t *testing.T) {
		p.proxy.SetFaults(iamproxy.Faults{Latency: 3 * time.Second})
		defer p.proxy.SetFaults(iamproxy.Faults{})
		resp := p.admit(t, sessionSA(3), false, true, 500*time.Millisecond)
		if !resp.Pending.Has(claim) {
			t.Errorf("pending claims %v, ops %+v", resp.Pending, resp.Patch.Ops())
		}
		if valueAt(resp, annotations.AWSRoleARN) != "" {
			t.Error("role set although IAM did not answer")
		}
		if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "did not finish in time") {
			t.Errorf("warnings = %q", resp.Warnings)
		}
	})

	t.Run("IAM slower than the budget, not authenticated: planning does not wait for IAM", func(t *testing.T) {
		p.proxy.SetFaults(iamproxy.Faults{Latency: 3 * time.Second})
		defer p.proxy.SetFaults(iamproxy.Faults{})
		start := time.Now()
		resp := p.admit(t, sessionSA(5), false, false, 500*time.Millisecond)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 || !resp.Pending.Has(claim) || len(resp.Warnings) != 0 {
			t.Fatalf("role %q, pending %v, warnings %q", got, resp.Pending, resp.Warnings)
		}
		if d := time.Since(start); d > 400*time.Millisecond {
			t.Errorf("planning from the view took %v", d)
		}
	})

	t.Run("IAM slower than the budget, a replica that never read the seed: claim pending, warned", func(t *testing.T) {
		cold := *p.plugin
		cold.Assigner = p.assigner(NewLocalLocker(), Config{Seeds: p.plugin.Seeds})
		p.proxy.SetFaults(iamproxy.Faults{Latency: 3 * time.Second})
		defer p.proxy.SetFaults(iamproxy.Faults{})
		resp := admitWith(t, &cold, p.seed, sessionSA(6), false, false, 500*time.Millisecond)
		if !resp.Pending.Has(claim) || valueAt(resp, annotations.AWSRoleARN) != "" {
			t.Fatalf("pending %v, ops %+v", resp.Pending, resp.Patch.Ops())
		}
		if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "did not finish in time") {
			t.Errorf("warnings = %q", resp.Warnings)
		}
	})

	t.Run("seed refused by the assigner: warned, no claim", func(t *testing.T) {
		// The plugin's allowlist lets it through, the Assigner's (configured separately) does
		// not: a permanent refusal leaves no claim for the writer to retry.
		narrow, _ := ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/other/*")
		strict := *p.plugin
		strict.Assigner = p.assigner(NewLocalLocker(), Config{Seeds: narrow})
		for _, auth := range []bool{false, true} {
			resp := admitWith(t, &strict, p.seed, sessionSA(7), false, auth, 5*time.Second)
			if len(resp.Pending) != 0 || valueAt(resp, annotations.AWSRoleARN) != "" {
				t.Errorf("authenticated=%v: pending %v, ops %+v", auth, resp.Pending, resp.Patch.Ops())
			}
			if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "not allowed") {
				t.Errorf("authenticated=%v: warnings = %q", auth, resp.Warnings)
			}
		}
	})
}

func roleInput(name string) *iam.GetRoleInput { return &iam.GetRoleInput{RoleName: &name} }
