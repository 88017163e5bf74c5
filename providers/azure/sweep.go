package azure

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"go.klusters.dev/credential-webhook/annotations"
)

// Finisher finishes a pending ServiceAccount for the sweeper: resolve the identity, bind the
// ServiceAccount, return the client and tenant IDs to set.
type Finisher struct {
	Resolver Looker
	Binder   Binder
	Scopes   Scopes
}

func (f Finisher) Finish(ctx context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	id, ok, err := ParseIdentity(sa.Annotations)
	if !ok {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !f.Scopes.Allows(id) {
		return nil, fmt.Errorf("managed identity %s is outside the allowed scopes", id.ResourceID())
	}
	r, err := f.Resolver.Lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := f.Binder.EnsureBinding(ctx, r.ClientID, sa.Namespace, sa.Name); err != nil {
		return nil, err
	}
	return map[string]string{annotations.AzureClientID: r.ClientID, annotations.AzureTenantID: r.TenantID}, nil
}

// Collector removes ServiceAccounts that no longer exist from our use-mi-* bindings.
type Collector struct{ CS kubernetes.Interface }

func (c Collector) Collect(ctx context.Context, existing func(namespace, name string) bool) (int, error) {
	list, err := c.CS.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{LabelSelector: annotations.ManagedLabel + "=true"})
	if err != nil {
		return 0, fmt.Errorf("listing identity bindings: %w", err)
	}
	removed := 0
	var errs []error
	for _, b := range list.Items {
		clientID, ok := strings.CutPrefix(b.Name, RBACNamePrefix)
		if !ok || !IsGUID(clientID) {
			continue
		}
		n, err := RemoveSubjects(ctx, c.CS, clientID, existing)
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// BindingLister answers whether a binding lists a ServiceAccount (sweeper readiness).
type BindingLister struct{ CS kubernetes.Interface }

func (b BindingLister) BindingLists(ctx context.Context, clientID, namespace, name string) (bool, error) {
	return BindingLists(ctx, b.CS, clientID, namespace, name)
}
