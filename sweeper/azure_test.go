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

func TestAzureChecker(t *testing.T) {
	const clientID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
	bound := bindingFunc(func(_ context.Context, id, ns, name string) (bool, error) {
		return id == clientID && ns == "demo" && name == "app-restore-restore", nil
	})
	broken := bindingFunc(func(context.Context, string, string, string) (bool, error) { return false, errors.New("forbidden") })
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
		{"bound", AzureChecker{bound}, sa("app-restore-restore", full), true, "lists the ServiceAccount", false},
		{"not bound yet", AzureChecker{bound}, sa("other", full), false, "does not list ServiceAccount demo/other", false},
		{"no client id", AzureChecker{bound}, sa("app-restore-restore", map[string]string{annotations.AzureTenantID: "t"}), false, "client-id", false},
		{"no tenant id", AzureChecker{bound}, sa("app-restore-restore", map[string]string{annotations.AzureClientID: clientID}), false, "tenant-id", false},
		{"binding unreadable", AzureChecker{broken}, sa("app-restore-restore", full), false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, reason, err := tc.c.Check(context.Background(), tc.sa)
			if (err != nil) != tc.wantErr || ready != tc.ready || !strings.Contains(reason, tc.reason) {
				t.Errorf("Check = %v %q %v; want %v, %q, error %v", ready, reason, err, tc.ready, tc.reason, tc.wantErr)
			}
		})
	}
}
