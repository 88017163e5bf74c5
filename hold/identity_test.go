package hold

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

func TestServiceAccountName(t *testing.T) {
	for _, tc := range []struct {
		spec corev1.PodSpec
		want string
	}{
		{corev1.PodSpec{ServiceAccountName: "a", DeprecatedServiceAccount: "b"}, "a"},
		{corev1.PodSpec{DeprecatedServiceAccount: "b"}, "b"},
		{corev1.PodSpec{}, "default"},
	} {
		if got := ServiceAccountName(&tc.spec); got != tc.want {
			t.Errorf("ServiceAccountName(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

func TestIdentityOf(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ann        map[string]string
		aws, azure bool
		missing    string
	}{
		{"nil", nil, false, false, ""},
		{"aws missing", map[string]string{annotations.SeedRole: seedARN}, true, false, "no eks.amazonaws.com/role-arn yet"},
		{"aws done", map[string]string{annotations.SeedRole: seedARN, annotations.AWSRoleARN: "r"}, true, false, ""},
		{"pending and missing", map[string]string{annotations.SeedRole: seedARN, annotations.Pending: "iam throttled"}, true, false,
			"assignment pending (iam throttled); no eks.amazonaws.com/role-arn yet"},
		{"azure missing", map[string]string{annotations.AzureMIName: "mi"}, false, true,
			"no azure.workload.identity/client-id yet; no azure.workload.identity/tenant-id yet"},
		{"azure client ID alone", map[string]string{annotations.AzureMIName: "mi", annotations.AzureClientID: "c"}, false, true,
			"no azure.workload.identity/tenant-id yet"},
		{"azure done", map[string]string{annotations.AzureMIName: "mi", annotations.AzureClientID: "c", annotations.AzureTenantID: "t"}, false, true, ""},
		{"empty seed value requests nothing", map[string]string{annotations.SeedRole: ""}, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := IdentityOf(serviceAccount(tc.ann))
			if id.AWS != tc.aws || id.Azure != tc.azure || id.Missing != tc.missing {
				t.Errorf("IdentityOf = %+v, want aws %v azure %v missing %q", id, tc.aws, tc.azure, tc.missing)
			}
		})
	}
	if IdentityOf(nil).Requested() {
		t.Error("a nil ServiceAccount requests an identity")
	}
}

// Precheck answers what is known without a cloud call, with the sentences the sweeper's Events
// carry; everything else is left to a cloud check of the requested identity.
func TestPrecheck(t *testing.T) {
	awsDone := map[string]string{annotations.SeedRole: seedARN, annotations.AWSRoleARN: seedARN + "-3"}
	for _, tc := range []struct {
		name       string
		sa         *corev1.ServiceAccount
		knownReady bool
		want       Verdict
	}{
		{"missing", nil, true, Verdict{Known: true, Why: "ServiceAccount demo/" + saName + " does not exist"}},
		{"no cloud identity", serviceAccount(map[string]string{"x": "y"}), false,
			Verdict{Known: true, Ready: true, Why: "its ServiceAccount requests no cloud identity"}},
		{"identity missing", serviceAccount(map[string]string{annotations.SeedRole: seedARN}), true,
			Verdict{Known: true, Why: "no eks.amazonaws.com/role-arn yet", Identity: Identity{AWS: true, Missing: "no eks.amazonaws.com/role-arn yet"}}},
		{"pending though proven", serviceAccount(map[string]string{annotations.SeedRole: seedARN, annotations.AWSRoleARN: "r", annotations.Pending: "x"}), true,
			Verdict{Known: true, Why: "assignment pending (x)", Identity: Identity{AWS: true, Missing: "assignment pending (x)"}}},
		{"proven earlier", serviceAccount(awsDone), true, Verdict{Known: true, Ready: true, Why: "credentials proven earlier", Identity: Identity{AWS: true}}},
		{"assigned, unproven: a cloud check decides", serviceAccount(awsDone), false, Verdict{Identity: Identity{AWS: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Precheck("demo", saName, tc.sa, tc.knownReady); got != tc.want {
				t.Errorf("Precheck = %+v, want %+v", got, tc.want)
			}
		})
	}
	if v := Precheck("demo", saName, serviceAccount(awsDone), false); v.Known || strings.Contains(v.Why, "proven") {
		t.Errorf("an unproven identity counted as known: %+v", v)
	}
}
