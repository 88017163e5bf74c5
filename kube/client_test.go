package kube

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/reference"
)

// NewClient sends what client-go's generated clients send for each call the server makes (path,
// verb, protobuf preferred) and decodes the apiserver's answers.
func TestClientRequests(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Accept"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		var out any
		switch {
		case strings.HasSuffix(r.URL.Path, "/token"):
			out = authenticationv1.TokenRequest{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"},
				Status: authenticationv1.TokenRequestStatus{Token: "t0k3n"}}
		case strings.Contains(r.URL.Path, "/serviceaccounts/"):
			out = corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
				ObjectMeta: metav1.ObjectMeta{Name: "sa", Namespace: "demo", UID: "u1"}}
		case strings.HasSuffix(r.URL.Path, "/clusterrolebindings"):
			out = rbacv1.ClusterRoleBindingList{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBindingList"},
				Items: []rbacv1.ClusterRoleBinding{{ObjectMeta: metav1.ObjectMeta{Name: "b"}}}}
		case strings.Contains(r.URL.Path, "/jobs/"):
			out = batchv1.Job{TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"}, ObjectMeta: metav1.ObjectMeta{Name: "j", Namespace: "demo"}}
		case strings.Contains(r.URL.Path, "/leases"):
			out = coordinationv1.Lease{TypeMeta: metav1.TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"}, ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: "ns"}}
		case strings.Contains(r.URL.Path, "/events"):
			out = corev1.Event{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Event"}, ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "demo"}}
		default:
			w.WriteHeader(http.StatusNotFound)
			out = metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: 404}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer srv.Close()
	cs, err := NewClient(&rest.Config{Host: srv.URL, QPS: 50, Burst: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sa, err := cs.CoreV1().ServiceAccounts("demo").Get(ctx, "sa", metav1.GetOptions{})
	if err != nil || sa.UID != "u1" {
		t.Fatalf("get ServiceAccount: %v, %v", sa, err)
	}
	tr, err := cs.CoreV1().ServiceAccounts("demo").CreateToken(ctx, "sa", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil || tr.Status.Token != "t0k3n" {
		t.Fatalf("create token: %v, %v", tr, err)
	}
	if _, err := cs.BatchV1().Jobs("demo").Patch(ctx, "j", types.JSONPatchType, []byte(`[]`), metav1.PatchOptions{FieldManager: "m"}); err != nil {
		t.Fatalf("patch Job: %v", err)
	}
	if _, err := cs.CoordinationV1().Leases("ns").Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "l"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Lease: %v", err)
	}
	if l, err := cs.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 1 {
		t.Fatalf("list ClusterRoleBindings: %v, %v", l, err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "missing", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("get a missing ClusterRole: %v, want not found", err)
	}
	if _, err := (EventSink{Client: cs}).Create(&corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "demo"}}); err != nil {
		t.Fatalf("create Event: %v", err)
	}
	const proto = "application/vnd.kubernetes.protobuf,application/json"
	want := []string{
		"GET /api/v1/namespaces/demo/serviceaccounts/sa " + proto,
		"POST /api/v1/namespaces/demo/serviceaccounts/sa/token " + proto,
		"PATCH /apis/batch/v1/namespaces/demo/jobs/j " + proto,
		"POST /apis/coordination.k8s.io/v1/namespaces/ns/leases " + proto,
		"GET /apis/rbac.authorization.k8s.io/v1/clusterrolebindings " + proto,
		"GET /apis/rbac.authorization.k8s.io/v1/clusterroles/missing " + proto,
		"POST /api/v1/namespaces/demo/events " + proto,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Events name the objects the sweeper reports on by kind and version from Scheme.
func TestSchemeKnowsEventSubjects(t *testing.T) {
	for want, obj := range map[string]runtime.Object{
		"v1/ServiceAccount":                        &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n"}},
		"batch/v1/Job":                             &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "j", Namespace: "n"}},
		"coordination.k8s.io/v1/Lease":             &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: "n"}},
		"rbac.authorization.k8s.io/v1/ClusterRole": &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "r"}},
	} {
		ref, err := reference.GetReference(Scheme, obj)
		if err != nil {
			t.Fatalf("%s: %v", want, err)
		}
		if got := ref.APIVersion + "/" + ref.Kind; got != want {
			t.Errorf("reference %s, want %s", got, want)
		}
	}
}
