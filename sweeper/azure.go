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

// IdentityBindingProver says whether, in ARM, the ServiceAccount's managed identity exists with
// client ID clientID and AKS binds it to this cluster (the IdentityBinding resource on the managed
// cluster, which the operator creates). why explains a false answer, or what was proven; err is a
// failure to read ARM. The Azure provider implements it.
type IdentityBindingProver interface {
	IdentityBound(ctx context.Context, sa *corev1.ServiceAccount, clientID string) (bound bool, why string, err error)
}

// AzureChecker is the readiness Checker for Azure workload identity with AKS identity binding:
// the ServiceAccount carries client and tenant IDs, the binding use-mi-<clientID> lists it, and
// (with ARM set) ARM has the identity and the cluster's identity binding for it. The AKS token
// proxy reads the RBAC binding, which applies as soon as the apiserver stored it, so unlike IAM
// there is no propagation to wait out.
//
// What no check here proves, and every reason says so: a token. Unlike AWS, where a token of the
// ServiceAccount is exchanged with STS, nothing asks Entra ID (through the AKS token proxy) for
// one; nor is it checked that the workload-identity webhook injects the proxy variables into the
// Job's Pods, nor the identity's role assignments on the storage.
type AzureChecker struct {
	Bindings BindingLister
	// ARM proves the identity and the AKS identity binding; nil (no --azure-aks-cluster) checks
	// RBAC only and says so.
	ARM IdentityBindingProver
}

// azureNotProven ends every Azure reason: what the check cannot prove (see AzureChecker).
const azureNotProven = "not proven: a token from Entra ID through the AKS token proxy, the proxy variables in the Pods, the identity's role assignments"

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
	rbac := fmt.Sprintf("identity binding use-mi-%s lists the ServiceAccount", clientID)
	if c.ARM == nil {
		return true, rbac + "; the AKS identity binding in ARM was not checked (--azure-aks-cluster unset); " + azureNotProven, nil
	}
	ok, why, err := c.ARM.IdentityBound(ctx, sa, clientID)
	if err != nil {
		return false, "", fmt.Errorf("reading the AKS identity binding of client %s from ARM: %w", clientID, err)
	}
	if !ok {
		return false, why, nil
	}
	return true, rbac + "; " + why + "; " + azureNotProven, nil
}
