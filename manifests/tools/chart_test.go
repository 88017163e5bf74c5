package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current chart")

// valueSets are the files in testdata/values; each has a golden render in testdata/golden.
var valueSets = []string{"defaults", "aws-only", "azure-only", "user-issuer", "servicemonitor", "failurepolicy", "clientauth"}

// Every value set renders exactly its golden file (manifest, then NOTES). A change to the chart
// shows up as a reviewable diff of these files; `go test -run TestGolden -update` rewrites them.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "values", "*.yaml"))
	if len(files) != len(valueSets) {
		t.Errorf("testdata/values has %d files, valueSets lists %d: keep them in step", len(files), len(valueSets))
	}
	for _, name := range valueSets {
		t.Run(name, func(t *testing.T) {
			r := renderFile(t, DefaultRelease, name)
			got := []byte(r.Manifest + "\nNOTES:\n" + r.Notes + "\n")
			golden := filepath.Join("testdata", "golden", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("render of %s differs from %s (go test -run TestGolden -update, then review the diff):\n%s", name, golden, firstDiff(string(want), string(got)))
			}
		})
	}
}

// firstDiff shows the first differing line with a little context.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl
		}
	}
	return "(equal lines, different bytes)"
}

// `helm lint --strict` finds nothing with any value set, the static one included.
func TestLint(t *testing.T) {
	sets := map[string]string{"static": "static-values.yaml"}
	for _, name := range valueSets {
		sets[name] = filepath.Join("testdata", "values", name+".yaml")
	}
	for name, file := range sets {
		t.Run(name, func(t *testing.T) {
			vals, err := ReadValues(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := Lint(chartDir, DefaultRelease.Namespace, vals); err != nil {
				t.Error(err)
			}
		})
	}
}

// The defaults are safe: nobody allowed, no provider, no webhook on Pods, no Azure RBAC, no
// namespace ownership, and everything else as the kustomize base had it.
func TestDefaults(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "defaults"))
	// One ConfigMap: the admission policy's parameters (no IAM policy without AWS). Two
	// policies: the admission policy and the self policy.
	for kind, want := range map[string]int{"Namespace": 0, "ConfigMap": 1, "ServiceMonitor": 0, "Issuer": 2, "Certificate": 2, "PodDisruptionBudget": 1,
		"ValidatingAdmissionPolicy": 2, "ValidatingAdmissionPolicyBinding": 2} {
		if got := count(objs, kind); got != want {
			t.Errorf("%d %s objects, want %d", got, kind, want)
		}
	}

	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", "credential-webhook"), &d)
	env := envOf(t, objs, d)
	for k, want := range map[string]string{
		"CREDENTIAL_WEBHOOK_ALLOWED_REQUESTERS":      "",
		"CREDENTIAL_WEBHOOK_ALLOWED_NAMESPACES":      "*",
		"CREDENTIAL_WEBHOOK_AWS_SEED_ROLES":          "",
		"CREDENTIAL_WEBHOOK_AZURE_ALLOWED_SCOPES":    "",
		"CREDENTIAL_WEBHOOK_AWS_INJECT_POD_IDENTITY": "false",
		"CREDENTIAL_WEBHOOK_SIDECAR_IMAGE":           "",
		"CREDENTIAL_WEBHOOK_ROLE_CREATION_LIMIT":     "100",
		"CREDENTIAL_WEBHOOK_AWS_TOKEN_EXPIRATION":    "86400",
		"CREDENTIAL_WEBHOOK_MAX_HOLD":                "10m",
		"CREDENTIAL_WEBHOOK_LOG_LEVEL":               "info",
		"CREDENTIAL_WEBHOOK_AWS_BUCKET_CHECK":        "write",
	} {
		if got, ok := env[k]; !ok || got != want {
			t.Errorf("env %s = %q (set %v), want %q", k, got, ok, want)
		}
	}
	if _, ok := env["CREDENTIAL_WEBHOOK_AZURE_AKS_CLUSTER"]; ok {
		t.Error("CREDENTIAL_WEBHOOK_AZURE_AKS_CLUSTER set by default")
	}
	for _, k := range []string{"AWS_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		if _, ok := env[k]; ok {
			t.Errorf("env %s set by default", k)
		}
	}
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/klusters/credential-webhook:latest" {
		t.Errorf("image %s", c.Image)
	}
	if !slices.Contains(c.Args, "--metrics-listen=:9090") {
		t.Errorf("args %v lack the metrics listener", c.Args)
	}
	// No client authentication by default (EKS and AKS cannot present a certificate): no flag,
	// no CA volume.
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--client-ca-file") || strings.HasPrefix(a, "--allowed-client-names") {
			t.Errorf("default args carry %s", a)
		}
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "client-ca" {
			t.Errorf("default pod has the client CA volume %+v", v)
		}
	}
	if *d.Spec.Replicas != 2 || d.Spec.Template.Spec.ServiceAccountName != "credential-webhook" {
		t.Errorf("replicas %d, serviceAccountName %s", *d.Spec.Replicas, d.Spec.Template.Spec.ServiceAccountName)
	}
	sel := d.Spec.Selector.MatchLabels
	if sel["app.kubernetes.io/name"] != "credential-webhook" || sel["app.kubernetes.io/instance"] != "credential-webhook" || len(sel) != 2 {
		t.Errorf("selector %v", sel)
	}
	for k, v := range sel {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("pod template lacks selector label %s=%s", k, v)
		}
	}
	if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("pod does not run as non-root")
	}

	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", "credential-webhook"), &mwc)
	if got := mwc.Annotations["cert-manager.io/inject-ca-from"]; got != "credential-webhook/credential-webhook-tls" {
		t.Errorf("inject-ca-from %q", got)
	}
	policies := map[string]string{}
	for _, h := range mwc.Webhooks {
		policies[h.Name] = string(*h.FailurePolicy)
		if h.ClientConfig.Service == nil || h.ClientConfig.Service.Name != "credential-webhook" || h.ClientConfig.Service.Namespace != "credential-webhook" {
			t.Errorf("%s: clientConfig %+v", h.Name, h.ClientConfig.Service)
		}
		if got := h.NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(got, []string{"credential-webhook"}) {
			t.Errorf("%s: excluded namespaces %v", h.Name, got)
		}
	}
	want := map[string]string{"serviceaccounts.credential-webhook.klusters.dev": "Fail", "jobs.credential-webhook.klusters.dev": "Fail"}
	if !maps.Equal(policies, want) {
		t.Errorf("webhooks and failure policies %v, want %v (no Pod webhook without injection)", policies, want)
	}

	var cr rbacv1.ClusterRole
	into(t, find(t, objs, "ClusterRole", "credential-webhook"), &cr)
	for _, r := range cr.Rules {
		if slices.Contains(r.APIGroups, "rbac.authorization.k8s.io") || slices.Contains(r.APIGroups, "cid.wi.aks.azure.com") {
			t.Errorf("Azure identity-binding rule %v rendered with Azure off", r)
		}
	}
	var sa corev1.ServiceAccount
	into(t, find(t, objs, "ServiceAccount", "credential-webhook"), &sa)
	if len(sa.Annotations) != 0 {
		t.Errorf("ServiceAccount annotations %v by default", sa.Annotations)
	}
	cert := find(t, objs, "Certificate", "credential-webhook-tls")
	if got := str(field(t, cert.Map, "spec.issuerRef.name")); got != "credential-webhook-ca" {
		t.Errorf("serving certificate issued by %s", got)
	}
	var pdb policyv1.PodDisruptionBudget
	into(t, find(t, objs, "PodDisruptionBudget", ""), &pdb)
	if pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable %v", pdb.Spec.MinAvailable)
	}
}

// Another release name and namespace reach every reference: names, DNS names, the CA injection,
// the binding's subject and the namespace the webhooks skip.
func TestReleaseNameAndNamespace(t *testing.T) {
	rel := Release{Name: "backup", Namespace: "backup-system"}
	objs := objects(t, renderFile(t, rel, "defaults"))
	const name = "backup-credential-webhook"
	for _, o := range objs {
		if o.Name != name && !strings.HasPrefix(o.Name, name+"-") {
			t.Errorf("%s %s does not carry the release's name", o.Kind, o.Name)
		}
		if ns := field(t, o.Map, "metadata.namespace"); ns != nil && ns != rel.Namespace {
			t.Errorf("%s %s in namespace %v", o.Kind, o.Name, ns)
		}
	}
	var crb rbacv1.ClusterRoleBinding
	into(t, find(t, objs, "ClusterRoleBinding", name), &crb)
	if s := crb.Subjects[0]; s.Name != name || s.Namespace != rel.Namespace {
		t.Errorf("binding subject %+v", s)
	}
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", name), &mwc)
	if got := mwc.Annotations["cert-manager.io/inject-ca-from"]; got != "backup-system/"+name+"-tls" {
		t.Errorf("inject-ca-from %q", got)
	}
	if got := mwc.Webhooks[0].NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(got, []string{rel.Namespace}) {
		t.Errorf("excluded namespaces %v", got)
	}
	dns := field(t, find(t, objs, "Certificate", name+"-tls").Map, "spec.dnsNames").([]any)
	if str(dns[0]) != name+".backup-system.svc" || str(dns[1]) != name+".backup-system.svc.cluster.local" {
		t.Errorf("dnsNames %v", dns)
	}
}

func TestAWSOnly(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "aws-only"))
	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", ""), &d)
	env := envOf(t, objs, d)
	for k, want := range map[string]string{
		"CREDENTIAL_WEBHOOK_ALLOWED_REQUESTERS":         "system:serviceaccount:kubestash:kubestash-kubestash-operator,group:backup-admins",
		"CREDENTIAL_WEBHOOK_ALLOWED_NAMESPACES":         "team-*,backups",
		"CREDENTIAL_WEBHOOK_AWS_SEED_ROLES":             "arn:aws:iam::123456789012:role/kubestash-selfhost,arn:aws:iam::123456789012:role/backup/team-*",
		"CREDENTIAL_WEBHOOK_AWS_TRUST_POLICY_QUOTA":     "4096",
		"CREDENTIAL_WEBHOOK_ROLE_CREATION_LIMIT":        "20",
		"CREDENTIAL_WEBHOOK_AWS_PERMISSIONS_BOUNDARY":   "arn:aws:iam::123456789012:policy/boundaries/kubestash",
		"CREDENTIAL_WEBHOOK_AWS_OIDC_ISSUER":            "https://oidc.eks.eu-central-1.amazonaws.com/id/0123456789ABCDEF",
		"CREDENTIAL_WEBHOOK_AWS_INJECT_POD_IDENTITY":    "true",
		"CREDENTIAL_WEBHOOK_AWS_REGION":                 "eu-central-1",
		"CREDENTIAL_WEBHOOK_AWS_TOKEN_EXPIRATION":       "3600",
		"CREDENTIAL_WEBHOOK_POD_MISSING_SERVICEACCOUNT": "deny",
		"CREDENTIAL_WEBHOOK_AWS_BUCKET_CHECK":           "head",
		"CREDENTIAL_WEBHOOK_SIDECAR_IMAGE":              "ghcr.io/klusters/credential-webhook:v1.2.3",
		"CREDENTIAL_WEBHOOK_MAX_HOLD":                   "30m",
		"CREDENTIAL_WEBHOOK_SWEEPER_CHECKS_IN_A_ROW":    "3",
		"CREDENTIAL_WEBHOOK_SWEEPER_CHECK_WORKERS":      "32",
		"CREDENTIAL_WEBHOOK_LOG_LEVEL":                  "debug",
		"CREDENTIAL_WEBHOOK_AZURE_ALLOWED_SCOPES":       "",
		"AWS_REGION":                  "eu-central-1",
		"AWS_ROLE_ARN":                "arn:aws:iam::123456789012:role/credential-webhook",
		"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
		"AWS_STS_REGIONAL_ENDPOINTS":  "regional",
	} {
		if got := env[k]; got != want {
			t.Errorf("env %s = %q, want %q", k, got, want)
		}
	}
	// Without an EKS webhook the server's own Pods get the projected token it reads.
	var token *corev1.Volume
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "aws-iam-token" {
			token = &d.Spec.Template.Spec.Volumes[i]
		}
	}
	if token == nil || token.Projected == nil || token.Projected.Sources[0].ServiceAccountToken.Audience != "sts.amazonaws.com" ||
		*token.Projected.Sources[0].ServiceAccountToken.ExpirationSeconds != 3600 {
		t.Errorf("own IRSA token volume %+v", token)
	}

	var sa corev1.ServiceAccount
	into(t, find(t, objs, "ServiceAccount", ""), &sa)
	if got := sa.Annotations["eks.amazonaws.com/role-arn"]; got != "arn:aws:iam::123456789012:role/credential-webhook" {
		t.Errorf("ServiceAccount role-arn %q", got)
	}
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	if len(mwc.Webhooks) != 3 || mwc.Webhooks[2].Name != "pods.credential-webhook.klusters.dev" || *mwc.Webhooks[2].FailurePolicy != admissionv1.Ignore {
		t.Errorf("Pod injection on but webhooks are %d, last %s", len(mwc.Webhooks), mwc.Webhooks[len(mwc.Webhooks)-1].Name)
	}
	var cr rbacv1.ClusterRole
	into(t, find(t, objs, "ClusterRole", ""), &cr)
	for _, r := range cr.Rules {
		if slices.Contains(r.APIGroups, "cid.wi.aks.azure.com") {
			t.Error("Azure rule rendered for an AWS-only install")
		}
	}

	// The IAM policy: valid JSON, the shared statement once, the seed statements per seed, an
	// exact match for an exact seed and a pattern match for a glob.
	var cm corev1.ConfigMap
	into(t, find(t, objs, "ConfigMap", "credential-webhook-iam-policy"), &cm)
	var policy struct {
		Version   string
		Statement []struct {
			Sid       string
			Action    any
			Resource  any
			Condition map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(cm.Data["iam-policy.json"]), &policy); err != nil {
		t.Fatalf("iam-policy.json is not JSON: %v\n%s", err, cm.Data["iam-policy.json"])
	}
	sids := map[string]int{}
	for i, s := range policy.Statement {
		sids[s.Sid] = i
	}
	if len(policy.Statement) != 1+2*7 || len(sids) != len(policy.Statement) {
		t.Fatalf("%d statements (%d distinct Sids), want 15: %v", len(policy.Statement), len(sids), sids)
	}
	exact := policy.Statement[sids["CreateDerivedRolesTaggedWithTheirSeedSeed0"]]
	if exact.Resource != "arn:aws:iam::123456789012:role/kubestash-selfhost-*" ||
		exact.Condition["StringEquals"]["aws:RequestTag/credential-webhook.klusters.dev/seed-role"] != "arn:aws:iam::123456789012:role/kubestash-selfhost" {
		t.Errorf("exact seed's CreateRole statement %+v", exact)
	}
	glob := policy.Statement[sids["EditOwnDerivedRolesSeed1"]]
	if glob.Resource != "arn:aws:iam::123456789012:role/backup/team-*-*" ||
		glob.Condition["StringLike"]["aws:ResourceTag/credential-webhook.klusters.dev/seed-role"] != "arn:aws:iam::123456789012:role/backup/team-*" {
		t.Errorf("glob seed's edit statement %+v", glob)
	}
	attach := policy.Statement[sids["AttachOnlyTheSeedsManagedPoliciesSeed1"]]
	if got := attach.Condition["ArnEquals"]["iam:PolicyARN"]; !slices.Equal(anyStrings(got), []string{"arn:aws:iam::123456789012:policy/kubestash-s3"}) {
		t.Errorf("AttachRolePolicy limited to %v", got)
	}
	// Every call that grants permissions demands aws.permissionsBoundaryArn.
	for _, sid := range []string{"CreateDerivedRolesTaggedWithTheirSeedSeed0", "WidenOwnDerivedRolesOnlyWithinTheBoundarySeed1", "AttachOnlyTheSeedsManagedPoliciesSeed1"} {
		if got := policy.Statement[sids[sid]].Condition["StringEquals"]["iam:PermissionsBoundary"]; got != "arn:aws:iam::123456789012:policy/boundaries/kubestash" {
			t.Errorf("%s: iam:PermissionsBoundary %v", sid, got)
		}
	}
}

func TestAzureOnly(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "azure-only"))
	var cr rbacv1.ClusterRole
	into(t, find(t, objs, "ClusterRole", ""), &cr)
	var use, bindings bool
	for _, r := range cr.Rules {
		if slices.Contains(r.APIGroups, "cid.wi.aks.azure.com") {
			use = true
			if !slices.Equal(r.Resources, []string{"aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000002"}) || !slices.Equal(r.Verbs, []string{"use-managed-identity"}) {
				t.Errorf("use-managed-identity rule %+v, want the two client IDs only", r)
			}
		}
		if slices.Contains(r.Resources, "clusterrolebindings") {
			bindings = true
			if slices.Contains(r.Verbs, "bind") || slices.Contains(r.Verbs, "escalate") || slices.Contains(r.Verbs, "*") {
				t.Errorf("binding rule %+v grants bind/escalate", r)
			}
		}
	}
	if !use || !bindings {
		t.Errorf("Azure on but identity-binding rules missing (use-managed-identity %v, bindings %v)", use, bindings)
	}
	var sa corev1.ServiceAccount
	into(t, find(t, objs, "ServiceAccount", ""), &sa)
	if sa.Annotations["azure.workload.identity/client-id"] != "11111111-2222-3333-4444-555555555555" ||
		sa.Annotations["azure.workload.identity/tenant-id"] != "66666666-7777-8888-9999-000000000000" {
		t.Errorf("ServiceAccount annotations %v", sa.Annotations)
	}
	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", ""), &d)
	if d.Spec.Template.Labels["azure.workload.identity/use"] != "true" {
		t.Error("pods not labelled for workload identity")
	}
	env := envOf(t, objs, d)
	if got := env["CREDENTIAL_WEBHOOK_AZURE_ALLOWED_SCOPES"]; got != "/subscriptions/00000000-0000-0000-0000-0000000000aa,/subscriptions/00000000-0000-0000-0000-0000000000bb/resourceGroups/backup-*" {
		t.Errorf("scopes env %q", got)
	}
	if got := env["CREDENTIAL_WEBHOOK_AZURE_AKS_CLUSTER"]; got != "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/aks/providers/Microsoft.ContainerService/managedClusters/prod" {
		t.Errorf("AKS cluster env %q", got)
	}
	if env["CREDENTIAL_WEBHOOK_AZURE_IDENTITY_CACHE_TTL"] != "30m" || env["CREDENTIAL_WEBHOOK_AWS_SEED_ROLES"] != "" {
		t.Errorf("env %v", env)
	}
	for _, o := range objs {
		if o.Kind == "ConfigMap" && o.Name != "credential-webhook-admission-policy" {
			t.Errorf("ConfigMap %s (IAM policy) on an Azure-only install", o.Name)
		}
	}
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	if len(mwc.Webhooks) != 2 {
		t.Errorf("%d webhooks, want no Pod webhook", len(mwc.Webhooks))
	}
}

func TestUserSuppliedIssuer(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "user-issuer"))
	if n := count(objs, "Issuer"); n != 0 {
		t.Errorf("%d Issuers of the chart's own with a user issuer", n)
	}
	if n := count(objs, "Certificate"); n != 1 {
		t.Errorf("%d Certificates, want the serving one only", n)
	}
	cert := find(t, objs, "Certificate", "credential-webhook-tls")
	for p, want := range map[string]string{
		"spec.issuerRef.name":  "corp-private-ca",
		"spec.issuerRef.kind":  "ClusterIssuer",
		"spec.issuerRef.group": "cert-manager.io",
		"spec.duration":        "720h",
		"spec.renewBefore":     "240h",
		"spec.secretName":      "credential-webhook-tls",
	} {
		if got := str(field(t, cert.Map, p)); got != want {
			t.Errorf("%s = %s, want %s", p, got, want)
		}
	}
	dns := field(t, cert.Map, "spec.dnsNames").([]any)
	if str(dns[1]) != "credential-webhook.credential-webhook.svc.k8s.example.internal" {
		t.Errorf("dnsNames %v", dns)
	}
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	if got := mwc.Annotations["cert-manager.io/inject-ca-from"]; got != "credential-webhook/credential-webhook-tls" {
		t.Errorf("inject-ca-from %q", got)
	}
}

func TestServiceMonitor(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "servicemonitor"))
	sm := find(t, objs, "ServiceMonitor", "credential-webhook")
	// prometheus-operator's own Go types: a misspelt field fails the strict decode.
	var typed monitoringv1.ServiceMonitor
	into(t, sm, &typed)
	if typed.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("typed endpoint port %q", typed.Spec.Endpoints[0].Port)
	}
	if got := str(field(t, sm.Map, "metadata.labels.release")); got != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor label release=%s", got)
	}
	ep := field(t, sm.Map, "spec.endpoints").([]any)[0].(map[string]any)
	if ep["port"] != "metrics" || ep["interval"] != "15s" || ep["scheme"] != "http" {
		t.Errorf("endpoint %v", ep)
	}
	sel := field(t, sm.Map, "spec.selector.matchLabels").(map[string]any)
	var svc corev1.Service
	into(t, find(t, objs, "Service", ""), &svc)
	for k, v := range sel {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%v, the Service has %q", k, v, svc.Labels[k])
		}
	}
	var port *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Name == "metrics" {
			port = &svc.Spec.Ports[i]
		}
	}
	if port == nil || port.Port != 9191 {
		t.Errorf("Service metrics port %+v", port)
	}
	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", ""), &d)
	if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--metrics-listen=:9191") {
		t.Errorf("args %v", d.Spec.Template.Spec.Containers[0].Args)
	}
	if n := count(objs, "PodDisruptionBudget"); n != 0 {
		t.Errorf("PodDisruptionBudget with one replica would block every drain")
	}
}

func TestFailurePolicyOverrides(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "failurepolicy"))
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", "cw"), &mwc)
	want := map[string]struct {
		policy  admissionv1.FailurePolicyType
		timeout int32
	}{
		"serviceaccounts.credential-webhook.klusters.dev": {admissionv1.Ignore, 3},
		"jobs.credential-webhook.klusters.dev":            {admissionv1.Ignore, 2},
		"pods.credential-webhook.klusters.dev":            {admissionv1.Fail, 1},
	}
	if len(mwc.Webhooks) != len(want) {
		t.Fatalf("%d webhooks", len(mwc.Webhooks))
	}
	for _, h := range mwc.Webhooks {
		w := want[h.Name]
		if *h.FailurePolicy != w.policy || *h.TimeoutSeconds != w.timeout {
			t.Errorf("%s: %s %ds, want %s %ds", h.Name, *h.FailurePolicy, *h.TimeoutSeconds, w.policy, w.timeout)
		}
		if got := h.NamespaceSelector.MatchExpressions[0].Values; !slices.Equal(got, []string{"credential-webhook", "kube-system"}) {
			t.Errorf("%s: excluded namespaces %v", h.Name, got)
		}
		if h.ClientConfig.Service.Name != "cw" {
			t.Errorf("%s: service %s", h.Name, h.ClientConfig.Service.Name)
		}
	}
	// The consequence is written beside a non-default policy.
	doc := find(t, objs, "MutatingWebhookConfiguration", "cw").YAML
	for _, s := range []string{"Ignore (webhooks.serviceAccounts.failurePolicy)", "Ignore (webhooks.jobs.failurePolicy)", "Fail (webhooks.pods.failurePolicy)"} {
		if !strings.Contains(doc, s) {
			t.Errorf("no comment %q beside the overridden policy", s)
		}
	}
}

// clientAuth mounts only ca.crt of the named Secret, read-only, and passes the server the CA file
// and the names joined with commas (before extraArgs, which may still override them).
func TestClientAuth(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "clientauth"))
	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", "credential-webhook"), &d)
	c := d.Spec.Template.Spec.Containers[0]
	const mount = "/etc/credential-webhook/client-ca"
	for _, want := range []string{
		"--client-ca-file=" + mount + "/ca.crt",
		"--allowed-client-names=kube-apiserver,kube-apiserver-webhook-client.example.internal",
	} {
		if n := countOf(c.Args, want); n != 1 {
			t.Errorf("args %v carry %q %d times, want once", c.Args, want, n)
		}
	}
	var vol *corev1.Volume
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "client-ca" {
			vol = &d.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != "apiserver-webhook-client-ca" {
		t.Fatalf("client CA volume %+v, want Secret apiserver-webhook-client-ca", vol)
	}
	// Only the certificate: a CA Secret (cert-manager's, say) also holds the CA's private key.
	if items := vol.Secret.Items; len(items) != 1 || items[0].Key != "ca.crt" || items[0].Path != "ca.crt" {
		t.Errorf("client CA volume projects %+v, want ca.crt only", items)
	}
	var vm *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if m.Name == "client-ca" {
			vm = &c.VolumeMounts[i]
		}
	}
	if vm == nil || vm.MountPath != mount || !vm.ReadOnly {
		t.Errorf("client CA mount %+v, want %s read-only", vm, mount)
	}
	// Nothing else moves: the TLS volume and the serving flags stay.
	if !slices.Contains(c.Args, "--tls-cert-file=/etc/credential-webhook/tls/tls.crt") {
		t.Errorf("args %v lost the serving certificate", c.Args)
	}

	// One name, another release: the flag has no trailing comma and NOTES names the kubeconfig
	// user the apiserver must have (with the port when it is not 443).
	vals := map[string]any{
		"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": []any{"kube-apiserver"}},
		"service":    map[string]any{"port": 8443},
	}
	r, err := Render(context.Background(), testChart(t), Release{Name: "backup", Namespace: "backup-system"}, vals)
	if err != nil {
		t.Fatal(err)
	}
	into(t, find(t, objects(t, r), "Deployment", ""), &d)
	if args := d.Spec.Template.Spec.Containers[0].Args; countOf(args, "--allowed-client-names=kube-apiserver") != 1 {
		t.Errorf("args %v", args)
	}
	if user := "backup-credential-webhook.backup-system.svc:8443"; !strings.Contains(r.Notes, user) {
		t.Errorf("NOTES do not name the kubeconfig user %s:\n%s", user, r.Notes)
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}

// Values that contradict each other fail the render with a message naming the fix.
func TestContradictionsFail(t *testing.T) {
	tests := []struct {
		name string
		vals map[string]any
		want string
	}{
		{"injection without the Pod webhook", map[string]any{"aws": map[string]any{"injectPodIdentity": true}, "webhooks": map[string]any{"pods": map[string]any{"enabled": false}}}, "aws.injectPodIdentity needs the Pod webhook"},
		{"sidecar without injection", map[string]any{"aws": map[string]any{"resticSidecar": map[string]any{"enabled": true}}}, "aws.resticSidecar.enabled needs aws.injectPodIdentity"},
		{"Azure without its RBAC", map[string]any{"azure": map[string]any{"allowedScopes": []any{"/subscriptions/x"}}, "rbac": map[string]any{"azureIdentityBinding": false}}, "rbac.azureIdentityBinding is false"},
		{"ServiceMonitor without the metrics port", map[string]any{"metrics": map[string]any{"enabled": false, "serviceMonitor": map[string]any{"enabled": true}}}, "metrics.serviceMonitor.enabled needs metrics.enabled"},
		// A CA without names would accept any certificate it signed and only plan; names without a
		// CA stop the server at start.
		{"client CA without names", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca"}}, "clientAuth.caSecretName needs clientAuth.allowedNames"},
		{"client CA with an empty name list", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": []any{}}}, "clientAuth.caSecretName needs clientAuth.allowedNames"},
		{"client names without a CA", map[string]any{"clientAuth": map[string]any{"allowedNames": []any{"kube-apiserver"}}}, "clientAuth.allowedNames needs clientAuth.caSecretName"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(context.Background(), testChart(t), DefaultRelease, tc.vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// envOf returns the server container's environment, a configMapKeyRef resolved from the
// rendered ConfigMaps as the kubelet would.
func envOf(t *testing.T, objs []object, d appsv1.Deployment) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			ref := e.ValueFrom.ConfigMapKeyRef
			var cm corev1.ConfigMap
			into(t, find(t, objs, "ConfigMap", ref.Name), &cm)
			v, ok := cm.Data[ref.Key]
			if !ok {
				t.Errorf("env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		}
	}
	return env
}

func anyStrings(v any) []string {
	var out []string
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			out = append(out, str(e))
		}
	case string:
		out = append(out, x)
	}
	return out
}

// Lint really lints: a chart with a template that renders invalid YAML fails it.
func TestLintFindsDefects(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	broken := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata: [unclosed\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "broken.yaml"), []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Lint(dir, DefaultRelease.Namespace, nil)
	if err == nil || !strings.Contains(err.Error(), "broken.yaml") {
		t.Errorf("lint of a chart with a broken template: err = %v, want it to name broken.yaml", err)
	}
}
