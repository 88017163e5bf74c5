package main

import (
	"context"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

// These tests run the rendered CEL through the apiserver's own admission code
// (k8s.io/apiserver, the version of the e2e apiserver): the policy as the
// ValidatingAdmissionPolicy plugin compiles and evaluates it, and the webhooks' matchConditions
// as the webhook dispatcher does. The e2e tests then check the same policy in a real apiserver.

var (
	gvrServiceAccounts = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	gvkServiceAccount  = schema.GroupVersionKind{Version: "v1", Kind: "ServiceAccount"}
	gvrJobs            = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	gvkJob             = schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}
)

const (
	self        = "system:serviceaccount:credential-webhook:credential-webhook"
	pending     = "credential-webhook.klusters.dev/pending"
	granted     = "credential-webhook.klusters.dev/granted"
	holdReason  = "credential-webhook.klusters.dev/hold-reason"
	heldSince   = "credential-webhook.klusters.dev/held-since"
	seedRole    = "go.klusters.dev/seed-role-name"
	bucketNames = "go.klusters.dev/bucket-names"
	azureMI     = "klusters.dev/azure-mi-name"
)

func envSet() *environment.EnvSet {
	return environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion())
}

// compiledPolicy is the policy compiled as the apiserver's ValidatingAdmissionPolicy plugin
// does (validating.compilePolicy), with its parameter ConfigMap.
type compiledPolicy struct {
	validator validating.Validator
	params    runtime.Object
}

func compile(t *testing.T, p admissionPolicy) compiledPolicy {
	t.Helper()
	v := compileValidator(t, p.policy, true)
	params, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&p.params)
	if err != nil {
		t.Fatal(err)
	}
	params["apiVersion"], params["kind"] = "v1", "ConfigMap"
	return compiledPolicy{validator: v, params: &unstructured.Unstructured{Object: params}}
}

// compileValidator compiles a ValidatingAdmissionPolicy as the apiserver's plugin does, and
// fails the test when any expression does not compile: the plugin would only report that at
// evaluation time. hasParams: the policy reads a paramKind (the admission policy does, the self
// policy does not).
func compileValidator(t *testing.T, p admissionv1.ValidatingAdmissionPolicy, hasParams bool) validating.Validator {
	t.Helper()
	s := p.Spec
	comp, err := plugincel.NewCompositedCompiler(envSet())
	if err != nil {
		t.Fatal(err)
	}
	withAuthz := plugincel.OptionalVariableDeclarations{HasParams: hasParams, HasAuthorizer: true}
	withoutAuthz := plugincel.OptionalVariableDeclarations{HasParams: hasParams}
	for _, v := range s.Variables {
		if r := comp.CompileAndStoreVariable(&validating.Variable{Name: v.Name, Expression: v.Expression}, withAuthz, environment.StoredExpressions); r.Error != nil {
			t.Fatalf("variable %s does not compile: %v", v.Name, r.Error)
		}
	}
	var matches, validations, messages []plugincel.ExpressionAccessor
	for _, m := range s.MatchConditions {
		matches = append(matches, &matchconditions.MatchCondition{Name: m.Name, Expression: m.Expression})
	}
	for _, v := range s.Validations {
		validations = append(validations, &validating.ValidationCondition{Expression: v.Expression, Message: v.Message, Reason: v.Reason})
		messages = append(messages, &validating.MessageExpressionCondition{MessageExpression: v.MessageExpression})
	}
	for _, e := range append(append(slicesClone(matches), validations...), messages...) {
		opts := withAuthz
		if _, ok := e.(*validating.MessageExpressionCondition); ok {
			opts = withoutAuthz
		}
		if e.GetExpression() == "" {
			continue
		}
		if r := comp.CompileCELExpression(e, opts, environment.StoredExpressions); r.Error != nil {
			t.Fatalf("%q does not compile: %v", e.GetExpression(), r.Error)
		}
	}
	matcher := matchconditions.NewMatcher(comp.CompileCondition(matches, withAuthz, environment.StoredExpressions), s.FailurePolicy, "policy", "validate", p.Name)
	return validating.NewValidator(
		comp.CompileCondition(validations, withAuthz, environment.StoredExpressions),
		matcher,
		comp.CompileCondition(nil, withAuthz, environment.StoredExpressions),
		comp.CompileCondition(messages, withoutAuthz, environment.StoredExpressions),
		s.FailurePolicy, nil)
}

// checkDenial compares a policy's answer (the denial message, "" when admitted) with the
// expected one: "" to be admitted, else a substring of the denial.
func checkDenial(t *testing.T, got, deny string) {
	t.Helper()
	switch {
	case deny == "" && got != "":
		t.Errorf("denied: %s", got)
	case deny != "" && got == "":
		t.Errorf("admitted; want a denial containing %q", deny)
	case deny != "" && !strings.Contains(got, deny):
		t.Errorf("denied with %q; want it to contain %q", got, deny)
	}
}

func slicesClone(s []plugincel.ExpressionAccessor) []plugincel.ExpressionAccessor {
	return append([]plugincel.ExpressionAccessor(nil), s...)
}

// request is one write the policy may see.
type request struct {
	op          admission.Operation
	job         bool
	subresource string
	user        string
	groups      []string
	old, new    map[string]string // annotations; old nil on CREATE
	labels      map[string]string
}

func (r request) attributes() *admission.VersionedAttributes {
	gvr, gvk := gvrServiceAccounts, gvkServiceAccount
	if r.job {
		gvr, gvk = gvrJobs, gvkJob
	}
	obj := func(ann map[string]string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{}}
		u.SetGroupVersionKind(gvk)
		u.SetName("session")
		u.SetNamespace("team-a")
		if ann != nil {
			u.SetAnnotations(ann)
		}
		if r.labels != nil {
			u.SetLabels(r.labels)
		}
		if r.job {
			_ = unstructured.SetNestedField(u.Object, true, "spec", "suspend")
		}
		return u
	}
	newObj := obj(r.new)
	var oldObj runtime.Object
	if r.op == admission.Update {
		oldObj = obj(r.old)
	}
	info := &user.DefaultInfo{Name: r.user, Groups: append([]string{"system:authenticated"}, r.groups...)}
	attrs := admission.NewAttributesRecord(newObj, oldObj, gvk, "team-a", "session", gvr, r.subresource, r.op, nil, false, info)
	va := &admission.VersionedAttributes{Attributes: attrs, VersionedKind: gvk, VersionedObject: admission.NewLazyObject(newObj)}
	if oldObj != nil {
		va.VersionedOldObject = admission.NewLazyObject(oldObj)
	}
	return va
}

// evaluate returns "" when the policy admits the request (or does not match it), else the
// message of the first denial.
func (c compiledPolicy) evaluate(t *testing.T, r request) string {
	t.Helper()
	va := r.attributes()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}
	res := c.validator.Validate(context.Background(), va.GetResource(), va, c.params, ns, celconfig.RuntimeCELCostBudget, nil)
	for _, d := range res.Decisions {
		if d.Evaluation == validating.EvalError {
			t.Fatalf("evaluation error: %s", d.Message)
		}
		if d.Action == validating.ActionDeny {
			if d.Reason != metav1.StatusReasonForbidden {
				t.Errorf("denied with reason %q, want Forbidden", d.Reason)
			}
			return d.Message
		}
	}
	return ""
}

func TestAdmissionPolicyCEL(t *testing.T) {
	p, _ := renderPolicy(t, DefaultRelease, map[string]any{
		// An exact user, a group, and globs whose other characters are regex metacharacters.
		"allowedRequesters": []any{operator, "group:backup-admins", "user:robot.v1-*", "user:a+b"},
	})
	c := compile(t, p)
	const tenant = "alice"
	seed := map[string]string{seedRole: "arn:aws:iam::123456789012:role/kubestash-seed"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	create, update := admission.Create, admission.Update
	for _, tc := range []struct {
		name string
		req  request
		deny string // "" admits; else a substring of the message
	}{
		// Rule 1: the input annotations, set or changed by allowed requesters only.
		{"operator creates a session ServiceAccount", request{op: create, user: operator, new: seed}, ""},
		{"operator's create after the webhook added pending", request{op: create, user: operator, new: with(seed, pending, "aws:abc")}, ""},
		{"tenant creates one", request{op: create, user: tenant, new: seed}, "only the allowed requesters (the KubeStash operator) may set or change go.klusters.dev/seed-role-name"},
		{"tenant changes the buckets", request{op: update, user: tenant, old: with(seed, bucketNames, "a"), new: with(seed, bucketNames, "b")}, tenant + " may not set go.klusters.dev/bucket-names"},
		{"tenant adds an Azure identity", request{op: update, user: tenant, old: seed, new: with(seed, azureMI, "mi")}, "klusters.dev/azure-*"},
		{"tenant removes the seed role", request{op: update, user: tenant, old: with(seed, bucketNames, "a"), new: map[string]string{bucketNames: "a"}}, ""},
		{"tenant edits something else", request{op: update, user: tenant, old: with(seed, pending, "x"), new: with(seed, pending, "x", "note", "hi")}, ""},
		{"group member sets one", request{op: create, user: "bob", groups: []string{"backup-admins"}, new: map[string]string{azureMI: "mi"}}, ""},
		{"glob user", request{op: create, user: "robot.v1-nightly", new: seed}, ""},
		{"glob's dot is literal", request{op: create, user: "robotXv1-nightly", new: seed}, "robotXv1-nightly may not set"},
		{"glob's plus is literal", request{op: create, user: "a+b", new: seed}, ""},
		{"plus is not a regex repeat", request{op: create, user: "aab", new: seed}, "aab may not set"},
		{"user: entries do not match groups", request{op: create, user: "carol", groups: []string{operator}, new: seed}, "carol may not set"},
		{"the server's own credentials cannot ask", request{op: update, user: self, old: map[string]string{}, new: seed}, "may not set go.klusters.dev/seed-role-name"},

		// Rule 2: our annotations on ServiceAccounts, by the server or allowed requesters only.
		{"tenant forges pending", request{op: create, user: tenant, new: map[string]string{pending: "aws:abc"}}, "may add, change or remove credential-webhook.klusters.dev/ annotations of a ServiceAccount; alice may not change credential-webhook.klusters.dev/pending"},
		{"tenant removes granted", request{op: update, user: tenant, old: with(seed, granted, "uid aws:abc"), new: seed}, "alice may not change credential-webhook.klusters.dev/granted"},
		{"tenant changes pending", request{op: update, user: tenant, old: with(seed, pending, "a"), new: with(seed, pending, "b")}, "only this server (" + self + ")"},
		{"tenant removes seed and pending together", request{op: update, user: tenant, old: with(seed, pending, "a"), new: map[string]string{}}, "may not change credential-webhook.klusters.dev/pending"},
		{"server grants", request{op: update, user: self, old: with(seed, pending, "a"), new: with(seed, granted, "uid aws:abc")}, ""},
		{"operator clears our markers", request{op: update, user: operator, old: with(seed, granted, "g"), new: seed}, ""},

		// Rule 3: our annotations on existing Jobs, by the server only.
		{"tenant adds a hold to a suspended Job", request{op: update, job: true, user: tenant, old: map[string]string{}, new: map[string]string{holdReason: "x", heldSince: "2026-01-01T00:00:00Z"}}, "only this server (" + self + ") may add, change or remove credential-webhook.klusters.dev/ annotations of an existing Job"},
		{"tenant removes a hold", request{op: update, job: true, user: tenant, old: map[string]string{holdReason: "x", heldSince: "t"}, new: map[string]string{holdReason: "x"}}, "alice may not change credential-webhook.klusters.dev/held-since"},
		{"operator changes a hold", request{op: update, job: true, user: operator, old: map[string]string{holdReason: "x"}, new: map[string]string{holdReason: "y"}}, "may not change credential-webhook.klusters.dev/hold-reason"},
		{"server releases a Job", request{op: update, job: true, user: self, old: map[string]string{holdReason: "x", heldSince: "t"}, new: map[string]string{}}, ""},
		{"tenant edits a held Job otherwise", request{op: update, job: true, user: tenant, old: map[string]string{holdReason: "x"}, new: map[string]string{holdReason: "x", "note": "hi"}}, ""},
		{"status update keeps the hold", request{op: update, job: true, subresource: "status", user: "system:serviceaccount:kube-system:job-controller", old: map[string]string{holdReason: "x"}, new: map[string]string{holdReason: "x"}}, ""},
		{"status update drops the hold", request{op: update, job: true, subresource: "status", user: "system:serviceaccount:kube-system:job-controller", old: map[string]string{holdReason: "x"}, new: map[string]string{}}, "job-controller may not change"},
		// On CREATE the webhook adds real holds for whoever creates the Job: no rule.
		{"Job created with holds", request{op: create, job: true, user: tenant, new: map[string]string{holdReason: "x"}}, ""},

		// matchConditions: nothing of ours or KubeStash's, nothing evaluated.
		{"plain ServiceAccount", request{op: create, user: tenant, new: map[string]string{"other": "x"}}, ""},

		// The restic sidecar opt-in grants nothing: anyone may set it, beside KubeStash's inputs
		// too (issue 17); its former key, under our prefix, is ours.
		{"tenant opts into the restic sidecar", request{op: create, user: tenant, new: map[string]string{"go.klusters.dev/restic-credentials": "true"}}, ""},
		{"tenant opts in on a session ServiceAccount", request{op: update, user: tenant, old: seed, new: with(seed, "go.klusters.dev/restic-credentials", "true")}, ""},
		{"tenant sets the former restic key", request{op: create, user: tenant, new: map[string]string{"credential-webhook.klusters.dev/restic-credentials": "true"}}, "alice may not change credential-webhook.klusters.dev/restic-credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.evaluate(t, tc.req)
			checkDenial(t, got, tc.deny)
		})
	}
}

// The parameters decide: empty allows nobody (the server's default), "*" anyone, and without
// its ConfigMap keys the policy still evaluates (and allows nobody, not even the server).
func TestAdmissionPolicyCELParameters(t *testing.T) {
	p, _ := renderPolicy(t, DefaultRelease, nil)
	seed := map[string]string{seedRole: "arn:aws:iam::1:role/s"}
	c := compile(t, p)
	if msg := c.evaluate(t, request{op: admission.Create, user: operator, new: seed}); msg == "" {
		t.Error("empty allowedRequesters admitted the operator")
	}
	p.params.Data["allowedRequesters"] = " user:nobody , * "
	c = compile(t, p)
	if msg := c.evaluate(t, request{op: admission.Create, user: "anyone", new: seed}); msg != "" {
		t.Errorf("* denied: %s", msg)
	}
	p.params.Data = nil
	c = compile(t, p)
	job := request{op: admission.Update, job: true, user: self, old: map[string]string{holdReason: "x"}, new: map[string]string{}}
	if msg := c.evaluate(t, job); !strings.Contains(msg, "only this server ()") {
		t.Errorf("without selfUsername the server was not refused as expected: %q", msg)
	}
}

// The webhooks' matchConditions, as the webhook dispatcher compiles them: the Jobs webhook sees
// KubeStash's Jobs and any Job carrying (or losing) an annotation of ours, on CREATE and UPDATE.
func TestWebhookMatchConditionsCEL(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "defaults"))
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	compiler := plugincel.NewConditionCompiler(envSet())
	matchers := map[string]matchconditions.Matcher{}
	for _, h := range mwc.Webhooks {
		var exprs []plugincel.ExpressionAccessor
		// A condition that does not compile fails every Match (failurePolicy Fail) below.
		for _, m := range h.MatchConditions {
			exprs = append(exprs, &matchconditions.MatchCondition{Name: m.Name, Expression: m.Expression})
		}
		matchers[strings.Split(h.Name, ".")[0]] = matchconditions.NewMatcher(compiler.CompileCondition(exprs,
			plugincel.OptionalVariableDeclarations{HasAuthorizer: true}, environment.StoredExpressions), h.FailurePolicy, "webhook", "admit", h.Name)
	}
	kubestash := map[string]string{"app.kubernetes.io/managed-by": "kubestash.com"}
	for _, tc := range []struct {
		name    string
		webhook string
		req     request
		want    bool
	}{
		{"KubeStash Job created", "jobs", request{op: admission.Create, job: true, labels: kubestash}, true},
		{"other Job created", "jobs", request{op: admission.Create, job: true, labels: map[string]string{"app": "x"}}, false},
		{"Job created with a forged hold", "jobs", request{op: admission.Create, job: true, new: map[string]string{holdReason: "x"}}, true},
		{"hold added by UPDATE", "jobs", request{op: admission.Update, job: true, old: map[string]string{}, new: map[string]string{holdReason: "x"}}, true},
		{"hold removed by UPDATE", "jobs", request{op: admission.Update, job: true, old: map[string]string{heldSince: "t"}, new: map[string]string{}}, true},
		{"unrelated Job updated", "jobs", request{op: admission.Update, job: true, old: map[string]string{"a": "b"}, new: map[string]string{"a": "c"}}, false},
		{"other managed-by", "jobs", request{op: admission.Update, job: true, labels: map[string]string{"app.kubernetes.io/managed-by": "helm"}}, false},
		{"session ServiceAccount", "serviceaccounts", request{op: admission.Create, new: map[string]string{seedRole: "s"}}, true},
		{"pending removed", "serviceaccounts", request{op: admission.Update, old: map[string]string{pending: "p"}, new: map[string]string{}}, true},
		{"plain ServiceAccount", "serviceaccounts", request{op: admission.Create, new: map[string]string{"a": "b"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.user = "alice"
			res := matchers[tc.webhook].Match(context.Background(), tc.req.attributes(), nil, nil)
			if res.Error != nil {
				t.Fatal(res.Error)
			}
			if res.Matches != tc.want {
				t.Errorf("%s webhook matches %v, want %v", tc.webhook, res.Matches, tc.want)
			}
		})
	}
}

// The policy type-checks as the apiserver checks it (status.typeChecking.expressionWarnings),
// against the metadata, spec and data fields the expressions use, typed as the real schemas type
// them. The real apiserver repeats this against the full schemas in the e2e tests.
func TestAdmissionPolicyTypeChecks(t *testing.T) {
	p, _ := renderPolicy(t, DefaultRelease, nil)
	mapper := meta.NewDefaultRESTMapper(nil)
	for _, gvk := range []schema.GroupVersionKind{gvkServiceAccount, gvkJob, {Version: "v1", Kind: "ConfigMap"}} {
		mapper.Add(gvk, meta.RESTScopeNamespace)
	}
	checker := &validating.TypeChecker{SchemaResolver: minimalSchemas{}, RestMapper: mapper}
	ctx := checker.CreateContext(&p.policy)
	// Both kinds are resolved, so the check is real.
	if res := checker.CheckExpression(ctx, "object.metadata.name.size() > 0"); len(res) != 0 {
		t.Fatalf("a valid expression has warnings: %s", res)
	}
	if res := checker.CheckExpression(ctx, "object.metadata.annotations + 1"); len(res) != 2 {
		t.Fatalf("an ill-typed expression has %d results, want one per kind (ServiceAccount, Job): %s", len(res), res)
	}
	if w := checker.Check(&p.policy); len(w) != 0 {
		t.Errorf("expression warnings: %+v", w)
	}
	for _, v := range p.policy.Spec.Variables {
		if res := checker.CheckExpression(ctx, v.Expression); len(res) != 0 {
			t.Errorf("variable %s: %s", v.Name, res)
		}
	}
	for _, m := range p.policy.Spec.MatchConditions {
		if res := checker.CheckExpression(ctx, m.Expression); len(res) != 0 {
			t.Errorf("matchCondition %s: %s", m.Name, res)
		}
	}
}

// minimalSchemas resolves ServiceAccount, Job and ConfigMap to the part of their OpenAPI schemas
// the policy reads.
type minimalSchemas struct{}

func (minimalSchemas) ResolveSchema(gvk schema.GroupVersionKind) (*spec.Schema, error) {
	str := *spec.StringProperty()
	strMap := spec.MapProperty(spec.StringProperty())
	metadata := spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"object"}, Properties: map[string]spec.Schema{
		// Without generateName the type checker would replace metadata by {name, generateName}.
		"name": str, "generateName": str, "namespace": str, "uid": str, "annotations": *strMap, "labels": *strMap,
	}}}
	props := map[string]spec.Schema{"apiVersion": str, "kind": str, "metadata": metadata}
	switch gvk {
	case gvkServiceAccount:
	case gvkJob:
		props["spec"] = spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"object"}, Properties: map[string]spec.Schema{
			"suspend": *spec.BooleanProperty(),
		}}}
	case schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}:
		props["data"] = *strMap
	default:
		return nil, resolver.ErrSchemaNotFound
	}
	return &spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"object"}, Properties: props}}, nil
}
