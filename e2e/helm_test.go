package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// The Helm chart, rendered with non-default values by the Helm SDK (manifests/tools, as `helm
// template` would), goes into the real apiserver: every object is accepted by its real schema
// (cert-manager's CRDs included) without a warning in a Pod Security restricted namespace; the
// rendered RBAC grants exactly what it says in the real authoriser, narrowing included; and the
// real binary, configured by nothing but the rendered Deployment's CREDENTIAL_WEBHOOK_*
// environment, serves the requesters, namespaces and seed the values named.
func TestHelmChartInstallsAndConfiguresTheServer(t *testing.T) {
	ctx := context.Background()
	release := cluster.Namespace(t) // the release namespace
	sessions := cluster.Namespace(t)
	const name = "e2e-helm"
	const fullname = name + "-credential-webhook"
	// The chart's README step: the namespace exists, Pod Security restricted, before the install.
	if _, err := cluster.Client.CoreV1().Namespaces().Patch(ctx, release, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"restricted"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	seedCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seed, err := moto.CreateSeedRole(seedCtx, cluster.AWSConfig(), fmt.Sprintf("helm-seed-%x", time.Now().UnixNano()&0xffffffffff), "/", cluster.Issuer)
	if err != nil {
		t.Fatalf("create seed role: %v", err)
	}
	const allowedIdentity = "aaaaaaaa-0000-0000-0000-000000000001"
	values := fmt.Sprintf(`
allowedRequesters: [%q]
allowedNamespaces: [%q]
logLevel: debug
aws:
  seedRoles: [%q]
  permissionsBoundaryArn: %q
  oidcIssuer: %q
  trustPolicyQuota: 2048
  roleCreationLimit: 5
  roleArn: arn:aws:iam::123456789012:role/credential-webhook-e2e
  region: us-east-1
  injectPodIdentity: true
  tokenExpiration: 3600
  resticSidecar:
    enabled: true
  iamPolicy:
    managedPolicyArns: [arn:aws:iam::123456789012:policy/kubestash-s3]
azure:
  clientId: 11111111-2222-3333-4444-555555555555
  managedIdentityClientIds: [%q]
rbac:
  azureIdentityBinding: true
sweeper:
  maxHold: 2m
  checksInARow: 1
webhooks:
  excludeNamespaces: [kube-system]
  serviceAccounts:
    timeoutSeconds: 8
  jobs:
    failurePolicy: Ignore
  pods:
    timeoutSeconds: 3
certManager:
  issuerRef:
    name: e2e-private-ca
    kind: ClusterIssuer
metrics:
  port: 9191
`, operatorUser, sessions, seed, moto.SeedBoundaryARN(seed), cluster.Issuer, allowedIdentity)
	objs := helmRender(t, name, release, values)

	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	for kind, n := range map[string]int{"ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1,
		"Service": 1, "Deployment": 1, "PodDisruptionBudget": 1, "Certificate": 1, "ConfigMap": 2, "MutatingWebhookConfiguration": 1,
		"ValidatingAdmissionPolicy": 2, "ValidatingAdmissionPolicyBinding": 2} {
		if kinds[kind] != n {
			t.Errorf("rendered %d %s, want %d (all: %v)", kinds[kind], kind, n, kinds)
		}
	}
	if kinds["Issuer"] != 0 || kinds["Namespace"] != 0 {
		t.Errorf("rendered Issuers or a Namespace with a user issuer and namespace.create false: %v", kinds)
	}

	// Cluster-scoped objects outlive the namespaces; the webhook configuration must never stay
	// registered (it points at a Service without endpoints).
	t.Cleanup(func() { helmDeleteClusterScoped(t, objs) })

	// Everything but the webhook configuration first, as Helm installs; then the configuration,
	// read back, and removed again before anything else is created.
	var mwc *unstructured.Unstructured
	var others []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			mwc = o
		} else {
			others = append(others, o)
		}
	}
	stored, warnings := helmApply(t, others...)
	if len(stored) != len(others) {
		t.Fatalf("applied %d of %d objects", len(stored), len(others))
	}
	storedMWC, moreWarnings := helmApply(t, mwc)
	if w := append(warnings, moreWarnings...); len(w) > 0 {
		t.Errorf("the apiserver warned about the chart's objects: %s", strings.Join(w, "; "))
	}
	var hooks admissionv1.MutatingWebhookConfiguration
	helmConvert(t, storedMWC[0], &hooks)
	if err := cluster.Dynamic.Resource(admissionv1.SchemeGroupVersion.WithResource("mutatingwebhookconfigurations")).Delete(ctx, fullname, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete the chart's webhook configuration: %v", err)
	}
	got := map[string]string{}
	for _, h := range hooks.Webhooks {
		got[h.Name] = fmt.Sprintf("%s/%d", *h.FailurePolicy, *h.TimeoutSeconds)
		if h.ClientConfig.Service == nil || h.ClientConfig.Service.Name != fullname || h.ClientConfig.Service.Namespace != release {
			t.Errorf("%s: clientConfig %+v", h.Name, h.ClientConfig)
		}
		if v := h.NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(v, []string{release, "kube-system"}) {
			t.Errorf("%s: excluded namespaces %v", h.Name, v)
		}
	}
	want := map[string]string{
		"serviceaccounts.credential-webhook.klusters.dev": "Fail/8",
		"jobs.credential-webhook.klusters.dev":            "Ignore/5",
		"pods.credential-webhook.klusters.dev":            "Ignore/3",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stored webhooks %v, want %v", got, want)
	}
	if a := hooks.Annotations["cert-manager.io/inject-ca-from"]; a != release+"/"+fullname+"-tls" {
		t.Errorf("inject-ca-from %q", a)
	}

	// The Certificate as cert-manager's CRD stored it, issued by the user's ClusterIssuer.
	for _, o := range stored {
		if o.GetKind() != "Certificate" {
			continue
		}
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "issuerRef", "kind")
		issuer, _, _ := unstructured.NestedString(o.Object, "spec", "issuerRef", "name")
		dns, _, _ := unstructured.NestedStringSlice(o.Object, "spec", "dnsNames")
		if kind != "ClusterIssuer" || issuer != "e2e-private-ca" || len(dns) == 0 || dns[0] != fullname+"."+release+".svc" {
			t.Errorf("stored Certificate issuerRef %s/%s dnsNames %v", kind, issuer, dns)
		}
	}

	// The rendered RBAC, through the real authoriser, as the chart's own ServiceAccount.
	cfg, err := cluster.ServiceAccountConfig(ctx, release, fullname)
	if err != nil {
		t.Fatal(err)
	}
	self, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	access := []struct {
		verb, group, resource, namespace string
		allowed                          bool
	}{
		{"patch", "", "serviceaccounts", sessions, true},
		{"create", "batch", "jobs", sessions, false},
		{"update", "batch", "jobs", sessions, true},
		{"create", "coordination.k8s.io", "leases", release, true},
		{"create", "coordination.k8s.io", "leases", sessions, false},
		{"get", "", "secrets", release, false},
		{"create", "rbac.authorization.k8s.io", "clusterroles", "", true},
		{"bind", "rbac.authorization.k8s.io", "clusterroles", "", false},
		{"delete", "rbac.authorization.k8s.io", "clusterrolebindings", "", true},
		// azure.managedIdentityClientIds narrows use-managed-identity to the listed identity.
		{"use-managed-identity", "cid.wi.aks.azure.com", allowedIdentity, "", true},
		{"use-managed-identity", "cid.wi.aks.azure.com", "bbbbbbbb-0000-0000-0000-000000000002", "", false},
	}
	helmWaitAllowed(t, self, "patch", "", "serviceaccounts", sessions)
	for _, a := range access {
		r, err := self.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != a.allowed {
			t.Errorf("%s %s/%s in %q: allowed %v, want %v", a.verb, a.group, a.resource, a.namespace, r.Status.Allowed, a.allowed)
		}
	}

	// The real binary, configured only by the rendered environment.
	var dep appsv1.Deployment
	for _, o := range stored {
		if o.GetKind() == "Deployment" {
			helmConvert(t, o, &dep)
		}
	}
	configMaps := map[string]map[string]string{}
	for _, o := range stored {
		if o.GetKind() == "ConfigMap" {
			data, _, _ := unstructured.NestedStringMap(o.Object, "data")
			configMaps[o.GetName()] = data
		}
	}
	var env []string
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		// The rest (AWS_ROLE_ARN, the token file, POD_*) describe a Pod; the harness gives the
		// replica its own AWS endpoint, credentials and identity.
		if !strings.HasPrefix(e.Name, "CREDENTIAL_WEBHOOK_") {
			continue
		}
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			// What the kubelet would resolve: the allowed requesters live in the admission
			// policy's ConfigMap, one list for the server and the policy.
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, ok := configMaps[ref.Name]
			if !ok {
				t.Fatalf("%s refers to ConfigMap %s, which the chart does not render", e.Name, ref.Name)
			}
			v = cm[ref.Key]
		}
		env = append(env, e.Name+"="+v)
	}
	if len(env) < 20 {
		t.Fatalf("only %d CREDENTIAL_WEBHOOK_* variables rendered: %v", len(env), env)
	}
	wh := cluster.StartWebhook(t, harness.WebhookOptions{Env: env})

	operator := operatorClient(t, sessions)
	sa, err := operator.CoreV1().ServiceAccounts(sessions).Create(ctx, sessionServiceAccount(sessions, seed), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator creates a session ServiceAccount: %v", err)
	}
	if arn := sa.Annotations[annotations.AWSRoleARN]; !strings.HasPrefix(arn, seed+"-") {
		t.Errorf("session ServiceAccount got role ARN %q, want a role derived from %s (annotations %v)\n%s", arn, seed, sa.Annotations, wh.Logs())
	}
	// The release namespace is not in allowedNamespaces: admitted, nothing assigned.
	outside := operatorClient(t, release)
	sa2, err := outside.CoreV1().ServiceAccounts(release).Create(ctx, sessionServiceAccount(release, seed), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator creates a ServiceAccount outside allowedNamespaces: %v", err)
	}
	if arn, ok := sa2.Annotations[annotations.AWSRoleARN]; ok {
		t.Errorf("ServiceAccount outside allowedNamespaces got role ARN %q", arn)
	}
}

// helmRender renders manifests/chart as release name in namespace with values (YAML) through
// the tools module, as `helm template` would.
func helmRender(t *testing.T, name, namespace, values string) []*unstructured.Unstructured {
	t.Helper()
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	tools := helmTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tools, "template", "-chart", filepath.Join(cluster.RepoRoot, "manifests", "chart"),
		"-name", name, "-namespace", namespace, "-f", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("render the chart: %v\n%s", err, stderr.String())
	}
	objs, err := harness.DecodeYAML(out)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

var (
	helmToolsOnce sync.Once
	helmToolsPath string
	helmToolsErr  error
)

// helmTools builds the manifests/tools module once per package run (the Helm SDK is large; a
// warm build cache makes this seconds).
func helmTools(t *testing.T) string {
	t.Helper()
	helmToolsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "credential-webhook-helm-")
		if err != nil {
			helmToolsErr = err
			return
		}
		helmToolsPath = filepath.Join(dir, "manifests-tools")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", helmToolsPath, ".")
		cmd.Dir = filepath.Join(cluster.RepoRoot, "manifests", "tools")
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			helmToolsErr = fmt.Errorf("go build manifests/tools: %w\n%s", err, out)
		}
	})
	if helmToolsErr != nil {
		t.Fatal(helmToolsErr)
	}
	return helmToolsPath
}

type helmWarnings struct {
	mu   sync.Mutex
	list []string
}

func (w *helmWarnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// helmApply server-side applies objs in order as cluster admin, as Helm 4 does, and returns them
// as stored with every warning the apiserver sent (deprecations, Pod Security violations).
func helmApply(t *testing.T, objs ...*unstructured.Unstructured) ([]*unstructured.Unstructured, []string) {
	t.Helper()
	warnings := &helmWarnings{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.WarningHandlerWithContext = warnings
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cfg)))
	ctx := context.Background()
	var out []*unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, o.GetName(), err)
		}
		data, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		opts := metav1.PatchOptions{FieldManager: "helm", Force: ptr.To(true)}
		if k := gvk.Kind; k == "ValidatingAdmissionPolicy" || k == "ValidatingAdmissionPolicyBinding" {
			// The release's policy names the release's own ServiceAccount as "self", but the
			// harness runs the replica as its own, whose policy is installed already. A dry run
			// has the apiserver validate and default it without ever enforcing it: a deleted
			// policy stays enforced until the apiserver's policy cache catches up, which made
			// the next test's writes fail.
			opts.DryRun = []string{metav1.DryRunAll}
		}
		var res *unstructured.Unstructured
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			res, err = dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts)
		} else {
			res, err = dyn.Resource(m.Resource).Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts)
		}
		if err != nil {
			t.Fatalf("apply the chart's %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		out = append(out, res)
	}
	warnings.mu.Lock()
	defer warnings.mu.Unlock()
	return out, warnings.list
}

// helmDeleteClusterScoped deletes the chart's cluster-scoped objects (namespaced ones go with
// their namespace).
func helmDeleteClusterScoped(t *testing.T, objs []*unstructured.Unstructured) {
	ctx := context.Background()
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cluster.Config)))
	for _, o := range objs {
		if o.GetNamespace() != "" {
			continue
		}
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s %s: %v", gvk.Kind, o.GetName(), err)
			continue
		}
		if err := cluster.Dynamic.Resource(m.Resource).Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Errorf("delete %s %s: %v", gvk.Kind, o.GetName(), err)
		}
	}
}

func helmConvert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

// helmWaitAllowed waits until the RBAC authoriser's informers have the chart's bindings.
func helmWaitAllowed(t *testing.T, client kubernetes.Interface, verb, group, resource, namespace string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(), &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: group, Resource: resource, Namespace: namespace}},
		}, metav1.CreateOptions{})
		if err == nil && r.Status.Allowed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the chart's ServiceAccount is still not allowed to %s %s in %s after 15s (%v)", verb, resource, namespace, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
