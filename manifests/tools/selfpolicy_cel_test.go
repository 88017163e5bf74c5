package main

import (
	"context"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/utils/ptr"
)

// The self policy (templates/selfpolicy.yaml) through the apiserver's own admission code, as in
// admissionpolicy_cel_test.go: what the server's own ServiceAccount may do with its RBAC. The
// e2e test TestSelfPolicyNarrowsTheServersOwnCredentials repeats the main cases in a real
// apiserver, with the server's real RBAC.

const (
	clientID   = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	useMI      = "use-mi-" + clientID
	managedKey = "credential-webhook.klusters.dev/managed"
)

var (
	gvrClusterRoles        = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}
	gvkClusterRole         = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}
	gvrClusterRoleBindings = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}
	gvkClusterRoleBinding  = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}
	gvkTokenRequest        = schema.GroupVersionKind{Group: "authentication.k8s.io", Version: "v1", Kind: "TokenRequest"}
)

func renderSelfPolicy(t *testing.T, rel Release, vals map[string]any) (admissionv1.ValidatingAdmissionPolicy, admissionv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	r, err := Render(context.Background(), testChart(t), rel, vals)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, r)
	var p admissionv1.ValidatingAdmissionPolicy
	var b admissionv1.ValidatingAdmissionPolicyBinding
	into(t, find(t, objs, "ValidatingAdmissionPolicy", fullnameOf(rel)+"-self"), &p)
	into(t, find(t, objs, "ValidatingAdmissionPolicyBinding", fullnameOf(rel)+"-self"), &b)
	return p, b
}

// compileSelf compiles the policy as the ValidatingAdmissionPolicy plugin does (no params).
func compileSelf(t *testing.T, p admissionv1.ValidatingAdmissionPolicy) validating.Validator {
	t.Helper()
	return compileValidator(t, p, false)
}

// selfRequest is one request as the apiserver hands it to validating admission.
type selfRequest struct {
	op          admission.Operation
	gvr         schema.GroupVersionResource
	gvk         schema.GroupVersionKind
	subresource string
	namespace   string
	name        string
	user        string
	old, new    runtime.Object // typed; converted as the apiserver converts them
}

func toUnstructured(t *testing.T, o runtime.Object, gvk schema.GroupVersionKind) *unstructured.Unstructured {
	t.Helper()
	if o == nil {
		return nil
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(gvk)
	return u
}

// evalSelf returns "" when the policy admits r (or does not match it), else the denial message.
func evalSelf(t *testing.T, v validating.Validator, r selfRequest) string {
	t.Helper()
	newObj, oldObj := toUnstructured(t, r.new, r.gvk), toUnstructured(t, r.old, r.gvk)
	var newRO, oldRO runtime.Object
	if newObj != nil {
		newRO = newObj
	}
	if oldObj != nil {
		oldRO = oldObj
	}
	info := &user.DefaultInfo{Name: r.user, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	attrs := admission.NewAttributesRecord(newRO, oldRO, r.gvk, r.namespace, r.name, r.gvr, r.subresource, r.op, nil, false, info)
	va := &admission.VersionedAttributes{Attributes: attrs, VersionedKind: r.gvk}
	if newObj != nil {
		va.VersionedObject = admission.NewLazyObject(newObj)
	}
	if oldObj != nil {
		va.VersionedOldObject = admission.NewLazyObject(oldObj)
	}
	var ns *corev1.Namespace
	if r.namespace != "" {
		ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.namespace}}
	}
	res := v.Validate(context.Background(), va.GetResource(), va, nil, ns, celconfig.RuntimeCELCostBudget, nil)
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

func tokenReq(ns, name string, exp int64, audiences ...string) selfRequest {
	tr := &authenticationv1.TokenRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To(exp)},
	}
	return selfRequest{op: admission.Create, gvr: gvrServiceAccounts, gvk: gvkTokenRequest, subresource: "token", namespace: ns, name: name, user: self, new: tr}
}

func saUpdate(old, new *corev1.ServiceAccount) selfRequest {
	return selfRequest{op: admission.Update, gvr: gvrServiceAccounts, gvk: gvkServiceAccount, namespace: old.Namespace, name: old.Name, user: self, old: old, new: new}
}

func jobUpdate(old, new *batchv1.Job) selfRequest {
	return selfRequest{op: admission.Update, gvr: gvrJobs, gvk: gvkJob, namespace: old.Namespace, name: old.Name, user: self, old: old, new: new}
}

func roleCreate(r *rbacv1.ClusterRole) selfRequest {
	return selfRequest{op: admission.Create, gvr: gvrClusterRoles, gvk: gvkClusterRole, name: r.Name, user: self, new: r}
}

func bindingReq(op admission.Operation, old, new *rbacv1.ClusterRoleBinding) selfRequest {
	r := selfRequest{op: op, gvr: gvrClusterRoleBindings, gvk: gvkClusterRoleBinding, user: self}
	if old != nil {
		r.old, r.name = old, old.Name
	}
	if new != nil {
		r.new, r.name = new, new.Name
	}
	return r
}

// exactRole is the ClusterRole providers/azure writes (desiredRole).
func exactRole() *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: useMI, Labels: map[string]string{managedKey: "true"}},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{clientID}, Verbs: []string{"use-managed-identity"}}},
	}
}

// exactBinding is the ClusterRoleBinding providers/azure creates.
func exactBinding(subjects ...rbacv1.Subject) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: useMI, Labels: map[string]string{managedKey: "true"}, ResourceVersion: "7"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: useMI},
		Subjects:   subjects,
	}
}

func saSubject(ns, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
}

func TestSelfPolicyCEL(t *testing.T) {
	p, _ := renderSelfPolicy(t, DefaultRelease, map[string]any{"allowedNamespaces": []any{"team-*", "backup"}})
	v := compileSelf(t, p)

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "session", Namespace: "team-a", UID: "u1", ResourceVersion: "1",
		Labels:      map[string]string{"app.kubernetes.io/managed-by": "kubestash.com"},
		Annotations: map[string]string{seedRole: "arn:aws:iam::1:role/seed", pending: "aws:abc", "note": "kept"},
	}}
	saWith := func(f func(*corev1.ServiceAccount)) *corev1.ServiceAccount {
		c := sa.DeepCopy()
		c.ResourceVersion = "2"
		f(c)
		return c
	}
	finished := saWith(func(s *corev1.ServiceAccount) {
		s.Annotations["eks.amazonaws.com/role-arn"] = "arn:aws:iam::1:role/seed-0"
		s.Annotations["azure.workload.identity/client-id"] = clientID
		s.Annotations[granted] = "u1 aws:abc"
		delete(s.Annotations, pending)
	})

	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "backup", Namespace: "team-a", Generation: 1, ResourceVersion: "1",
			Labels:      map[string]string{"app.kubernetes.io/managed-by": "kubestash.com"},
			Annotations: map[string]string{holdReason: "aws", heldSince: "2026-01-01T00:00:00Z", "note": "kept"}},
		Spec: batchv1.JobSpec{Suspend: ptr.To(true), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			ServiceAccountName: "session", RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "restic", Image: "restic:1"}},
		}}},
	}
	jobWith := func(base *batchv1.Job, f func(*batchv1.Job)) *batchv1.Job {
		c := base.DeepCopy()
		c.ResourceVersion, c.Generation = "2", 2
		f(c)
		return c
	}
	released := func(j *batchv1.Job) {
		j.Spec.Suspend = ptr.To(false)
		delete(j.Annotations, holdReason)
		delete(j.Annotations, heldSince)
	}
	running := jobWith(job, func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) })

	role := func(f func(*rbacv1.ClusterRole)) *rbacv1.ClusterRole {
		r := exactRole()
		f(r)
		return r
	}
	binding := exactBinding(saSubject("team-a", "session"))
	bindingWith := func(f func(*rbacv1.ClusterRoleBinding)) *rbacv1.ClusterRoleBinding {
		b := binding.DeepCopy()
		b.ResourceVersion = "8"
		f(b)
		return b
	}

	for _, tc := range []struct {
		name string
		req  selfRequest
		deny string // "" admits; else a substring of the message
	}{
		// TokenRequests: what awscheck asks for, and nothing else.
		{"readiness check token", tokenReq("team-a", "session", 600, "sts.amazonaws.com"), ""},
		{"at the maximum lifetime", tokenReq("backup", "session", 3600, "sts.amazonaws.com"), ""},
		{"kube-system", tokenReq("kube-system", "default", 600, "sts.amazonaws.com"), "never mints tokens for ServiceAccounts of kube-system or of its own namespace (credential-webhook); refused: kube-system/default"},
		{"its own ServiceAccount", tokenReq("credential-webhook", "credential-webhook", 600, "sts.amazonaws.com"), "refused: credential-webhook/credential-webhook"},
		{"namespace not served", tokenReq("other", "session", 600, "sts.amazonaws.com"), "only for ServiceAccounts of the namespaces it serves (allowedNamespaces team-*, backup); refused: other/session"},
		{"glob is anchored", tokenReq("x-team-a", "session", 600, "sts.amazonaws.com"), "refused: x-team-a/session"},
		{"the user's own audience", tokenReq("team-a", "session", 600, "vault"), "exactly one audience out of sts.amazonaws.com"},
		{"the API server's audience", tokenReq("team-a", "session", 600, "https://kubernetes.default.svc"), "exactly one audience"},
		{"a second audience", tokenReq("team-a", "session", 600, "sts.amazonaws.com", "vault"), "exactly one audience"},
		{"long-lived", tokenReq("team-a", "session", 86400, "sts.amazonaws.com"), "valid for at most 3600 seconds"},
		{"bound to a Pod", func() selfRequest {
			r := tokenReq("team-a", "session", 600, "sts.amazonaws.com")
			r.new.(*authenticationv1.TokenRequest).Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "p"}
			return r
		}(), "bound to no object"},
		{"another user is not matched", func() selfRequest {
			r := tokenReq("kube-system", "default", 86400, "vault")
			r.user = "system:serviceaccount:kube-system:kubelet"
			return r
		}(), ""},

		// ServiceAccounts: the sweeper's finish patch.
		{"finish patch", saUpdate(sa, finished), ""},
		{"drop clears an output", saUpdate(finished, saWith(func(s *corev1.ServiceAccount) {
			s.Annotations = map[string]string{seedRole: "arn:aws:iam::1:role/seed", "note": "kept"}
		})), ""},
		{"label added", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.Labels["team"] = "x" })), "refused changes to: metadata.labels"},
		{"foreign annotation added", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.Annotations["example.com/x"] = "y" })), "refused: example.com/x"},
		{"input annotation changed", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.Annotations[seedRole] = "arn:aws:iam::1:role/other" })), "refused: " + seedRole},
		{"other annotation removed", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { delete(s.Annotations, "note") })), "refused: note"},
		{"audience annotation set", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.Annotations["eks.amazonaws.com/audience"] = "vault" })), "refused: eks.amazonaws.com/audience"},
		{"secrets", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.Secrets = []corev1.ObjectReference{{Name: "tok"}} })), "refused changes to: secrets"},
		{"imagePullSecrets", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) {
			s.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "pull"}}
		})), "refused changes to: imagePullSecrets"},
		{"automount", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) { s.AutomountServiceAccountToken = ptr.To(true) })), "refused changes to: automountServiceAccountToken"},
		{"ownerReferences", saUpdate(sa, saWith(func(s *corev1.ServiceAccount) {
			s.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x", UID: "u"}}
		})), "metadata.ownerReferences"},
		{"ServiceAccount created", selfRequest{op: admission.Create, gvr: gvrServiceAccounts, gvk: gvkServiceAccount, namespace: "team-a", name: "session", user: self, new: sa}, "never creates or deletes ServiceAccounts"},
		{"ServiceAccount deleted", selfRequest{op: admission.Delete, gvr: gvrServiceAccounts, gvk: gvkServiceAccount, namespace: "team-a", name: "session", user: self, old: sa}, "never creates or deletes ServiceAccounts"},

		// Jobs: the sweeper's release patch.
		{"release", jobUpdate(job, jobWith(job, released)), ""},
		{"release of a Job resumed elsewhere", jobUpdate(running, jobWith(running, func(j *batchv1.Job) {
			delete(j.Annotations, holdReason)
			delete(j.Annotations, heldSince)
		})), ""},
		{"containers changed", jobUpdate(job, jobWith(job, func(j *batchv1.Job) {
			released(j)
			j.Spec.Template.Spec.Containers[0].Image = "evil:1"
		})), "refused changes to: spec.template"},
		{"Job label changed", jobUpdate(job, jobWith(job, func(j *batchv1.Job) { j.Labels["x"] = "y" })), "refused changes to: metadata.labels"},
		{"Job annotation added", jobUpdate(job, jobWith(job, func(j *batchv1.Job) { j.Annotations["example.com/x"] = "y" })), "may only remove credential-webhook.klusters.dev/ annotations of a Job; refused: example.com/x"},
		{"hold added", jobUpdate(running, jobWith(running, func(j *batchv1.Job) { j.Annotations[holdReason] = "other" })), "refused: " + holdReason},
		{"resume a Job never held", func() selfRequest {
			other := job.DeepCopy()
			other.Annotations = map[string]string{"note": "kept"}
			return jobUpdate(other, jobWith(other, func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) }))
		}(), "only resume (spec.suspend false) a Job it held"},
		{"suspend a running Job", jobUpdate(running, jobWith(running, func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(true) })), "never suspend one"},
		{"Job status", func() selfRequest {
			r := jobUpdate(job, jobWith(job, func(*batchv1.Job) {}))
			r.subresource = "status"
			return r
		}(), "nor writes their status"},
		{"Job deleted", selfRequest{op: admission.Delete, gvr: gvrJobs, gvk: gvkJob, namespace: "team-a", name: "backup", user: self, old: job}, "never creates or deletes Jobs"},

		// ClusterRoles: exactly what providers/azure creates.
		{"the identity's role", roleCreate(exactRole()), ""},
		{"another name", roleCreate(role(func(r *rbacv1.ClusterRole) { r.Name = "evil" })), "named use-mi-<client ID> (a lower-case GUID); refused: evil"},
		{"upper-case client ID", roleCreate(role(func(r *rbacv1.ClusterRole) { r.Name = "use-mi-" + strings.ToUpper(clientID) })), "refused: use-mi-0F1E"},
		{"an extra rule", roleCreate(role(func(r *rbacv1.ClusterRole) {
			r.Rules = append(r.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}})
		})), "holds exactly one rule"},
		{"another identity", roleCreate(role(func(r *rbacv1.ClusterRole) { r.Rules[0].Resources = []string{"*"} })), "holds exactly one rule"},
		{"an extra verb", roleCreate(role(func(r *rbacv1.ClusterRole) { r.Rules[0].Verbs = append(r.Rules[0].Verbs, "get") })), "holds exactly one rule"},
		{"resourceNames", roleCreate(role(func(r *rbacv1.ClusterRole) { r.Rules[0].ResourceNames = []string{"x"} })), "holds exactly one rule"},
		{"aggregation", roleCreate(role(func(r *rbacv1.ClusterRole) {
			r.AggregationRule = &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"x": "y"}}}}
		})), "no aggregationRule"},
		{"aggregated into admin", roleCreate(role(func(r *rbacv1.ClusterRole) {
			r.Labels["rbac.authorization.k8s.io/aggregate-to-admin"] = "true"
		})), "carries exactly the label credential-webhook.klusters.dev/managed=true"},
		{"role updated", selfRequest{op: admission.Update, gvr: gvrClusterRoles, gvk: gvkClusterRole, name: useMI, user: self, old: exactRole(), new: exactRole()}, "never updates or deletes ClusterRoles"},
		{"role deleted", selfRequest{op: admission.Delete, gvr: gvrClusterRoles, gvk: gvkClusterRole, name: "admin", user: self, old: exactRole()}, "never updates or deletes ClusterRoles"},

		// ClusterRoleBindings: created, subjects added and removed, deleted once empty.
		{"binding created", bindingReq(admission.Create, nil, binding), ""},
		{"subject added", bindingReq(admission.Update, binding, bindingWith(func(b *rbacv1.ClusterRoleBinding) {
			b.Subjects = append(b.Subjects, saSubject("backup", "s2"))
		})), ""},
		{"subject removed", bindingReq(admission.Update, binding, bindingWith(func(b *rbacv1.ClusterRoleBinding) { b.Subjects = nil })), ""},
		{"binding deleted", bindingReq(admission.Delete, binding, nil), ""},
		{"binding to cluster-admin", bindingReq(admission.Create, nil, func() *rbacv1.ClusterRoleBinding {
			b := exactBinding(saSubject("team-a", "session"))
			b.Name, b.RoleRef.Name = "evil", "cluster-admin"
			return b
		}()), "named use-mi-<client ID> (a lower-case GUID); refused: evil"},
		{"use-mi name, other role", bindingReq(admission.Create, nil, func() *rbacv1.ClusterRoleBinding {
			b := exactBinding(saSubject("team-a", "session"))
			b.RoleRef.Name = "credential-webhook"
			return b
		}()), "refers to the ClusterRole of the same name; refused: ClusterRole credential-webhook"},
		{"a user subject", bindingReq(admission.Create, nil, exactBinding(rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "mallory"})), "binds only ServiceAccounts of the namespaces it serves"},
		{"a group added", bindingReq(admission.Update, binding, bindingWith(func(b *rbacv1.ClusterRoleBinding) {
			b.Subjects = append(b.Subjects, rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:authenticated"})
		})), "binds only ServiceAccounts"},
		{"a kube-system ServiceAccount added", bindingReq(admission.Update, binding, bindingWith(func(b *rbacv1.ClusterRoleBinding) {
			b.Subjects = append(b.Subjects, saSubject("kube-system", "default"))
		})), "never kube-system or credential-webhook"},
		{"a ServiceAccount of a namespace not served", bindingReq(admission.Create, nil, exactBinding(saSubject("other", "s"))), "binds only ServiceAccounts"},
		{"an administrator's subject kept", func() selfRequest {
			admins := exactBinding(rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "admin"})
			admins.Labels = nil
			added := admins.DeepCopy()
			added.Subjects = append(added.Subjects, saSubject("team-a", "session"))
			return bindingReq(admission.Update, admins, added)
		}(), ""},
		{"binding created without our label", bindingReq(admission.Create, nil, bindingWith(func(b *rbacv1.ClusterRoleBinding) { b.Labels = nil })), "carries exactly the label"},
		{"binding label changed", bindingReq(admission.Update, binding, bindingWith(func(b *rbacv1.ClusterRoleBinding) { b.Labels["x"] = "y" })), "changes only the subjects"},
		{"another binding deleted", bindingReq(admission.Delete, func() *rbacv1.ClusterRoleBinding {
			b := exactBinding()
			b.Name = "cluster-admin"
			return b
		}(), nil), "refused: cluster-admin"},
		{"an administrator's binding deleted", bindingReq(admission.Delete, bindingWith(func(b *rbacv1.ClusterRoleBinding) { b.Labels = nil }), nil), "deletes only the ClusterRoleBindings it created"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := evalSelf(t, v, tc.req)
			checkDenial(t, got, tc.deny)
		})
	}
}

// The values reach the policy: another release (its own namespace is never served), audiences,
// lifetime and "*" for namespaces.
func TestSelfPolicyCELValues(t *testing.T) {
	rel := Release{Name: "backup", Namespace: "backup-system"}
	p, b := renderSelfPolicy(t, rel, map[string]any{
		"allowedNamespaces": []any{"*"},
		"selfPolicy":        map[string]any{"tokenAudiences": []any{"sts.amazonaws.com", "sts.amazonaws.com.cn"}, "maxTokenExpirationSeconds": 900},
	})
	if b.Spec.PolicyName != p.Name || len(b.Spec.ValidationActions) != 1 || b.Spec.ValidationActions[0] != admissionv1.Deny || b.Spec.ParamRef != nil {
		t.Errorf("binding %+v", b.Spec)
	}
	if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionv1.Fail {
		t.Errorf("failurePolicy %v", p.Spec.FailurePolicy)
	}
	v := compileSelf(t, p)
	own := "system:serviceaccount:backup-system:backup-credential-webhook"
	for _, tc := range []struct {
		req  selfRequest
		deny string
	}{
		{tokenReq("anything", "session", 900, "sts.amazonaws.com.cn"), ""},
		{tokenReq("anything", "session", 901, "sts.amazonaws.com"), "at most 900 seconds"},
		{tokenReq("kube-system", "default", 600, "sts.amazonaws.com"), "own namespace (backup-system)"},
		{tokenReq("backup-system", "other", 600, "sts.amazonaws.com"), "refused: backup-system/other"},
		// The default release's namespace is an ordinary one here.
		{tokenReq("credential-webhook", "credential-webhook", 600, "sts.amazonaws.com"), ""},
	} {
		tc.req.user = own
		if got := evalSelf(t, v, tc.req); (tc.deny == "") != (got == "") || !strings.Contains(got, tc.deny) {
			t.Errorf("%s/%s: got %q, want %q", tc.req.namespace, tc.req.name, got, tc.deny)
		}
	}
	// The default release's server is someone else to this policy.
	if got := evalSelf(t, v, tokenReq("kube-system", "default", 600, "sts.amazonaws.com")); got != "" {
		t.Errorf("another release's server was refused: %s", got)
	}
}

// An empty allowedNamespaces serves nothing; selfPolicy.enabled=false drops the policy; bracket
// globs fail the render rather than be misread.
func TestSelfPolicyRenderedSwitches(t *testing.T) {
	p, _ := renderSelfPolicy(t, DefaultRelease, map[string]any{"allowedNamespaces": []any{}})
	if got := evalSelf(t, compileSelf(t, p), tokenReq("team-a", "session", 600, "sts.amazonaws.com")); !strings.Contains(got, "namespaces it serves") {
		t.Errorf("empty allowedNamespaces: got %q", got)
	}
	r, err := Render(context.Background(), testChart(t), DefaultRelease, map[string]any{"selfPolicy": map[string]any{"enabled": false}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects(t, r) {
		if o.Template == "selfpolicy.yaml" || strings.HasSuffix(o.Name, "-self") {
			t.Errorf("selfPolicy.enabled=false rendered %s %s", o.Kind, o.Name)
		}
	}
	// One glob dialect (package glob): '*' only, refused by the schema (and the template).
	for _, ns := range []string{"team-[ab]", "team-?", `team-\*`} {
		_, err = Render(context.Background(), testChart(t), DefaultRelease, map[string]any{"allowedNamespaces": []any{ns}})
		if err == nil || !strings.Contains(err.Error(), "allowedNamespaces") {
			t.Errorf("allowedNamespaces %q: err = %v", ns, err)
		}
	}
}

// The policy type-checks as the apiserver checks it: against each kind it matches (the
// subresource is not type-checked), without a warning.
func TestSelfPolicyTypeChecks(t *testing.T) {
	p, _ := renderSelfPolicy(t, DefaultRelease, nil)
	mapper := meta.NewDefaultRESTMapper(nil)
	for _, gvk := range []schema.GroupVersionKind{gvkServiceAccount, gvkJob} {
		mapper.Add(gvk, meta.RESTScopeNamespace)
	}
	for _, gvk := range []schema.GroupVersionKind{gvkClusterRole, gvkClusterRoleBinding} {
		mapper.Add(gvk, meta.RESTScopeRoot)
	}
	checker := &validating.TypeChecker{SchemaResolver: selfSchemas{}, RestMapper: mapper}
	ctx := checker.CreateContext(&p)
	if res := checker.CheckExpression(ctx, "object.metadata.annotations + 1"); len(res) != 4 {
		t.Fatalf("an ill-typed expression has %d results, want one per kind: %s", len(res), res)
	}
	if w := checker.Check(&p); len(w) != 0 {
		t.Errorf("expression warnings: %+v", w)
	}
	for _, v := range p.Spec.Variables {
		if res := checker.CheckExpression(ctx, v.Expression); len(res) != 0 {
			t.Errorf("variable %s: %s", v.Name, res)
		}
	}
}

// selfSchemas adds ClusterRole and ClusterRoleBinding (metadata only: the policy reads the rest
// untyped) to minimalSchemas.
type selfSchemas struct{}

func (selfSchemas) ResolveSchema(gvk schema.GroupVersionKind) (*spec.Schema, error) {
	switch gvk {
	case gvkClusterRole, gvkClusterRoleBinding:
		s, err := minimalSchemas{}.ResolveSchema(gvkServiceAccount)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := minimalSchemas{}.ResolveSchema(gvk)
	if err != nil && err != resolver.ErrSchemaNotFound {
		return nil, err
	}
	return s, err
}
