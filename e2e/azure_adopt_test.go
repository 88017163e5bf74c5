package e2e

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/providers/azure"
	"go.klusters.dev/credential-webhook/testenv/arm"
)

// Adopting what azure-credential-manager left behind, with the real binary and a real apiserver:
// `roles adopt-azure` as the cluster administrator judges every use-mi-<client ID> pair, writes
// nothing in a dry run, refuses the unfaithful ones, and labels a faithful pair with --apply;
// the webhook's own credentials cannot adopt (its RBAC and self policy, installed by the harness
// from manifests/, refuse the label); and once labelled, the binding is garbage-collected like one
// the server made.
func TestAzureAdoptUpstreamBindings(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	rbac := cluster.Client.RbacV1()
	// The objects azure-credential-manager made (its release post shows them): no labels.
	upstream := func(clientID string, rules []rbacv1.PolicyRule, subjects ...rbacv1.Subject) string {
		name := azure.RBACNamePrefix + clientID
		if rules == nil {
			rules = []rbacv1.PolicyRule{{APIGroups: []string{azure.IdentityBindingAPIGroup}, Resources: []string{clientID}, Verbs: []string{azure.UseManagedIdentityVerb}}}
		}
		if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects:   subjects,
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = rbac.ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
			_ = rbac.ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		return name
	}
	sa := func(name string) rbacv1.Subject {
		return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
	}
	faithfulID, userID, widerID := arm.NewGUID(), arm.NewGUID(), arm.NewGUID()
	faithful := upstream(faithfulID, nil, sa("pg-backup-1772006820"), sa("mongo-backup-177300719"))
	withUser := upstream(userID, nil, sa("pg-backup-1772006821"), rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"})
	wider := upstream(widerID, []rbacv1.PolicyRule{
		{APIGroups: []string{azure.IdentityBindingAPIGroup}, Resources: []string{widerID}, Verbs: []string{azure.UseManagedIdentityVerb}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}},
	}, sa("pg-backup-1772006822"))

	adopt := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, cluster.WebhookBinary, append([]string{"roles", "adopt-azure", "--kubeconfig", cluster.AdminKubeconfig}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("roles adopt-azure %v: %v", args, err)
		}
		t.Logf("roles adopt-azure %s (exit %d)\n%s%s", strings.Join(args, " "), cmd.ProcessState.ExitCode(), out.String(), errOut.String())
		return cmd.ProcessState.ExitCode(), out.String()
	}
	row := func(out, name string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, name+" ") {
				return l
			}
		}
		return ""
	}
	labelled := func(name string) (role, binding bool) {
		r, err := rbac.ClusterRoles().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := rbac.ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Labels[annotations.ManagedLabel] == "true", b.Labels[annotations.ManagedLabel] == "true"
	}

	// Dry run over every use-mi-* pair in the cluster (other tests' ones may be listed too).
	code, out := adopt()
	if code != 1 {
		t.Errorf("dry run with refused pairs: exit %d, want 1", code)
	}
	for name, want := range map[string][]string{
		faithful: {"2", "faithful"},
		withUser: {"2", "REFUSED", `subject User "alice" is not a ServiceAccount`},
		wider:    {"1", "REFUSED", "is not exactly one rule granting use-managed-identity"},
	} {
		r := row(out, name)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("dry run row of %s = %q, want %q in it", name, r, w)
			}
		}
	}
	for _, name := range []string{faithful, withUser, wider} {
		if r, b := labelled(name); r || b {
			t.Fatalf("the dry run labelled %s (role %v, binding %v)", name, r, b)
		}
	}

	// --apply on a refused pair: nothing labelled, exit 1.
	if code, _ := adopt("--client-id", userID, "--apply"); code != 1 {
		t.Errorf("--apply on the pair with a User subject: exit %d, want 1", code)
	}
	if r, b := labelled(withUser); r || b {
		t.Errorf("refused pair labelled: role %v, binding %v", r, b)
	}

	// The webhook's own credentials cannot adopt: no patch on either kind in its RBAC, and the
	// self policy refuses any label change of a binding.
	cfg, err := cluster.ServiceAccountConfig(ctx, harness.WebhookNamespace, harness.WebhookServiceAccount)
	if err != nil {
		t.Fatal(err)
	}
	self, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := azure.Adopt(ctx, kubeadapter.Wrap(self), azure.AdoptOptions{ClientID: faithfulID, Apply: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Verdict != azure.AdoptFailed || !strings.Contains(strings.Join(res[0].Reasons, " "), "forbidden") {
		t.Fatalf("adoption with the webhook's own token: %+v, want FAILED (forbidden)", res)
	}
	if r, b := labelled(faithful); r || b {
		t.Fatalf("the webhook's own token labelled %s (role %v, binding %v)", faithful, r, b)
	}
	// Nor by an update of the binding (the verb its RBAC does hold).
	b, err := self.RbacV1().ClusterRoleBindings().Get(ctx, faithful, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Labels = map[string]string{annotations.ManagedLabel: "true"}
	if _, err := self.RbacV1().ClusterRoleBindings().Update(ctx, b, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "credential-webhook-self") {
		t.Fatalf("the webhook's own token labelled the binding by update: %v, want the self policy's refusal", err)
	}

	// Garbage collection leaves an unlabelled binding alone ...
	gone := func(sns, _ string) (*corev1.ServiceAccount, bool) {
		// Every ServiceAccount of this test's namespace is gone; other tests' are kept.
		return nil, sns != ns
	}
	collector := azure.Collector{CS: kubeadapter.Wrap(cluster.Client)}
	if _, err := collector.Collect(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if b, err := rbac.ClusterRoleBindings().Get(ctx, faithful, metav1.GetOptions{}); err != nil || len(b.Subjects) != 2 {
		t.Fatalf("garbage collection touched the unlabelled %s: %v %v", faithful, b, err)
	}

	// ... --apply as the administrator labels the faithful pair, and nothing else of it changes ...
	if code, out := adopt("--client-id", faithfulID, "--apply"); code != 0 || !strings.Contains(row(out, faithful), "adopted") {
		t.Fatalf("--apply on the faithful pair: exit %d\n%s", code, out)
	}
	if r, b := labelled(faithful); !r || !b {
		t.Fatalf("after --apply: role labelled %v, binding labelled %v", r, b)
	}
	role, err := rbac.ClusterRoles().Get(ctx, faithful, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Resources, []string{faithfulID}) {
		t.Errorf("adoption changed the rules: %+v", role.Rules)
	}
	if code, out := adopt("--client-id", faithfulID); code != 0 || !strings.Contains(row(out, faithful), "ours") {
		t.Errorf("after adoption: exit %d\n%s", code, out)
	}

	// ... and collects it once it is ours: both subjects gone, so the binding goes with them.
	removed, err := collector.Collect(ctx, gone)
	if err != nil {
		t.Fatal(err)
	}
	if removed != 2 {
		t.Errorf("garbage collection removed %d subjects, want the adopted binding's 2", removed)
	}
	if _, err := rbac.ClusterRoleBindings().Get(ctx, faithful, metav1.GetOptions{}); err == nil {
		t.Errorf("the adopted binding outlived its last subject")
	}
	if b, err := rbac.ClusterRoleBindings().Get(ctx, withUser, metav1.GetOptions{}); err != nil || len(b.Subjects) != 2 {
		t.Errorf("garbage collection touched the refused %s: %v %v", withUser, b, err)
	}
}
