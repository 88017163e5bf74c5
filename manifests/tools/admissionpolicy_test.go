package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// admissionPolicy is what templates/admissionpolicy.yaml renders.
type admissionPolicy struct {
	params  corev1.ConfigMap
	policy  admissionv1.ValidatingAdmissionPolicy
	binding admissionv1.ValidatingAdmissionPolicyBinding
}

const operator = "system:serviceaccount:kubestash:kubestash-kubestash-operator"

// renderPolicy renders the chart with vals and decodes the policy, its binding and its
// parameters strictly (a misspelt field fails).
func renderPolicy(t *testing.T, rel Release, vals map[string]any) (admissionPolicy, []object) {
	t.Helper()
	r, err := Render(context.Background(), testChart(t), rel, vals)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, r)
	var p admissionPolicy
	into(t, find(t, objs, "ConfigMap", fullnameOf(rel)+"-admission-policy"), &p.params)
	into(t, find(t, objs, "ValidatingAdmissionPolicy", fullnameOf(rel)), &p.policy)
	into(t, find(t, objs, "ValidatingAdmissionPolicyBinding", fullnameOf(rel)), &p.binding)
	return p, objs
}

func fullnameOf(rel Release) string {
	if strings.Contains(rel.Name, "credential-webhook") {
		return rel.Name
	}
	return rel.Name + "-credential-webhook"
}

// The policy matches ServiceAccount CREATE and UPDATE and Job UPDATE (jobs/status included),
// fails closed, is bound with Deny to the release's parameter ConfigMap, and that ConfigMap
// carries the values: allowedRequesters in the server's flag grammar and the server's own
// username.
func TestAdmissionPolicyRendered(t *testing.T) {
	for _, tc := range []struct {
		rel        Release
		requesters []any
		wantParams string
		wantSelf   string
	}{
		{DefaultRelease, nil, "", "system:serviceaccount:credential-webhook:credential-webhook"},
		{Release{Name: "backup", Namespace: "backup-system"}, []any{operator, "group:backup-admins", "user:ci-*"},
			operator + ",group:backup-admins,user:ci-*", "system:serviceaccount:backup-system:backup-credential-webhook"},
	} {
		t.Run(tc.rel.Name, func(t *testing.T) {
			vals := map[string]any{}
			if tc.requesters != nil {
				vals["allowedRequesters"] = tc.requesters
			}
			p, objs := renderPolicy(t, tc.rel, vals)
			full := fullnameOf(tc.rel)
			if p.params.Namespace != tc.rel.Namespace {
				t.Errorf("parameters in namespace %q", p.params.Namespace)
			}
			if got := p.params.Data["allowedRequesters"]; got != tc.wantParams {
				t.Errorf("allowedRequesters parameter %q, want %q", got, tc.wantParams)
			}
			if got := p.params.Data["selfUsername"]; got != tc.wantSelf {
				t.Errorf("selfUsername parameter %q, want %q", got, tc.wantSelf)
			}
			if len(p.params.Data) != 2 {
				t.Errorf("parameter keys %v, want allowedRequesters and selfUsername", p.params.Data)
			}
			// The server's own identity is the one the policy calls self.
			var sa corev1.ServiceAccount
			into(t, find(t, objs, "ServiceAccount", ""), &sa)
			if self := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name; self != tc.wantSelf {
				t.Errorf("the chart's ServiceAccount is %s, the policy's self %s", self, tc.wantSelf)
			}

			s := p.policy.Spec
			if p.policy.Name != full {
				t.Errorf("policy name %s", p.policy.Name)
			}
			if s.FailurePolicy == nil || *s.FailurePolicy != admissionv1.Fail {
				t.Errorf("policy failurePolicy %v, want Fail", s.FailurePolicy)
			}
			if s.ParamKind == nil || s.ParamKind.APIVersion != "v1" || s.ParamKind.Kind != "ConfigMap" {
				t.Errorf("paramKind %+v", s.ParamKind)
			}
			covered := map[string][]string{}
			for _, r := range s.MatchConstraints.ResourceRules {
				for _, res := range r.Resources {
					for _, op := range r.Operations {
						covered[strings.Join(r.APIGroups, ",")+"/"+res] = append(covered[strings.Join(r.APIGroups, ",")+"/"+res], string(op))
					}
					if !slices.Equal(r.APIVersions, []string{"v1"}) {
						t.Errorf("%s: versions %v", res, r.APIVersions)
					}
				}
			}
			want := map[string][]string{
				"/serviceaccounts":  {"CREATE", "UPDATE"},
				"batch/jobs":        {"UPDATE"},
				"batch/jobs/status": {"UPDATE"},
			}
			if len(covered) != len(want) {
				t.Errorf("policy covers %v, want %v", covered, want)
			}
			for res, ops := range want {
				if !slices.Equal(covered[res], ops) {
					t.Errorf("policy covers %s for %v, want %v", res, covered[res], ops)
				}
			}
			if s.MatchConstraints.NamespaceSelector != nil && len(s.MatchConstraints.NamespaceSelector.MatchExpressions)+len(s.MatchConstraints.NamespaceSelector.MatchLabels) > 0 {
				t.Errorf("policy skips namespaces %+v; it must see every one", s.MatchConstraints.NamespaceSelector)
			}
			if len(s.MatchConditions) == 0 {
				t.Error("no matchConditions: every ServiceAccount and Job write would evaluate the policy")
			}
			if len(s.Validations) != 3 {
				t.Errorf("%d validations, want 3", len(s.Validations))
			}
			for i, v := range s.Validations {
				if v.Reason == nil || *v.Reason != "Forbidden" || v.Message == "" || v.MessageExpression == "" {
					t.Errorf("validation %d: reason %v, message %q, messageExpression %q", i, v.Reason, v.Message, v.MessageExpression)
				}
				if strings.Contains(v.Message, "\n") {
					t.Errorf("validation %d: message with a line break (the apiserver refuses it)", i)
				}
			}

			b := p.binding.Spec
			if b.PolicyName != p.policy.Name || p.binding.Name != full {
				t.Errorf("binding %s binds %s, want %s", p.binding.Name, b.PolicyName, p.policy.Name)
			}
			if !slices.Equal(b.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
				t.Errorf("validationActions %v, want [Deny]", b.ValidationActions)
			}
			if b.ParamRef == nil || b.ParamRef.Name != p.params.Name || b.ParamRef.Namespace != tc.rel.Namespace ||
				b.ParamRef.ParameterNotFoundAction == nil || *b.ParamRef.ParameterNotFoundAction != admissionv1.DenyAction {
				t.Errorf("paramRef %+v", b.ParamRef)
			}
			if b.MatchResources != nil {
				t.Errorf("binding narrows the policy: %+v", b.MatchResources)
			}

			// The server reads its allowed requesters from the same ConfigMap, and a changed list
			// changes the Pod template (helm upgrade rolls the Pods).
			var d appsv1.Deployment
			into(t, find(t, objs, "Deployment", ""), &d)
			var ref *corev1.ConfigMapKeySelector
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				if e.Name == "CREDENTIAL_WEBHOOK_ALLOWED_REQUESTERS" && e.ValueFrom != nil {
					ref = e.ValueFrom.ConfigMapKeyRef
				}
			}
			if ref == nil || ref.Name != p.params.Name || ref.Key != "allowedRequesters" || (ref.Optional != nil && *ref.Optional) {
				t.Errorf("CREDENTIAL_WEBHOOK_ALLOWED_REQUESTERS from %+v, want the parameter ConfigMap's allowedRequesters", ref)
			}
			sum := sha256.Sum256([]byte(tc.wantParams))
			if got := d.Spec.Template.Annotations["checksum/allowed-requesters"]; got != hex.EncodeToString(sum[:]) {
				t.Errorf("checksum/allowed-requesters %q does not follow allowedRequesters", got)
			}
		})
	}
}

// admissionPolicy.enabled=false drops the policy and its binding; the ConfigMap stays (the
// server reads its allowed requesters from it).
func TestAdmissionPolicyDisabled(t *testing.T) {
	r, err := Render(context.Background(), testChart(t), DefaultRelease, map[string]any{
		"admissionPolicy":   map[string]any{"enabled": false},
		"allowedRequesters": []any{operator},
	})
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, r)
	// The self policy (selfpolicy.yaml) is another switch and stays.
	for _, o := range objs {
		if (o.Kind == "ValidatingAdmissionPolicy" || o.Kind == "ValidatingAdmissionPolicyBinding") && o.Name != "credential-webhook-self" {
			t.Errorf("%s %s with admissionPolicy.enabled=false", o.Kind, o.Name)
		}
	}
	var cm corev1.ConfigMap
	into(t, find(t, objs, "ConfigMap", "credential-webhook-admission-policy"), &cm)
	if cm.Data["allowedRequesters"] != operator {
		t.Errorf("allowedRequesters %q", cm.Data["allowedRequesters"])
	}
}

// The Jobs webhook sees UPDATE too, through matchConditions instead of an objectSelector.
func TestJobsWebhookReviewsUpdates(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "defaults"))
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	for _, h := range mwc.Webhooks {
		if h.Name != "jobs.credential-webhook.klusters.dev" {
			continue
		}
		if ops := h.Rules[0].Operations; !slices.Equal(ops, []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}) {
			t.Errorf("operations %v", ops)
		}
		if h.ObjectSelector != nil && len(h.ObjectSelector.MatchLabels)+len(h.ObjectSelector.MatchExpressions) > 0 {
			t.Errorf("objectSelector %+v: Jobs carrying our annotations without the label would skip the webhook", h.ObjectSelector)
		}
		if len(h.MatchConditions) != 1 || h.MatchConditions[0].Name != "kubestash-or-ours" {
			t.Errorf("matchConditions %+v", h.MatchConditions)
		}
		return
	}
	t.Fatal("no Jobs webhook")
}
