package main

import (
	"context"
	"strings"
	"testing"
)

// values.schema.json is closed and typed: a typo or a wrong value fails the render (and so
// `helm install`) instead of being silently ignored.
func TestSchemaRejects(t *testing.T) {
	tests := []struct {
		name string
		vals map[string]any
		want []string // all of these in the error
	}{
		{"unknown top-level key", map[string]any{"replicaCout": 3}, []string{"replicaCout"}},
		{"unknown nested key", map[string]any{"aws": map[string]any{"seedRole": []any{"arn:aws:iam::1:role/x"}}}, []string{"seedRole"}},
		{"unknown key deep down", map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"enable": true}}}, []string{"enable"}},
		{"resources typo", map[string]any{"resources": map[string]any{"limit": map[string]any{"cpu": "1"}}}, []string{"limit"}},
		{"failurePolicy in the wrong case", map[string]any{"webhooks": map[string]any{"pods": map[string]any{"failurePolicy": "fail"}}}, []string{"failurePolicy", "Fail"}},
		{"timeout over the apiserver's maximum", map[string]any{"webhooks": map[string]any{"jobs": map[string]any{"timeoutSeconds": 31}}}, []string{"timeoutSeconds"}},
		{"comma inside a list entry", map[string]any{"allowedRequesters": []any{"user:a,user:b"}}, []string{"allowedRequesters"}},
		{"allowlist as a string", map[string]any{"allowedRequesters": "user:a"}, []string{"allowedRequesters"}},
		// One glob dialect: only "*", which the admission policy and the server read alike.
		{"? in a requester glob", map[string]any{"allowedRequesters": []any{"user:ci-?"}}, []string{"allowedRequesters"}},
		{"character class in a requester glob", map[string]any{"allowedRequesters": []any{"group:team-[ab]"}}, []string{"allowedRequesters"}},
		{"] in a requester glob", map[string]any{"allowedRequesters": []any{"user:x]"}}, []string{"allowedRequesters"}},
		{"backslash in a requester glob", map[string]any{"allowedRequesters": []any{`user:ci\*`}}, []string{"allowedRequesters"}},
		{"admission policy switch as a string", map[string]any{"admissionPolicy": map[string]any{"enabled": "yes"}}, []string{"enabled"}},
		{"admission policy typo", map[string]any{"admissionPolicy": map[string]any{"enable": false}}, []string{"enable"}},
		{"seed role that is not an ARN", map[string]any{"aws": map[string]any{"seedRoles": []any{"kubestash-*"}}}, []string{"seedRoles"}},
		// "*" or a role name of only "*" would make every derived role a seed too.
		{"seed role *", map[string]any{"aws": map[string]any{"seedRoles": []any{"*"}}}, []string{"seedRoles"}},
		{"seed role glob of every role", map[string]any{"aws": map[string]any{"seedRoles": []any{"arn:aws:iam::123456789012:role/*"}}}, []string{"seedRoles"}},
		{"seed role glob of another dialect", map[string]any{"aws": map[string]any{"seedRoles": []any{"arn:aws:iam::123456789012:role/team-?"}}}, []string{"seedRoles"}},
		{"namespace glob of another dialect", map[string]any{"allowedNamespaces": []any{"team-?"}}, []string{"allowedNamespaces"}},
		{"seed role glob of every role under a path", map[string]any{"aws": map[string]any{"seedRoles": []any{"arn:aws:iam::123456789012:role/kubestash/*"}}}, []string{"seedRoles"}},
		{"permissions boundary that is not a policy ARN", map[string]any{"aws": map[string]any{"permissionsBoundaryArn": "arn:aws:iam::123456789012:role/boundary"}}, []string{"permissionsBoundaryArn"}},
		{"AKS cluster that is not a managed cluster", map[string]any{"azure": map[string]any{"aksCluster": "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/aks"}}, []string{"aksCluster"}},
		{"OIDC issuer without https", map[string]any{"aws": map[string]any{"oidcIssuer": "oidc.eks.eu-west-1.amazonaws.com/id/ABC"}}, []string{"oidcIssuer"}},
		{"copied tag key reserved by AWS", map[string]any{"aws": map[string]any{"iamPolicy": map[string]any{"copiedTagKeys": []any{"aws:cloudformation:stack-name"}}}}, []string{"copiedTagKeys"}},
		{"Azure scope that is not one", map[string]any{"azure": map[string]any{"allowedScopes": []any{"*"}}}, []string{"allowedScopes"}},
		{"replicas as a string", map[string]any{"replicaCount": "2"}, []string{"replicaCount"}},
		{"duration without a unit", map[string]any{"sweeper": map[string]any{"maxHold": "600"}}, []string{"maxHold"}},
		{"log level unknown", map[string]any{"logLevel": "verbose"}, []string{"logLevel"}},
		{"autoBool as yes", map[string]any{"rbac": map[string]any{"azureIdentityBinding": "yes"}}, []string{"azureIdentityBinding"}},
		{"issuer kind without a name", map[string]any{"certManager": map[string]any{"issuerRef": map[string]any{"kind": "ClusterIssuer"}}}, []string{"issuerRef"}},
		{"token lifetime under IRSA's minimum", map[string]any{"aws": map[string]any{"tokenExpiration": 60}}, []string{"tokenExpiration"}},
		{"comma inside a client name", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": []any{"kube-apiserver,evil"}}}, []string{"allowedNames"}},
		{"client name with surrounding blanks", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": []any{" kube-apiserver"}}}, []string{"allowedNames"}},
		{"empty client name", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": []any{""}}}, []string{"allowedNames"}},
		{"client names as a string", map[string]any{"clientAuth": map[string]any{"caSecretName": "ca", "allowedNames": "kube-apiserver"}}, []string{"allowedNames"}},
		{"client CA Secret name invalid", map[string]any{"clientAuth": map[string]any{"caSecretName": "Client_CA", "allowedNames": []any{"kube-apiserver"}}}, []string{"caSecretName"}},
		{"clientAuth typo", map[string]any{"clientAuth": map[string]any{"caSecret": "ca"}}, []string{"caSecret"}},
		{"role ARN of the webhook malformed", map[string]any{"aws": map[string]any{"roleArn": "credential-webhook"}}, []string{"roleArn"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(context.Background(), testChart(t), DefaultRelease, tc.vals)
			if err == nil {
				t.Fatal("rendered; want a schema error")
			}
			if !strings.Contains(err.Error(), "schema") {
				t.Errorf("err = %v; want a values schema error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v; want it to name %q", err, w)
				}
			}
		})
	}
}

// The same values written correctly render: the rejections above are about the mistakes only.
func TestSchemaAccepts(t *testing.T) {
	vals := map[string]any{
		"replicaCount":      3,
		"allowedRequesters": []any{"system:serviceaccount:kubestash:kubestash-kubestash-operator", "group:ops", "user:ci-*.example"},
		"admissionPolicy":   map[string]any{"enabled": false},
		"aws": map[string]any{
			"seedRoles":              []any{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/backup/team-*-seed"},
			"permissionsBoundaryArn": "arn:aws:iam::123456789012:policy/boundaries/kubestash",
			"oidcIssuer":             "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
			"iamPolicy":              map[string]any{"copiedTagKeys": []any{"team", "cost-center"}},
			"roleArn":                "arn:aws:iam::123456789012:role/path/credential-webhook",
			"tokenExpiration":        600,
		},
		"azure":       map[string]any{"allowedScopes": []any{"/subscriptions/*", "/subscriptions/s/resourceGroups/rg-*"}},
		"webhooks":    map[string]any{"pods": map[string]any{"failurePolicy": "Fail", "timeoutSeconds": 30}},
		"sweeper":     map[string]any{"maxHold": "1h30m"},
		"certManager": map[string]any{"issuerRef": map[string]any{"name": "ca", "kind": "ClusterIssuer"}},
		"rbac":        map[string]any{"azureIdentityBinding": true},
		"resources":   map[string]any{"limits": map[string]any{"memory": "512Mi"}},
		"clientAuth":  map[string]any{"caSecretName": "apiserver-webhook-client-ca", "allowedNames": []any{"kube-apiserver", "webhook-client.example.internal"}},
		"extraEnv":    []any{map[string]any{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}},
	}
	if _, err := Render(context.Background(), testChart(t), DefaultRelease, vals); err != nil {
		t.Fatal(err)
	}
}
