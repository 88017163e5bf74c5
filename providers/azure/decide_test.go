package azure

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

var testResolved = Resolved{
	ResourceID: testIdentity.ResourceID(), ClientID: testClientID, TenantID: testTenant, PrincipalID: testPrincipal,
}

func TestDecideServiceAccount(t *testing.T) {
	const otherClient = "99999999-8888-4777-8666-555555555555"
	tests := []struct {
		name     string
		existing map[string]string
		wantSet  []KV
		warnHas  []string
	}{
		{name: "no annotations", existing: nil,
			wantSet: []KV{{annotations.AzureClientID, testClientID}, {annotations.AzureTenantID, testTenant}}},
		{name: "KubeStash inputs only", existing: azAnn(testSub, testRG, testMI),
			wantSet: []KV{{annotations.AzureClientID, testClientID}, {annotations.AzureTenantID, testTenant}}},
		{name: "already set", existing: map[string]string{annotations.AzureClientID: testClientID, annotations.AzureTenantID: testTenant}},
		{name: "tenant missing", existing: map[string]string{annotations.AzureClientID: testClientID},
			wantSet: []KV{{annotations.AzureTenantID, testTenant}}},
		{name: "different client id is replaced with a warning",
			existing: map[string]string{annotations.AzureClientID: otherClient, annotations.AzureTenantID: testTenant},
			wantSet:  []KV{{annotations.AzureClientID, testClientID}},
			warnHas:  []string{annotations.AzureClientID, otherClient, testClientID, testIdentity.ResourceID()}},
		{name: "hostile old value is quoted in the warning",
			existing: map[string]string{annotations.AzureClientID: "x\nWarning: forged"},
			wantSet:  []KV{{annotations.AzureClientID, testClientID}, {annotations.AzureTenantID, testTenant}},
			warnHas:  []string{`"x\nWarning: forged"`}},
		{name: "empty value counts as different", existing: map[string]string{annotations.AzureClientID: "", annotations.AzureTenantID: testTenant},
			wantSet: []KV{{annotations.AzureClientID, testClientID}},
			warnHas: []string{`was ""`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := DecideServiceAccount(tc.existing, testResolved)
			if fmt.Sprint(d.Set) != fmt.Sprint(tc.wantSet) {
				t.Errorf("Set = %v, want %v", d.Set, tc.wantSet)
			}
			if len(tc.warnHas) == 0 && len(d.Warnings) != 0 {
				t.Errorf("unexpected warnings %q", d.Warnings)
			}
			if len(tc.warnHas) > 0 {
				if len(d.Warnings) != 1 {
					t.Fatalf("warnings %q, want one", d.Warnings)
				}
				for _, s := range tc.warnHas {
					if !strings.Contains(d.Warnings[0], s) {
						t.Errorf("warning %q lacks %q", d.Warnings[0], s)
					}
				}
				if strings.Contains(d.Warnings[0], "\n") {
					t.Errorf("warning contains a raw newline: %q", d.Warnings[0])
				}
			}
		})
	}
}

func TestServiceAccountDecisionApply(t *testing.T) {
	b := patches.NewBuilder()
	existing := map[string]string{annotations.AzureClientID: "old"}
	DecideServiceAccount(existing, testResolved).Apply(b, existing)
	got, _ := json.Marshal(b.Ops())
	want := `[{"op":"replace","path":"/metadata/annotations/azure.workload.identity~1client-id","value":"` + testClientID + `"},` +
		`{"op":"add","path":"/metadata/annotations/azure.workload.identity~1tenant-id","value":"` + testTenant + `"}]`
	if string(got) != want {
		t.Fatalf("patch %s\nwant  %s", got, want)
	}
}

func TestDecideJobTemplate(t *testing.T) {
	useL := KV{annotations.AzureUseLabel, "true"}
	bindA := KV{annotations.AzureUseIdentityBinding, "true"}
	tests := []struct {
		name           string
		labels, annots map[string]string
		wantL, wantA   []KV
		warns          int
	}{
		{name: "bare template", wantL: []KV{useL}, wantA: []KV{bindA}},
		{name: "other labels", labels: map[string]string{"app": "x"}, annots: map[string]string{"a": "b"}, wantL: []KV{useL}, wantA: []KV{bindA}},
		{name: "already there", labels: map[string]string{useL.Key: "true"}, annots: map[string]string{bindA.Key: "true"}},
		{name: "label only", labels: map[string]string{useL.Key: "true"}, wantA: []KV{bindA}},
		{name: "opted out is kept, with a warning", labels: map[string]string{useL.Key: "false"}, wantA: []KV{bindA}, warns: 1},
		{name: "odd values kept", labels: map[string]string{useL.Key: "True"}, annots: map[string]string{bindA.Key: ""}, warns: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := DecideJobTemplate(tc.labels, tc.annots)
			if fmt.Sprint(d.Labels) != fmt.Sprint(tc.wantL) || fmt.Sprint(d.Annotations) != fmt.Sprint(tc.wantA) {
				t.Errorf("got labels %v annotations %v, want %v %v", d.Labels, d.Annotations, tc.wantL, tc.wantA)
			}
			if len(d.Warnings) != tc.warns {
				t.Errorf("warnings %q, want %d", d.Warnings, tc.warns)
			}
		})
	}
}

func TestJobDecisionApply(t *testing.T) {
	tests := []struct {
		name           string
		present        bool
		labels, annots map[string]string
		want           string
	}{
		{name: "maps present", present: true, labels: map[string]string{"app": "x"}, annots: map[string]string{"a": "b"},
			want: `[{"op":"add","path":"/spec/template/metadata/labels/azure.workload.identity~1use","value":"true"},` +
				`{"op":"add","path":"/spec/template/metadata/annotations/azure.workload.identity~1use-identity-binding","value":"true"}]`},
		{name: "maps absent", present: true,
			want: `[{"op":"add","path":"/spec/template/metadata/labels","value":{"azure.workload.identity/use":"true"}},` +
				`{"op":"add","path":"/spec/template/metadata/annotations","value":{"azure.workload.identity/use-identity-binding":"true"}}]`},
		{name: "template metadata absent",
			want: `[{"op":"add","path":"/spec/template/metadata","value":{"annotations":{"azure.workload.identity/use-identity-binding":"true"},"labels":{"azure.workload.identity/use":"true"}}}]`},
		{name: "nothing to do", present: true, labels: map[string]string{annotations.AzureUseLabel: "false"}, annots: map[string]string{annotations.AzureUseIdentityBinding: "true"},
			want: `null`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := patches.NewBuilder()
			DecideJobTemplate(tc.labels, tc.annots).Apply(b, tc.present, tc.labels, tc.annots)
			got, _ := json.Marshal(b.Ops())
			if string(got) != tc.want {
				t.Fatalf("patch %s\nwant  %s", got, tc.want)
			}
		})
	}
}
