package azure

import (
	"bytes"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPlanAdoption(t *testing.T) {
	// What azure-credential-manager made: the exact role and binding, no labels.
	upstreamRole := func() *rbacv1.ClusterRole {
		r := desiredRole(rbacName, testClientID)
		r.Labels = nil
		return r
	}
	upstreamBinding := func() *rbacv1.ClusterRoleBinding {
		return &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: rbacName},
			Subjects: []rbacv1.Subject{
				{Kind: rbacv1.ServiceAccountKind, Namespace: "demo", Name: "pg-backup-1772006820"},
				{Kind: rbacv1.ServiceAccountKind, Namespace: "demo", Name: "mongo-backup-177300719"},
			},
		}
	}
	tests := []struct {
		name         string
		rbacName     string // default rbacName
		role         func(*rbacv1.ClusterRole) *rbacv1.ClusterRole
		binding      func(*rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding
		ours         bool
		labelRole    bool
		labelBinding bool
		reasons      []string
		notes        []string
	}{
		{name: "faithful pair", labelRole: true, labelBinding: true},
		{
			name:    "both labelled already",
			role:    func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole { r.Labels = managedLabels(); return r },
			binding: func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding { b.Labels = managedLabels(); return b },
			ours:    true,
		},
		{
			name:         "role ours (the server created it), binding made by hand",
			role:         func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole { r.Labels = managedLabels(); return r },
			labelBinding: true,
		},
		{
			name:      "role only",
			binding:   func(*rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding { return nil },
			labelRole: true,
			notes:     []string{"no ClusterRoleBinding " + rbacName},
		},
		{
			name:         "binding only: the server creates the exact role when it next binds",
			role:         func(*rbacv1.ClusterRole) *rbacv1.ClusterRole { return nil },
			labelBinding: true,
			notes:        []string{"no ClusterRole " + rbacName + ": the server creates the exact one"},
		},
		{
			name:         "a binding with no subject left",
			binding:      func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding { b.Subjects = nil; return b },
			labelRole:    true,
			labelBinding: true,
		},
		{
			name: "a second rule",
			role: func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole {
				r.Rules = append(r.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}})
				return r
			},
			reasons: []string{"ClusterRole " + rbacName + " is not exactly one rule granting use-managed-identity on cid.wi.aks.azure.com/" + testClientID + " (it has 2 rules)"},
		},
		{
			name: "a wildcard resource",
			role: func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole {
				r.Rules[0].Resources = []string{"*"}
				return r
			},
			reasons: []string{"is not exactly one rule"},
		},
		{
			name: "an aggregationRule",
			role: func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole {
				r.AggregationRule = &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"x": "y"}}}}
				return r
			},
			reasons: []string{"(it has 1 rules, and an aggregationRule)"},
		},
		{
			name: "an aggregate-to label: its rule would reach the admin ClusterRole",
			role: func(r *rbacv1.ClusterRole) *rbacv1.ClusterRole {
				r.Labels = map[string]string{"rbac.authorization.k8s.io/aggregate-to-admin": "true"}
				return r
			},
			reasons: []string{"carries label rbac.authorization.k8s.io/aggregate-to-admin, which adds its rule to other ClusterRoles"},
		},
		{
			name: "binding to another role",
			binding: func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding {
				b.RoleRef.Name = "cluster-admin"
				return b
			},
			reasons: []string{`refers to ClusterRole "cluster-admin", not ClusterRole "` + rbacName + `"`},
		},
		{
			name: "a user and a group among the subjects",
			binding: func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding {
				b.Subjects = append(b.Subjects,
					rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"},
					rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:authenticated"})
				return b
			},
			reasons: []string{`subject User "alice" is not a ServiceAccount`, `subject Group "system:authenticated" is not a ServiceAccount`},
		},
		{
			name: "a ServiceAccount subject with an API group",
			binding: func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding {
				b.Subjects[0].APIGroup = "example.com"
				return b
			},
			reasons: []string{"is not a ServiceAccount"},
		},
		{
			name: "a ServiceAccount subject without a namespace",
			binding: func(b *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding {
				b.Subjects[0].Namespace = ""
				return b
			},
			reasons: []string{"subject: ServiceAccount namespace"},
		},
		{
			name:     "an upper-case client ID in the name",
			rbacName: RBACNamePrefix + strings.ToUpper(testClientID),
			reasons:  []string{"is not named use-mi-<client ID> with a lower-case GUID"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			role, binding := upstreamRole(), upstreamBinding()
			if tc.role != nil {
				role = tc.role(role)
			}
			if tc.binding != nil {
				binding = tc.binding(binding)
			}
			name := rbacName
			if tc.rbacName != "" {
				name = tc.rbacName
			}
			p := planAdoption(name, role, binding)
			if len(p.reasons) != len(tc.reasons) {
				t.Fatalf("reasons %q, want %d matching %q", p.reasons, len(tc.reasons), tc.reasons)
			}
			for i, want := range tc.reasons {
				if !strings.Contains(p.reasons[i], want) {
					t.Errorf("reason %d = %q, want it to contain %q", i, p.reasons[i], want)
				}
			}
			if len(p.notes) != len(tc.notes) {
				t.Fatalf("notes %q, want %d matching %q", p.notes, len(tc.notes), tc.notes)
			}
			for i, want := range tc.notes {
				if !strings.Contains(p.notes[i], want) {
					t.Errorf("note %d = %q, want it to contain %q", i, p.notes[i], want)
				}
			}
			if len(tc.reasons) > 0 {
				if p.ours {
					t.Error("refused and ours")
				}
				return
			}
			if p.ours != tc.ours || p.labelRole != tc.labelRole || p.labelBinding != tc.labelBinding {
				t.Errorf("ours %v labelRole %v labelBinding %v, want %v %v %v", p.ours, p.labelRole, p.labelBinding, tc.ours, tc.labelRole, tc.labelBinding)
			}
		})
	}
}

func TestWriteAdoptTable(t *testing.T) {
	var buf bytes.Buffer
	WriteAdoptTable(&buf, []AdoptResult{
		{Name: rbacName, Subjects: 2, Verdict: AdoptRefused, Reasons: []string{"r1", "r2"}, Notes: []string{"n"}},
	})
	want := "NAME" + strings.Repeat(" ", len(rbacName)-2) + "SUBJECTS  VERDICT  REASONS\n" +
		rbacName + "  2         REFUSED  r1\n" +
		strings.Repeat(" ", len(rbacName)+2+10+9) + "r2\n" +
		strings.Repeat(" ", len(rbacName)+2+10+9) + "note: n\n"
	if buf.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
}
