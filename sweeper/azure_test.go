package sweeper

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

type bindingFunc func(ctx context.Context, clientID, ns, name string) (bool, error)

func (f bindingFunc) BindingLists(ctx context.Context, clientID, ns, name string) (bool, error) {
	return f(ctx, clientID, ns, name)
}

type proverFunc func(ctx context.Context, sa *corev1.ServiceAccount, clientID string) (bool, string, error)

func (f proverFunc) IdentityBound(ctx context.Context, sa *corev1.ServiceAccount, clientID string) (bool, string, error) {
	return f(ctx, sa, clientID)
}

func TestAzureChecker(t *testing.T) {
	const clientID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
	bound := bindingFunc(func(_ context.Context, id, ns, name string) (bool, error) {
		return id == clientID && ns == "demo" && name == "app-restore-restore", nil
	})
	broken := bindingFunc(func(context.Context, string, string, string) (bool, error) { return false, errors.New("forbidden") })
	armBound := proverFunc(func(_ context.Context, sa *corev1.ServiceAccount, id string) (bool, string, error) {
		return id == clientID, "AKS identity binding \"ib\" maps managed identity mi to cluster aks", nil
	})
	armMissing := proverFunc(func(context.Context, *corev1.ServiceAccount, string) (bool, string, error) {
		return false, "no AKS identity binding of cluster aks maps managed identity mi", nil
	})
	armDown := proverFunc(func(context.Context, *corev1.ServiceAccount, string) (bool, string, error) {
		return false, "", errors.New("503 ServiceUnavailable")
	})
	sa := func(name string, ann map[string]string) *corev1.ServiceAccount {
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Annotations: ann}}
	}
	full := map[string]string{annotations.AzureClientID: clientID, annotations.AzureTenantID: "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"}
	for _, tc := range []struct {
		name    string
		c       AzureChecker
		sa      *corev1.ServiceAccount
		ready   bool
		reason  string
		wantErr bool
	}{
		{"bound, ARM not checked", AzureChecker{Bindings: bound}, sa("app-restore-restore", full), true, "lists the ServiceAccount; the AKS identity binding in ARM was not checked (--azure-aks-cluster unset); not proven: a token", false},
		{"not bound yet", AzureChecker{Bindings: bound}, sa("other", full), false, "does not list ServiceAccount demo/other", false},
		{"no client id", AzureChecker{Bindings: bound}, sa("app-restore-restore", map[string]string{annotations.AzureTenantID: "t"}), false, "client-id", false},
		{"no tenant id", AzureChecker{Bindings: bound}, sa("app-restore-restore", map[string]string{annotations.AzureClientID: clientID}), false, "tenant-id", false},
		{"binding unreadable", AzureChecker{Bindings: broken}, sa("app-restore-restore", full), false, "", true},
		{"bound in RBAC and ARM", AzureChecker{Bindings: bound, ARM: armBound}, sa("app-restore-restore", full), true, `lists the ServiceAccount; AKS identity binding "ib" maps managed identity mi to cluster aks; not proven: a token`, false},
		{"ARM binding missing", AzureChecker{Bindings: bound, ARM: armMissing}, sa("app-restore-restore", full), false, "no AKS identity binding", false},
		{"ARM down", AzureChecker{Bindings: bound, ARM: armDown}, sa("app-restore-restore", full), false, "", true},
		{"RBAC first: ARM not asked while unbound", AzureChecker{Bindings: bound, ARM: armDown}, sa("other", full), false, "does not list", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, reason, err := tc.c.Check(context.Background(), tc.sa)
			if (err != nil) != tc.wantErr || ready != tc.ready || !strings.Contains(reason, tc.reason) {
				t.Errorf("Check = %v %q %v; want %v, %q, error %v", ready, reason, err, tc.ready, tc.reason, tc.wantErr)
			}
		})
	}
}
