package main

import (
	"context"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Issue 17: a cloud enabled with nobody allowed to ask for it is refused at render time, with
// the way to find the KubeStash operator's ServiceAccount.
func TestCloudNeedsARequester(t *testing.T) {
	seed := map[string]any{"seedRoles": []any{"arn:aws:iam::123456789012:role/kubestash-selfhost"}, "permissionsBoundaryArn": "arn:aws:iam::123456789012:policy/boundaries/kubestash"}
	scope := map[string]any{"allowedScopes": []any{"/subscriptions/00000000-0000-0000-0000-0000000000aa"}}
	tests := []struct {
		name string
		vals map[string]any
		want string // "" renders
	}{
		{"AWS without a requester", map[string]any{"aws": seed}, "aws.seedRoles is set but allowedRequesters is empty"},
		{"Azure without a requester", map[string]any{"azure": scope}, "azure.allowedScopes is set but allowedRequesters is empty"},
		{"both, an empty list", map[string]any{"aws": seed, "azure": scope, "allowedRequesters": []any{}}, "aws.seedRoles is set"},
		{"AWS with the operator", map[string]any{"aws": seed, "allowedRequesters": []any{operator}}, ""},
		{"Azure with a group", map[string]any{"azure": scope, "allowedRequesters": []any{"group:backup-admins"}}, ""},
		// No cloud: nothing to ask for, so nobody is fine (the chart's defaults, the static base).
		{"no cloud", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(context.Background(), testChart(t), DefaultRelease, tc.vals)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("render failed: %v", err)
			case tc.want == "":
				return
			case err == nil:
				t.Fatalf("rendered; want a failure containing %q", tc.want)
			}
			for _, s := range []string{
				tc.want,
				// How to find the operator's ServiceAccount, and the usual answer.
				"kubectl -n kubestash get deploy -l app.kubernetes.io/name=kubestash-operator -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}'",
				"system:serviceaccount:kubestash:kubestash-kubestash-operator",
				"--set 'allowedRequesters={",
			} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\nlacks %q", err, s)
				}
			}
		})
	}
}

// The Pod webhook skips Pods carrying the EKS pod-identity webhook's opt-out label, whatever its
// value, as that webhook's own objectSelector does; the other webhooks have no objectSelector.
func TestPodWebhookSkipLabel(t *testing.T) {
	objs := objects(t, renderFile(t, DefaultRelease, "aws-only"))
	var mwc admissionv1.MutatingWebhookConfiguration
	into(t, find(t, objs, "MutatingWebhookConfiguration", ""), &mwc)
	var pods *admissionv1.MutatingWebhook
	for i := range mwc.Webhooks {
		if mwc.Webhooks[i].Name == "pods.credential-webhook.klusters.dev" {
			pods = &mwc.Webhooks[i]
		}
	}
	if pods == nil {
		t.Fatal("no Pod webhook rendered")
	}
	sel, err := metav1.LabelSelectorAsSelector(pods.ObjectSelector)
	if err != nil || pods.ObjectSelector == nil {
		t.Fatalf("objectSelector %+v: %v", pods.ObjectSelector, err)
	}
	const skip = "eks.amazonaws.com/skip-pod-identity-webhook"
	for _, tc := range []struct {
		labels labels.Set
		want   bool
	}{
		{nil, true},
		{labels.Set{"app": "restic", "app.kubernetes.io/managed-by": "kubestash.com"}, true},
		{labels.Set{skip: "true"}, false},
		{labels.Set{skip: "false"}, false},
		{labels.Set{skip: ""}, false},
	} {
		if got := sel.Matches(tc.labels); got != tc.want {
			t.Errorf("Pod labelled %v sent to the webhook: %v, want %v", tc.labels, got, tc.want)
		}
	}
}

// The Pod token defaults reach the server as its flags' environment variables, and the schema
// refuses what the server would refuse at start.
func TestPodTokenValues(t *testing.T) {
	r, err := Render(context.Background(), testChart(t), DefaultRelease, map[string]any{"aws": map[string]any{
		"tokenExpirationJitter": 0.25, "tokenAudience": "minio.example", "tokenMountPath": "/var/run/secrets/irsa",
	}})
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, r)
	var d appsv1.Deployment
	into(t, find(t, objs, "Deployment", ""), &d)
	env := envOf(t, objs, d)
	for k, want := range map[string]string{
		"CREDENTIAL_WEBHOOK_AWS_TOKEN_EXPIRATION_JITTER": "0.25",
		"CREDENTIAL_WEBHOOK_AWS_TOKEN_AUDIENCE":          "minio.example",
		"CREDENTIAL_WEBHOOK_AWS_TOKEN_MOUNT_PATH":        "/var/run/secrets/irsa",
	} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
	defObjs := objects(t, renderFile(t, DefaultRelease, "defaults"))
	var defDeploy appsv1.Deployment
	into(t, find(t, defObjs, "Deployment", ""), &defDeploy)
	defaults := envOf(t, defObjs, defDeploy)
	if defaults["CREDENTIAL_WEBHOOK_AWS_TOKEN_EXPIRATION_JITTER"] != "0.1" || defaults["CREDENTIAL_WEBHOOK_AWS_TOKEN_AUDIENCE"] != "sts.amazonaws.com" ||
		defaults["CREDENTIAL_WEBHOOK_AWS_TOKEN_MOUNT_PATH"] != "/var/run/secrets/eks.amazonaws.com/serviceaccount" {
		t.Errorf("defaults: %v", defaults)
	}
	for name, aws := range map[string]map[string]any{
		"jitter over 0.5":     {"tokenExpirationJitter": 0.6},
		"negative jitter":     {"tokenExpirationJitter": -0.1},
		"two audiences":       {"tokenAudience": "a,b"},
		"relative mount path": {"tokenMountPath": "secrets/irsa"},
		"trailing slash":      {"tokenMountPath": "/secrets/"},
		"Windows-style mount": {"tokenMountPath": `C:\irsa`},
	} {
		if _, err := Render(context.Background(), testChart(t), DefaultRelease, map[string]any{"aws": aws}); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}
