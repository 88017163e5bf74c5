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
	"go.klusters.dev/credential-webhook/patches"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

func TestDecide(t *testing.T) {
	const seed = "arn:aws:iam::123456789012:role/kubestash/seed"
	withSeed := map[string]string{annotations.SeedRole: seed}
	assigned := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: seed + "-3"}
	pending := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: seed + "-3", annotations.Pending: "aws"}
	borrowed := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: "arn:aws:iam::123456789012:role/admin"}
	cases := []struct {
		name     string
		op       admissionv1.Operation
		cur, old map[string]string
		want     Action
	}{
		{"no seed", admissionv1.Create, map[string]string{"x": "y"}, nil, ActionNone},
		{"create", admissionv1.Create, withSeed, nil, ActionAssign},
		{"create with a role already (copied template)", admissionv1.Create, assigned, nil, ActionAssign},
		{"update unchanged", admissionv1.Update, assigned, assigned, ActionUnchanged},
		{"update still pending", admissionv1.Update, pending, pending, ActionAssign},
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
	srv := moto.Start(t)
	e := newEnv(t, srv, "plugin-seed", 2048)
	pol, err := access.Parse("*", "system:serviceaccount:kubestash:kubestash-kubestash-operator")
	if err != nil {
		t.Fatal(err)
	}
	seeds, _ := ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/kubestash/*")
	return &pluginEnv{env: e, plugin: &Plugin{Assigner: e.assigner(NewLocalLocker(), Config{Seeds: seeds}), Seeds: seeds, Access: pol}}
}

func (p *pluginEnv) admit(t *testing.T, name string, dryRun bool, budget time.Duration) *admission.Response {
	t.Helper()
	obj, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": name, "namespace": "demo",
		"annotations": map[string]string{annotations.SeedRole: p.seed.String()}}})
	req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Name: name, DryRun: dryRun, Object: obj,
		Log: slog.New(slog.DiscardHandler)}
	req.UserInfo.Username = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	resp := &admission.Response{Patch: patches.NewBuilder()}
	if err := p.plugin.Admit(ctx, req, resp); err != nil {
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

	t.Run("dry run writes nothing to IAM", func(t *testing.T) {
		p.proxy.ResetCalls()
		resp := p.admit(t, sessionSA(0), true, 5*time.Second)
		if got := valueAt(resp, annotations.AWSRoleARN); got != role0 {
			t.Errorf("dry run role = %q, want %q", got, role0)
		}
		for action, n := range p.calls() {
			if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
				t.Errorf("dry run made %d %s calls", n, action)
			}
		}
		if _, err := p.direct.GetRole(context.Background(), roleInput(derivedName(p.seed, 0))); err == nil {
			t.Error("dry run created a role")
		}
	})

	t.Run("first assignment, then steady state costs one IAM call", func(t *testing.T) {
		if got := valueAt(p.admit(t, sessionSA(1), false, 8*time.Second), annotations.AWSRoleARN); got != role0 {
			t.Fatalf("role = %q", got)
		}
		p.proxy.ResetCalls()
		if got := valueAt(p.admit(t, sessionSA(2), false, 8*time.Second), annotations.AWSRoleARN); got != role0 {
			t.Fatalf("role = %q", got)
		}
		if c := p.calls(); len(c) != 1 || c["iam:UpdateAssumeRolePolicy"] != 1 {
			t.Errorf("steady-state calls = %v, want exactly one UpdateAssumeRolePolicy", c)
		}
	})

	t.Run("IAM slower than the budget: admitted, pending, warned", func(t *testing.T) {
		p.proxy.SetFaults(iamproxy.Faults{Latency: 3 * time.Second})
		defer p.proxy.SetFaults(iamproxy.Faults{})
		resp := p.admit(t, sessionSA(3), false, 500*time.Millisecond)
		if got := valueAt(resp, annotations.Pending); got != "aws" {
			t.Errorf("pending marker = %q, ops %+v", got, resp.Patch.Ops())
		}
		if valueAt(resp, annotations.AWSRoleARN) != "" {
			t.Error("role set although IAM did not answer")
		}
		if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "did not finish in time") {
			t.Errorf("warnings = %q", resp.Warnings)
		}
	})
}

func roleInput(name string) *iam.GetRoleInput { return &iam.GetRoleInput{RoleName: &name} }
