package pods

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/patches"
)

type saFunc func(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error)

func (f saFunc) Get(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	return f(ctx, ns, name)
}

const minimalPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}`

func TestPluginServiceAccountLookup(t *testing.T) {
	withRole := &corev1.ServiceAccount{}
	withRole.Name, withRole.Namespace = "default", "demo"
	withRole.Annotations = map[string]string{"eks.amazonaws.com/role-arn": "arn:aws:iam::748392615204:role/r-0"}
	tests := []struct {
		name      string
		policy    MissingPolicy
		sas       ServiceAccounts
		op        admissionv1.Operation
		wantCode  int32 // 0: admitted
		wantWarn  string
		wantPatch bool
	}{
		{"default ServiceAccount is used when the Pod names none", MissingAdmit, saMap{"demo/default": withRole}, admissionv1.Create, 0, "", true},
		{"missing, admit", MissingAdmit, saMap{}, admissionv1.Create, 0, "not found", false},
		{"missing, zero policy admits", "", saMap{}, admissionv1.Create, 0, "not found", false},
		{"missing, deny", MissingDeny, saMap{}, admissionv1.Create, http.StatusNotFound, "", false},
		{"lookup error, deny", MissingDeny, saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
			return nil, errors.New("informer not synced")
		}), admissionv1.Create, http.StatusServiceUnavailable, "", false},
		{"lookup error, admit", MissingAdmit, saFunc(func(context.Context, string, string) (*corev1.ServiceAccount, error) {
			return nil, errors.New("informer not synced")
		}), admissionv1.Create, 0, "informer not synced", false},
		{"updates are not ours", MissingDeny, saMap{}, admissionv1.Update, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPlugin(tt.sas, Config{MissingServiceAccount: tt.policy})
			resp := &admission.Response{Patch: patches.NewBuilder()}
			req := &admission.Request{Operation: tt.op, Namespace: "demo", Object: []byte(minimalPod)}
			err := p.Admit(context.Background(), req, resp)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("Admit: %v", err)
				}
			} else {
				d, ok := admission.IsDenied(err)
				if !ok || d.Code != tt.wantCode || !strings.Contains(d.Message, "retry") {
					t.Fatalf("Admit = %v, want a denial with code %d telling to retry", err, tt.wantCode)
				}
			}
			joined := strings.Join(resp.Warnings, "\n")
			if (tt.wantWarn == "") != (joined == "") || !strings.Contains(joined, tt.wantWarn) {
				t.Errorf("warnings %q, want %q", joined, tt.wantWarn)
			}
			if (resp.Patch.Len() > 0) != tt.wantPatch {
				t.Errorf("patch ops %v, want a patch: %v", resp.Patch.Ops(), tt.wantPatch)
			}
		})
	}
}

func TestPluginRejectsUndecodablePod(t *testing.T) {
	p := NewPlugin(saMap{}, Config{})
	resp := &admission.Response{Patch: patches.NewBuilder()}
	err := p.Admit(context.Background(), &admission.Request{Operation: admissionv1.Create, Object: []byte(`{"spec":`)}, resp)
	if d, ok := admission.IsDenied(err); !ok || d.Code != http.StatusBadRequest {
		t.Fatalf("Admit = %v, want a 400 denial", err)
	}
}
