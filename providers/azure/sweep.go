package azure

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/sweeper"
)

// Cloud is Azure as the writer and the sweeper see it (sweeper.Cloud): resolve the identity,
// bind the ServiceAccount, return the client and tenant IDs to set.
type Cloud struct {
	Resolver Looker
	Binder   Binder
	Scopes   Scopes
}

func (Cloud) Name() string { return markers.Azure }

func (Cloud) Claim(ann map[string]string) (markers.Claim, bool) { return ClaimOfAnnotations(ann) }

func (Cloud) Outputs() []string {
	return []string{annotations.AzureClientID, annotations.AzureTenantID}
}

func (f Cloud) Finish(ctx context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	id, ok, err := ParseIdentity(sa.Annotations)
	if !ok {
		// err is nil here: without this case the Event would read "...annotations: <nil>".
		return nil, fmt.Errorf("%w: the ServiceAccount no longer names a managed identity", markers.ErrRefused)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: managed identity annotations: %v", markers.ErrRefused, err)
	}
	if !f.Scopes.Allows(id) {
		return nil, fmt.Errorf("%w: managed identity %s is outside the allowed scopes", markers.ErrRefused, id.ResourceID())
	}
	r, err := f.Resolver.Lookup(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: managed identity %s does not exist", markers.ErrRefused, id.ResourceID())
	}
	if err != nil {
		return nil, err
	}
	if err := f.Binder.EnsureBinding(ctx, r.ClientID, sa.Namespace, sa.Name); err != nil {
		return nil, err
	}
	return map[string]string{annotations.AzureClientID: r.ClientID, annotations.AzureTenantID: r.TenantID}, nil
}

// Collector removes from our use-mi-* bindings the ServiceAccounts that no longer exist or lost
// their standing for that identity (markers.Keeps; their client ID annotation must name the
// binding's identity too). It is a sweeper.ScopedCollector with one scope, every binding: only
// the deletion or change of a ServiceAccount whose markers carry an Azure claim makes it due.
type Collector struct{ CS kube.Client }

// collectorScope is the Collector's one scope.
var collectorScope = sweeper.Scope{Key: "azure-identity-bindings", Claim: markers.Claim{Cloud: markers.Azure}}

// Scopes implements sweeper.ScopedCollector.
func (c Collector) Scopes(context.Context) ([]sweeper.Scope, error) {
	return []sweeper.Scope{collectorScope}, nil
}

// CollectScope implements sweeper.ScopedCollector.
func (c Collector) CollectScope(ctx context.Context, _ sweeper.Scope, lookup markers.Lookup) (int, error) {
	return c.Collect(ctx, lookup)
}

func (c Collector) Collect(ctx context.Context, lookup markers.Lookup) (int, error) {
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
		n, err := RemoveSubjects(ctx, c.CS, clientID, func(ns, name string) bool {
			sa, exists := lookup(ns, name)
			if sa == nil {
				return exists
			}
			want, ok := ClaimOfAnnotations(sa.Annotations)
			return ok && sa.Annotations[annotations.AzureClientID] == clientID && markers.Keeps(sa, exists, ClaimOfAnnotations, want)
		})
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// BindingLister answers whether a binding lists a ServiceAccount (sweeper readiness).
type BindingLister struct{ CS kube.Client }

func (b BindingLister) BindingLists(ctx context.Context, clientID, namespace, name string) (bool, error) {
	return BindingLists(ctx, b.CS, clientID, namespace, name)
}

var _ sweeper.IdentityBindingProver = (*IdentityBindingProver)(nil)
