package azure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
)

// The AKS identity-binding contract: a ServiceAccount may use managed identity <clientID> when
// RBAC allows it verb UseManagedIdentityVerb on resource <clientID> in IdentityBindingAPIGroup.
const (
	IdentityBindingAPIGroup = "cid.wi.aks.azure.com"
	UseManagedIdentityVerb  = "use-managed-identity"
	// RBACNamePrefix + lower-case client ID names both the ClusterRole and the ClusterRoleBinding.
	RBACNamePrefix = "use-mi-"
	// FieldManager is recorded in managedFields of the objects this package writes.
	FieldManager = "credential-webhook"
)

// rbacBackoff paces retries after a Conflict (someone else updated the binding between our Get
// and Update) or AlreadyExists (someone else created it between our Get and Create). Every
// contender but one loses each round, so with many replicas and the sweeper adding subjects to
// one busy identity the retries must spread out: jittered exponential, capped, bounded by ctx.
func rbacBackoff() wait.Backoff {
	return wait.Backoff{Duration: 5 * time.Millisecond, Factor: 1.5, Jitter: 1.0, Steps: 60, Cap: time.Second}
}

// RBACName returns "use-mi-<clientID>" with the client ID lower-cased (object names must be
// lower case; ARM returns client IDs in lower case anyway). The client ID must be a GUID: it is
// the only thing standing between a value from ARM and an RBAC object name.
func RBACName(clientID string) (string, error) {
	if !IsGUID(clientID) {
		return "", fmt.Errorf("client ID %s is not a GUID", quote(clientID))
	}
	return RBACNamePrefix + strings.ToLower(clientID), nil
}

func validateSA(ns, name string) error {
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("ServiceAccount namespace %s: %s", quote(ns), strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("ServiceAccount name %s: %s", quote(name), strings.Join(errs, "; "))
	}
	return nil
}

func managedLabels() map[string]string { return map[string]string{annotations.ManagedLabel: "true"} }

func isOurs(m metav1.Object) bool { return m.GetLabels()[annotations.ManagedLabel] == "true" }

// desiredRole is the ClusterRole granting use of one identity.
func desiredRole(name, clientID string) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{IdentityBindingAPIGroup},
			Resources: []string{clientID},
			Verbs:     []string{UseManagedIdentityVerb},
		}},
	}
}

// roleExact reports whether role is exactly what desiredRole makes: one rule, the verb on the
// client ID in the identity-binding group, no resourceNames, no non-resource URLs and no
// aggregation. Binding a ServiceAccount to a role is handing it everything the role grants, so a
// pre-existing use-mi-<id> role that grants more (wildcards, other resources, an aggregationRule
// that pulls in other roles' rules) is refused, not reused: the name is predictable, and whoever
// could create it first would otherwise choose what our bindings hand out.
func roleExact(role *rbacv1.ClusterRole, clientID string) bool {
	if role.AggregationRule != nil || len(role.Rules) != 1 {
		return false
	}
	r := role.Rules[0]
	return slices.Equal(r.APIGroups, []string{IdentityBindingAPIGroup}) &&
		slices.Equal(r.Resources, []string{clientID}) &&
		slices.Equal(r.Verbs, []string{UseManagedIdentityVerb}) &&
		len(r.ResourceNames) == 0 && len(r.NonResourceURLs) == 0
}

func roleRefOK(b *rbacv1.ClusterRoleBinding, name string) bool {
	return b.RoleRef.APIGroup == rbacv1.GroupName && b.RoleRef.Kind == "ClusterRole" && b.RoleRef.Name == name
}

func isSubject(s rbacv1.Subject, ns, name string) bool {
	return s.Kind == rbacv1.ServiceAccountKind && s.APIGroup == "" && s.Namespace == ns && s.Name == name
}

func hasSubject(b *rbacv1.ClusterRoleBinding, ns, name string) bool {
	return slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return isSubject(s, ns, name) })
}

// EnsureBinding lets ServiceAccount saNamespace/saName use the managed identity clientID: it
// creates ClusterRole use-mi-<clientID> when missing and adds the ServiceAccount to
// ClusterRoleBinding use-mi-<clientID> (created when missing) unless already listed.
//
// Concurrency: the binding is changed by Get + Update, so the apiserver's resourceVersion check
// turns a concurrent change into a Conflict, which is retried from a fresh Get; two creators
// race on Create and the loser retries as an update. No concurrent addition is lost and no
// subject is listed twice.
//
// The ClusterRole is never updated: its rules follow from the client ID alone, so an existing
// role is either exactly the desired one (fine, whoever made it) or not ours to fix (an error,
// and nothing is bound to it). Not updating roles keeps the webhook's own RBAC narrower (no
// "update" on clusterroles). An existing binding without our label (an administrator made it)
// gets the subject added but is not adopted, so RemoveSubjects never prunes it.
func EnsureBinding(ctx context.Context, cs kube.Client, clientID, saNamespace, saName string) error {
	name, err := RBACName(clientID)
	if err != nil {
		return err
	}
	if err := validateSA(saNamespace, saName); err != nil {
		return err
	}
	subject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: saNamespace, Name: saName}
	if err := ensureSubjects(ctx, cs, name, strings.ToLower(clientID), []rbacv1.Subject{subject}); err != nil {
		return fmt.Errorf("adding ServiceAccount %s/%s to ClusterRoleBinding %s: %w", saNamespace, saName, name, err)
	}
	return nil
}

// ensureSubjects makes sure ClusterRole name exists and ClusterRoleBinding name lists every
// subject, in one read-modify-write (retried on conflict).
func ensureSubjects(ctx context.Context, cs kube.Client, name, clientID string, subjects []rbacv1.Subject) error {
	if err := ensureRole(ctx, cs, name, clientID); err != nil {
		return err
	}
	bindings := cs.RbacV1().ClusterRoleBindings()
	return retryConflicts(ctx, func() error {
		b, err := bindings.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = bindings.Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
				Subjects:   dedupe(nil, subjects),
			}, metav1.CreateOptions{FieldManager: FieldManager})
			return err
		}
		if err != nil {
			return err
		}
		if !roleRefOK(b, name) {
			return fmt.Errorf("ClusterRoleBinding %s refers to %s %q, not ClusterRole %q", name, b.RoleRef.Kind, b.RoleRef.Name, name)
		}
		merged := dedupe(b, subjects)
		if len(merged) == len(b.Subjects) {
			return nil
		}
		b.Subjects = merged
		_, err = bindings.Update(ctx, b, metav1.UpdateOptions{FieldManager: FieldManager})
		return err
	})
}

// dedupe returns b's subjects followed by those of add that b (and add itself) does not list yet.
func dedupe(b *rbacv1.ClusterRoleBinding, add []rbacv1.Subject) []rbacv1.Subject {
	cur := &rbacv1.ClusterRoleBinding{}
	if b != nil {
		cur.Subjects = append(cur.Subjects, b.Subjects...)
	}
	for _, s := range add {
		if !hasSubject(cur, s.Namespace, s.Name) {
			cur.Subjects = append(cur.Subjects, s)
		}
	}
	return cur.Subjects
}

func ensureRole(ctx context.Context, cs kube.Client, name, clientID string) error {
	roles := cs.RbacV1().ClusterRoles()
	role, err := roles.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = roles.Create(ctx, desiredRole(name, clientID), metav1.CreateOptions{FieldManager: FieldManager})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating ClusterRole %s: %w", name, err)
		}
		// Another replica created it between our Get and Create: check what it made.
		role, err = roles.Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("reading ClusterRole %s: %w", name, err)
	}
	if !roleExact(role, clientID) {
		return fmt.Errorf("ClusterRole %s exists but is not exactly one rule granting %s on %s/%s (no wildcards, resourceNames or aggregation); refusing to bind to it and not modifying it: an administrator must delete or fix it", name, UseManagedIdentityVerb, IdentityBindingAPIGroup, clientID)
	}
	return nil
}

// RemoveSubjects is garbage collection for one identity: it removes from ClusterRoleBinding
// use-mi-<clientID> every ServiceAccount subject for which keep returns false, and deletes the
// binding when no subject is left (with a resourceVersion precondition, so a subject added
// concurrently is never deleted with it; the loser retries). Subjects of other kinds are kept.
// It returns how many subjects were removed. keep may be called more than once per subject when
// a conflict forces a retry.
//
// A missing binding, or one without our label (made by someone else), is left alone. The
// ClusterRole is kept: it grants nothing without a binding, there is one per identity (not per
// ServiceAccount), and deleting it would race with an EnsureBinding that just checked it.
func RemoveSubjects(ctx context.Context, cs kube.Client, clientID string, keep func(ns, name string) bool) (int, error) {
	name, err := RBACName(clientID)
	if err != nil {
		return 0, err
	}
	bindings := cs.RbacV1().ClusterRoleBindings()
	removed := 0
	err = retryConflicts(ctx, func() error {
		removed = 0
		b, err := bindings.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !isOurs(b) {
			return nil
		}
		kept := make([]rbacv1.Subject, 0, len(b.Subjects))
		for _, s := range b.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && !keep(s.Namespace, s.Name) {
				removed++
				continue
			}
			kept = append(kept, s)
		}
		if removed == 0 {
			return nil
		}
		if len(kept) == 0 {
			rv, uid := b.ResourceVersion, b.UID
			err := bindings.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv, UID: &uid}})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		b.Subjects = kept
		_, err = bindings.Update(ctx, b, metav1.UpdateOptions{FieldManager: FieldManager})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("removing subjects from ClusterRoleBinding %s: %w", name, err)
	}
	return removed, nil
}

// BindingLists reports whether the ServiceAccount can use the identity as far as RBAC goes:
// ClusterRoleBinding use-mi-<clientID> lists it and refers to ClusterRole use-mi-<clientID>,
// which grants the verb. Missing objects give false and no error; a binding referring to another
// role is an error (it needs an administrator).
func BindingLists(ctx context.Context, cs kube.Client, clientID, ns, name string) (bool, error) {
	rbacName, err := RBACName(clientID)
	if err != nil {
		return false, err
	}
	if err := validateSA(ns, name); err != nil {
		return false, err
	}
	b, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading ClusterRoleBinding %s: %w", rbacName, err)
	}
	if !roleRefOK(b, rbacName) {
		return false, fmt.Errorf("ClusterRoleBinding %s refers to %s %q, not ClusterRole %q", rbacName, b.RoleRef.Kind, b.RoleRef.Name, rbacName)
	}
	if !hasSubject(b, ns, name) {
		return false, nil
	}
	role, err := cs.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading ClusterRole %s: %w", rbacName, err)
	}
	return roleExact(role, strings.ToLower(clientID)), nil
}

// retryConflicts runs fn until it succeeds or fails with something other than Conflict or
// AlreadyExists, backing off between attempts. Unlike retry.RetryOnConflict it stops waiting
// when ctx ends, which matters inside an admission review's time budget.
func retryConflicts(ctx context.Context, fn func() error) error {
	b := rbacBackoff()
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			return err
		}
		if b.Steps <= 1 {
			return fmt.Errorf("still conflicting after %d attempts: %w", attempt, err)
		}
		t := time.NewTimer(b.Step())
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, context.Cause(ctx))
		case <-t.C:
		}
	}
}
