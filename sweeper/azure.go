package sweeper

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// BindingLister says whether the identity binding of a managed identity (ClusterRoleBinding
// use-mi-<clientID>) lists a ServiceAccount. The Azure provider implements it.
type BindingLister interface {
	BindingLists(ctx context.Context, clientID, namespace, name string) (bool, error)
}

// AzureChecker is the readiness Checker for Azure workload identity with AKS identity binding:
// the ServiceAccount carries client and tenant IDs and the binding lists it. The AKS token proxy
// reads the binding through RBAC, which applies as soon as the apiserver stored it, so unlike
// IAM there is no propagation to wait out.
type AzureChecker struct {
	Bindings BindingLister
}

// Check implements Checker.
func (c AzureChecker) Check(ctx context.Context, sa *corev1.ServiceAccount) (bool, string, error) {
	clientID, tenantID := sa.Annotations[annotations.AzureClientID], sa.Annotations[annotations.AzureTenantID]
	switch {
	case clientID == "":
		return false, "no " + annotations.AzureClientID + " yet", nil
	case tenantID == "":
		return false, "no " + annotations.AzureTenantID + " yet", nil
	}
	ok, err := c.Bindings.BindingLists(ctx, clientID, sa.Namespace, sa.Name)
	if err != nil {
		return false, "", fmt.Errorf("reading the identity binding of client %s: %w", clientID, err)
	}
	if !ok {
		return false, fmt.Sprintf("the identity binding use-mi-%s does not list ServiceAccount %s/%s yet", clientID, sa.Namespace, sa.Name), nil
	}
	return true, fmt.Sprintf("identity binding use-mi-%s lists the ServiceAccount", clientID), nil
}
