package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
	"go.klusters.dev/credential-webhook/testenv/arm"
)

const (
	operator = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	saNS     = "demo"
	saName   = "sample-backup-daemon-demo-session-1778072138"
)

// countingBinder is the real BindingBatcher (EnsureBinding against client-go's fake with the
// apiserver's conflict semantics, see fakeCluster) behind a call counter and an optional failure.
type countingBinder struct {
	next  Binder
	calls atomic.Int64
	err   error
}

func (b *countingBinder) EnsureBinding(ctx context.Context, clientID, ns, name string) error {
	b.calls.Add(1)
	if b.err != nil {
		return b.err
	}
	return b.next.EnsureBinding(ctx, clientID, ns, name)
}

type saEnv struct {
	arm     *fakeARM
	r       *Resolver
	cluster *fakeCluster
	binder  *countingBinder
	plugin  *ServiceAccountPlugin
}

func newSAEnv(t *testing.T) *saEnv {
	t.Helper()
	f := newFakeARM()
	r, _ := newTestResolver(t, f, ResolverConfig{})
	c := newFakeCluster()
	b := &countingBinder{next: &BindingBatcher{CS: c}}
	scopes, err := ParseScopes("/subscriptions/" + testSub)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := access.Parse("demo,team-*", operator+",group:kubestash-operators")
	if err != nil {
		t.Fatal(err)
	}
	return &saEnv{arm: f, r: r, cluster: c, binder: b, plugin: &ServiceAccountPlugin{Resolver: r, Binder: b, Scopes: scopes, Access: pol}}
}

// review is one ServiceAccount review; zero fields take the defaults of a KubeStash CREATE.
type review struct {
	op       admissionv1.Operation
	ns, name string
	user     string
	groups   []string
	dryRun   bool
	// authenticated: the review came over a client certificate with an allowed name (the
	// apiserver itself); only then may the plugin write RBAC at admission.
	authenticated bool
	ann, old      map[string]string
	rawObject     string // overrides ann: the object exactly as sent
	budget        time.Duration
}

func saObject(name, ns string, ann map[string]string) []byte {
	meta := map[string]any{"name": name, "namespace": ns, "labels": map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue}}
	if ann != nil {
		meta["annotations"] = ann
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
	return b
}

type result struct {
	resp *admission.Response
	err  error
	obj  []byte            // the object with the patch applied
	ann  map[string]string // its annotations
}

func admit(t *testing.T, p admission.Plugin, rv review) result {
	t.Helper()
	if rv.op == "" {
		rv.op = admissionv1.Create
	}
	if rv.ns == "" {
		rv.ns = saNS
	}
	if rv.user == "" {
		rv.user = operator
	}
	if rv.budget == 0 {
		rv.budget = 5 * time.Second
	}
	obj := []byte(rv.rawObject)
	if rv.rawObject == "" {
		obj = saObject(rv.name, rv.ns, rv.ann)
	}
	req := &admission.Request{Operation: rv.op, Namespace: rv.ns, Name: rv.name, DryRun: rv.dryRun, Object: obj,
		Authenticated: rv.authenticated, Log: slog.New(slog.DiscardHandler)}
	if rv.op == admissionv1.Update {
		req.OldObject = saObject(rv.name, rv.ns, rv.old)
	}
	req.UserInfo.Username, req.UserInfo.Groups = rv.user, rv.groups
	ctx, cancel := context.WithTimeout(context.Background(), rv.budget)
	defer cancel()
	res := result{resp: &admission.Response{Patch: patches.NewBuilder()}}
	res.err = p.Admit(ctx, req, res.resp)
	res.obj = applyOps(t, obj, res.resp.Patch)
	res.ann = metaMap(t, res.obj, "metadata", "annotations")
	return res
}

// applyOps applies the plugin's patch with the JSON-patch library the apiserver uses, so a
// patch that would not apply (an add into a missing map, a bad pointer) fails the test.
func applyOps(t *testing.T, obj []byte, b *patches.Builder) []byte {
	t.Helper()
	if b.Len() == 0 {
		return obj
	}
	raw, err := json.Marshal(b.Ops())
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		t.Fatalf("patch %s: %v", raw, err)
	}
	out, err := p.Apply(obj)
	if err != nil {
		t.Fatalf("patch %s does not apply: %v", raw, err)
	}
	return out
}

// metaMap reads a string map at path from a JSON object (nil when absent or not an object).
func metaMap(t *testing.T, obj []byte, path ...string) map[string]string {
	t.Helper()
	var v any
	if err := json.Unmarshal(obj, &v); err != nil {
		return nil
	}
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	out := map[string]string{}
	for k, x := range m {
		s, _ := x.(string)
		out[k] = s
	}
	return out
}

func oneWarning(t *testing.T, res result, has ...string) {
	t.Helper()
	if len(res.resp.Warnings) != 1 {
		t.Fatalf("warnings %q, want one", res.resp.Warnings)
	}
	for _, s := range has {
		if !strings.Contains(res.resp.Warnings[0], s) {
			t.Errorf("warning %q lacks %q", res.resp.Warnings[0], s)
		}
	}
}

// claimed reports whether the review recorded exactly the claim on testIdentity (the route's
// PendingMarker, not in these tests, turns it into our pending annotation).
func claimed(res result) bool {
	return len(res.resp.Pending) == 1 && res.resp.Pending.Has(ClaimOf(testIdentity))
}

func (e *saEnv) bound(t *testing.T, ns, name string) bool {
	t.Helper()
	ok, err := BindingLists(context.Background(), e.cluster, testClientID, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestServiceAccountPluginAssigns(t *testing.T) {
	e := newSAEnv(t)
	// Not authenticated: a review body proves nothing about who sent it, so admission resolves
	// the identity (a read) and claims it, and the binding waits until the ServiceAccount is
	// seen persisted.
	res := admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI)})
	if res.err != nil || len(res.resp.Warnings) != 0 {
		t.Fatalf("err %v, warnings %q", res.err, res.resp.Warnings)
	}
	if res.ann[annotations.AzureClientID] != testClientID || res.ann[annotations.AzureTenantID] != testTenant {
		t.Fatalf("annotations after patch: %v", res.ann)
	}
	if !claimed(res) {
		t.Errorf("pending claims %v, want %v", res.resp.Pending, ClaimOf(testIdentity))
	}
	if _, ok := res.ann[annotations.Pending]; ok {
		t.Error("the plugin wrote the pending annotation itself (PendingMarker's job)")
	}
	for k, v := range azAnn(testSub, testRG, testMI) {
		if res.ann[k] != v {
			t.Errorf("input annotation %s changed to %q", k, res.ann[k])
		}
	}
	if e.bound(t, saNS, saName) || e.binder.calls.Load() != 0 || e.cluster.writes() != 0 {
		t.Fatalf("an unauthenticated review wrote RBAC: binder calls %d, writes %d", e.binder.calls.Load(), e.cluster.writes())
	}
	if e.arm.gets.Load() != 1 {
		t.Fatalf("ARM gets %d", e.arm.gets.Load())
	}

	// Authenticated (the apiserver's client certificate): the binding is written at admission,
	// and the claim still recorded (the writer binds it to the persisted object's UID).
	res = admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI), authenticated: true})
	if res.err != nil || len(res.resp.Warnings) != 0 || res.ann[annotations.AzureClientID] != testClientID || !claimed(res) {
		t.Fatalf("authenticated: err %v, warnings %q, annotations %v, claims %v", res.err, res.resp.Warnings, res.ann, res.resp.Pending)
	}
	if !e.bound(t, saNS, saName) {
		t.Error("ServiceAccount not in use-mi binding")
	}
	if e.arm.gets.Load() != 1 || e.binder.calls.Load() != 1 {
		t.Fatalf("ARM gets %d (want the cached answer), binder calls %d", e.arm.gets.Load(), e.binder.calls.Load())
	}

	// The next ServiceAccount on the same identity: from the cache, one more subject.
	res = admit(t, e.plugin, review{name: saName + "-2", ann: azAnn(testSub, testRG, testMI), authenticated: true})
	if res.ann[annotations.AzureClientID] != testClientID || !e.bound(t, saNS, saName+"-2") || !e.bound(t, saNS, saName) {
		t.Fatalf("second ServiceAccount: %v", res.ann)
	}
	if e.arm.gets.Load() != 1 {
		t.Fatalf("ARM gets %d, want the cached answer", e.arm.gets.Load())
	}
	if n := len(e.cluster.binding(t).Subjects); n != 2 {
		t.Fatalf("binding has %d subjects", n)
	}

	// Without a Kubernetes API (local runs) an authenticated review still only sets the IDs.
	e.plugin.Binder = nil
	res = admit(t, e.plugin, review{name: saName + "-3", ann: azAnn(testSub, testRG, testMI), authenticated: true})
	if res.err != nil || res.ann[annotations.AzureClientID] != testClientID || !claimed(res) || e.bound(t, saNS, saName+"-3") {
		t.Fatalf("no binder: err %v, annotations %v, claims %v", res.err, res.ann, res.resp.Pending)
	}
}

func TestServiceAccountPluginDryRun(t *testing.T) {
	e := newSAEnv(t)
	res := admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI), dryRun: true})
	if res.err != nil || res.ann[annotations.AzureClientID] != testClientID || res.ann[annotations.AzureTenantID] != testTenant {
		t.Fatalf("dry run: err %v, annotations %v (the answer should look like the real one)", res.err, res.ann)
	}
	if e.binder.calls.Load() != 0 || e.cluster.writes() != 0 || len(res.resp.Pending) != 0 {
		t.Fatalf("dry run wrote RBAC or claimed: binder calls %d, writes %d, claims %v", e.binder.calls.Load(), e.cluster.writes(), res.resp.Pending)
	}
	// Even from the apiserver itself, a dry run writes nothing.
	res = admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI), dryRun: true, authenticated: true})
	if res.ann[annotations.AzureClientID] != testClientID || e.binder.calls.Load() != 0 || len(res.resp.Pending) != 0 {
		t.Fatalf("authenticated dry run: annotations %v, binder calls %d, claims %v", res.ann, e.binder.calls.Load(), res.resp.Pending)
	}

	// A dry run that cannot reach ARM warns but claims nothing (nothing for the writer).
	e.arm.failNext(http.StatusTooManyRequests)
	e.r.Forget(testIdentity)
	res = admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI), dryRun: true})
	if _, ok := res.ann[annotations.Pending]; ok || len(res.resp.Pending) != 0 || len(res.resp.Warnings) != 1 {
		t.Fatalf("throttled dry run: annotations %v, claims %v, warnings %q", res.ann, res.resp.Pending, res.resp.Warnings)
	}
}

// Requests that must not reach ARM or RBAC: each gets a warning, no patch, no call.
func TestServiceAccountPluginRefusesWithoutCalls(t *testing.T) {
	const otherSub = "0b7f2d6e-1a3c-4e5f-9d8b-7c6a5e4d3c2b"
	full := azAnn(testSub, testRG, testMI)
	tests := []struct {
		name string
		rv   review
		has  []string
	}{
		{"scope not allowed", review{name: saName, ann: azAnn(otherSub, testRG, testMI)},
			[]string{"outside the allowed scopes", otherSub}},
		{"requester not allowed", review{name: saName, ann: full, user: "system:serviceaccount:demo:mallory"},
			[]string{"requester", "system:serviceaccount:demo:mallory", "not allowed"}},
		{"namespace not allowed", review{name: saName, ns: "kube-system", ann: full},
			[]string{"namespace", "kube-system"}},
		{"subscription missing", review{name: saName, ann: azAnn("", testRG, testMI)},
			[]string{annotations.AzureSubscriptionID, "missing"}},
		{"resource group missing", review{name: saName, ann: azAnn(testSub, "", testMI)},
			[]string{annotations.AzureRGName, "missing"}},
		{"identity name only", review{name: saName, ann: azAnn("", "", testMI)},
			[]string{annotations.AzureSubscriptionID, annotations.AzureRGName}},
		{"subscription not a GUID", review{name: saName, ann: azAnn("my-subscription", testRG, testMI)},
			[]string{annotations.AzureSubscriptionID, "invalid"}},
		{"generateName", review{name: "", ann: full}, []string{"generateName"}},
	}
	// An authenticated review proves only who sent it (the apiserver): the requester and the
	// identity must still be allowed.
	for _, tc := range tests {
		for _, auth := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/authenticated=%v", tc.name, auth), func(t *testing.T) {
				e := newSAEnv(t)
				rv := tc.rv
				rv.authenticated = auth
				res := admit(t, e.plugin, rv)
				if res.err != nil {
					t.Fatalf("err %v (a warning, not a denial, is expected)", res.err)
				}
				oneWarning(t, res, tc.has...)
				if res.resp.Patch.Len() != 0 || len(res.resp.Pending) != 0 {
					t.Errorf("patch %+v, claims %v", res.resp.Patch.Ops(), res.resp.Pending)
				}
				if e.arm.gets.Load() != 0 || e.binder.calls.Load() != 0 {
					t.Errorf("ARM gets %d, binder calls %d; want none", e.arm.gets.Load(), e.binder.calls.Load())
				}
			})
		}
	}
	// An allowed group is enough for a requester whose name is not listed.
	e := newSAEnv(t)
	res := admit(t, e.plugin, review{name: saName, ann: full, user: "alice", groups: []string{"kubestash-operators"}})
	if res.ann[annotations.AzureClientID] != testClientID {
		t.Fatalf("allowed group: %v %q", res.ann, res.resp.Warnings)
	}
}

func TestServiceAccountPluginIgnoresOthers(t *testing.T) {
	e := newSAEnv(t)
	for _, rv := range []review{
		{name: saName},
		{name: saName, ann: map[string]string{annotations.SeedRole: "arn:aws:iam::123456789012:role/kubestash"}},
		{name: saName, ann: map[string]string{annotations.AzureMIName: ""}},
		{name: saName, op: admissionv1.Delete, ann: azAnn(testSub, testRG, testMI)},
		{name: saName, op: admissionv1.Connect, ann: azAnn(testSub, testRG, testMI)},
	} {
		res := admit(t, e.plugin, rv)
		if res.err != nil || res.resp.Patch.Len() != 0 || len(res.resp.Warnings) != 0 {
			t.Errorf("%+v: err %v, patch %+v, warnings %q", rv, res.err, res.resp.Patch.Ops(), res.resp.Warnings)
		}
	}
	if e.arm.gets.Load() != 0 || e.binder.calls.Load() != 0 {
		t.Fatalf("ARM gets %d, binder calls %d", e.arm.gets.Load(), e.binder.calls.Load())
	}
}

func TestServiceAccountPluginARMFailures(t *testing.T) {
	full := azAnn(testSub, testRG, testMI)

	t.Run("throttled: admitted, claimed, warned, no RBAC", func(t *testing.T) {
		e := newSAEnv(t)
		e.arm.failNext(http.StatusTooManyRequests)
		res := admit(t, e.plugin, review{name: saName, ann: full, authenticated: true})
		if res.err != nil || !claimed(res) {
			t.Fatalf("err %v, claims %v", res.err, res.resp.Pending)
		}
		if res.ann[annotations.AzureClientID] != "" || res.ann[annotations.AzureTenantID] != "" {
			t.Errorf("IDs set without an ARM answer: %v", res.ann)
		}
		oneWarning(t, res, "did not finish", "429")
		if e.binder.calls.Load() != 0 {
			t.Error("RBAC written without a client ID")
		}
		// The next review of the same ServiceAccount (an UPDATE, IDs still missing) retries ARM
		// and completes; not authenticated, it leaves the binding to the writer.
		old := res.ann
		res = admit(t, e.plugin, review{op: admissionv1.Update, name: saName, ann: old, old: old})
		if res.ann[annotations.AzureClientID] != testClientID || !claimed(res) || len(res.resp.Warnings) != 0 {
			t.Fatalf("retry: annotations %v, claims %v, warnings %q", res.ann, res.resp.Pending, res.resp.Warnings)
		}
		if e.bound(t, saNS, saName) || e.binder.calls.Load() != 0 {
			t.Error("an unauthenticated retry wrote RBAC")
		}
		res = admit(t, e.plugin, review{op: admissionv1.Update, name: saName, ann: old, old: old, authenticated: true})
		if res.ann[annotations.AzureClientID] != testClientID || !claimed(res) || !e.bound(t, saNS, saName) {
			t.Fatalf("authenticated retry: annotations %v, claims %v, bound %v", res.ann, res.resp.Pending, e.bound(t, saNS, saName))
		}
	})

	t.Run("5xx: claimed", func(t *testing.T) {
		e := newSAEnv(t)
		e.arm.failNext(http.StatusServiceUnavailable)
		res := admit(t, e.plugin, review{name: saName, ann: full})
		if !claimed(res) || res.ann[annotations.AzureClientID] != "" {
			t.Fatalf("annotations %v, claims %v", res.ann, res.resp.Pending)
		}
		oneWarning(t, res, "503")
	})

	t.Run("slower than the admission budget: claimed", func(t *testing.T) {
		e := newSAEnv(t)
		e.arm.block = make(chan struct{})
		defer close(e.arm.block)
		res := admit(t, e.plugin, review{name: saName, ann: full, budget: 100 * time.Millisecond})
		if res.err != nil || !claimed(res) || res.ann[annotations.AzureClientID] != "" {
			t.Fatalf("err %v, annotations %v, claims %v", res.err, res.ann, res.resp.Pending)
		}
		oneWarning(t, res, "did not finish")
	})

	t.Run("identity does not exist: warning, no claim", func(t *testing.T) {
		e := newSAEnv(t)
		res := admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, "missing-mi"), authenticated: true})
		if res.resp.Patch.Len() != 0 || len(res.resp.Pending) != 0 {
			t.Fatalf("patch %+v, claims %v", res.resp.Patch.Ops(), res.resp.Pending)
		}
		oneWarning(t, res, "does not exist", "missing-mi")
		if e.binder.calls.Load() != 0 {
			t.Error("RBAC written for an identity that does not exist")
		}
	})

	// Over HTTPS through testenv/arm, with the SDK's own retries: sustained throttling outlasts
	// them, and the review still ends admitted with the claim.
	t.Run("sustained throttling over the wire", func(t *testing.T) {
		s := arm.Start(t)
		s.PutIdentity(arm.Identity{SubscriptionID: testSub, ResourceGroup: testRG, Name: testMI, ClientID: testClientID, TenantID: testTenant})
		s.FailAll(http.StatusTooManyRequests)
		s.SetRetryAfter(10 * time.Millisecond)
		opts := s.ClientOptions()
		opts.Retry = policy.RetryOptions{MaxRetries: 2}
		r, err := NewResolver(s.Credential(), opts, ResolverConfig{})
		if err != nil {
			t.Fatal(err)
		}
		e := newSAEnv(t)
		e.plugin.Resolver = r
		res := admit(t, e.plugin, review{name: saName, ann: full, authenticated: true})
		if !claimed(res) || e.binder.calls.Load() != 0 {
			t.Fatalf("claims %v, binder calls %d", res.resp.Pending, e.binder.calls.Load())
		}
		oneWarning(t, res, "429")
		if st, c := r.Stats(), s.Calls(); st.Throttled != 3 || c.Faults != 3 {
			t.Fatalf("resolver %+v, server %+v: want one try and two retries, all throttled", st, c)
		}
		s.FailAll(0)
		res = admit(t, e.plugin, review{name: saName, ann: full, authenticated: true})
		if res.ann[annotations.AzureClientID] != testClientID || !claimed(res) || !e.bound(t, saNS, saName) {
			t.Fatalf("after the throttling: %v, claims %v", res.ann, res.resp.Pending)
		}
	})
}

func TestServiceAccountPluginBinderFailure(t *testing.T) {
	e := newSAEnv(t)
	e.binder.err = apierrors.NewForbidden(schema.GroupResource{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"}, RBACNamePrefix+testClientID, errors.New("no RBAC"))

	// Not authenticated: the binder is not asked, so its failure cannot show.
	res := admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI)})
	if res.err != nil || len(res.resp.Warnings) != 0 || e.binder.calls.Load() != 0 || !claimed(res) {
		t.Fatalf("err %v, warnings %q, binder calls %d, claims %v", res.err, res.resp.Warnings, e.binder.calls.Load(), res.resp.Pending)
	}

	res = admit(t, e.plugin, review{name: saName, ann: azAnn(testSub, testRG, testMI), authenticated: true})
	if res.err != nil {
		t.Fatal(res.err)
	}
	if e.binder.calls.Load() != 1 {
		t.Fatalf("binder calls %d", e.binder.calls.Load())
	}
	// The IDs are known and set; the binding is the writer's to finish.
	if res.ann[annotations.AzureClientID] != testClientID || !claimed(res) {
		t.Fatalf("annotations %v, claims %v", res.ann, res.resp.Pending)
	}
	oneWarning(t, res, RBACNamePrefix+testClientID, "did not finish")
}

func TestServiceAccountPluginUpdate(t *testing.T) {
	const secondClient = "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"
	claim := ClaimOf(testIdentity)
	full := azAnn(testSub, testRG, testMI)
	// done: the writer finished the claim (the granted marker records it for this object).
	done := azAnn(testSub, testRG, testMI)
	done[annotations.AzureClientID], done[annotations.AzureTenantID] = testClientID, testTenant
	done[annotations.Granted] = markers.FormatGranted("uid-1", markers.Claims{claim})
	copyWith := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(out, kv[i])
			} else {
				out[kv[i]] = kv[i+1]
			}
		}
		return out
	}
	other := copyWith(done, annotations.AzureMIName, "second-mi")
	withLabel := copyWith(done, "team", "backup")
	// IDs present but never granted: a requester can write the client ID themselves.
	ungranted := copyWith(done, annotations.Granted, "")
	grantedOther := copyWith(done, annotations.Granted, markers.FormatGranted("uid-1", markers.Claims{ClaimOf(Identity{SubscriptionID: testSub, ResourceGroup: testRG, Name: "second-mi"})}))
	stillPending := copyWith(done, annotations.Pending, claim.String())

	tests := []struct {
		name       string
		cur, old   map[string]string
		wantARM    bool
		wantClient string
	}{
		{"unchanged", done, done, false, testClientID},
		{"unrelated annotation added", withLabel, done, false, testClientID},
		{"unchanged but never granted", ungranted, ungranted, true, testClientID},
		{"granted for another identity", grantedOther, grantedOther, true, testClientID},
		{"still pending", stillPending, stillPending, true, testClientID},
		{"identity changed", other, done, true, secondClient},
		{"client id removed by the user", full, done, true, testClientID},
		{"client id tampered with", copyWith(done, annotations.AzureClientID, "99999999-8888-4777-8666-555555555555"), done, true, testClientID},
		{"annotations added on update", full, nil, true, testClientID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newSAEnv(t)
			e.arm.set(testRG, "second-mi", secondClient)
			res := admit(t, e.plugin, review{op: admissionv1.Update, name: saName, ann: tc.cur, old: tc.old})
			if res.err != nil {
				t.Fatal(res.err)
			}
			if got := e.arm.gets.Load() > 0; got != tc.wantARM {
				t.Fatalf("ARM called = %v, want %v", got, tc.wantARM)
			}
			if !tc.wantARM && (res.resp.Patch.Len() != 0 || e.binder.calls.Load() != 0 || len(res.resp.Pending) != 0) {
				t.Fatalf("unchanged update patched %+v, bound (%d) or claimed %v", res.resp.Patch.Ops(), e.binder.calls.Load(), res.resp.Pending)
			}
			if tc.wantARM {
				want, _ := ClaimOfAnnotations(tc.cur)
				if len(res.resp.Pending) != 1 || !res.resp.Pending.Has(want) {
					t.Fatalf("claims %v, want %v", res.resp.Pending, want)
				}
				if e.binder.calls.Load() != 0 {
					t.Fatal("an unauthenticated update wrote RBAC")
				}
			}
			if res.ann[annotations.AzureClientID] != tc.wantClient {
				t.Fatalf("client id %q, want %q", res.ann[annotations.AzureClientID], tc.wantClient)
			}
		})
	}
}

// Input an attacker controls: the object's JSON and every annotation value.
func TestServiceAccountPluginHostileInput(t *testing.T) {
	e := newSAEnv(t)
	huge := strings.Repeat("a", 1<<20)
	for _, tc := range []struct {
		name string
		rv   review
		deny bool
		has  []string // the single warning contains these
		not  []string // ... and not these
	}{
		{name: "annotations not strings", rv: review{name: saName, rawObject: `{"metadata":{"name":"x","annotations":{"klusters.dev/azure-mi-name":1}}}`}, deny: true},
		{name: "object not JSON", rv: review{name: saName, rawObject: `{"metadata":`}, deny: true},
		{name: "annotations an array", rv: review{name: saName, rawObject: `{"metadata":{"annotations":["klusters.dev/azure-mi-name"]}}`}, deny: true},
		{name: "newline forging a second warning", rv: review{name: saName, ann: azAnn(testSub, testRG, "mi\nWarning: all clear")},
			has: []string{`"mi\nWarning: all clear"`}},
		{name: "look-alike Cyrillic a", rv: review{name: saName, ann: azAnn(testSub, testRG, "kubestаsh-selfhost")},
			has: []string{annotations.AzureMIName, "invalid"}},
		{name: "trailing space in subscription", rv: review{name: saName, ann: azAnn(testSub+" ", testRG, testMI)},
			has: []string{annotations.AzureSubscriptionID}},
		{name: "path traversal in resource group", rv: review{name: saName, ann: azAnn(testSub, "../../providers", testMI)},
			has: []string{annotations.AzureRGName}},
		{name: "megabyte value is cut short", rv: review{name: saName, ann: azAnn(testSub, testRG, huge)},
			has: []string{"bytes)"}, not: []string{strings.Repeat("a", 100)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := admit(t, e.plugin, tc.rv)
			if tc.deny {
				if d, ok := admission.IsDenied(res.err); !ok || d.Code != http.StatusBadRequest {
					t.Fatalf("err %v, want a 400 denial", res.err)
				}
				return
			}
			if res.err != nil || res.resp.Patch.Len() != 0 {
				t.Fatalf("err %v, patch %+v", res.err, res.resp.Patch.Ops())
			}
			oneWarning(t, res, tc.has...)
			for _, s := range tc.not {
				if strings.Contains(res.resp.Warnings[0], s) {
					t.Errorf("warning contains %.20q...", s)
				}
			}
			if strings.Contains(res.resp.Warnings[0], "\n") {
				t.Errorf("raw newline in warning %q", res.resp.Warnings[0])
			}
		})
	}
	if e.arm.gets.Load() != 0 || e.binder.calls.Load() != 0 {
		t.Fatalf("hostile input reached ARM (%d) or RBAC (%d)", e.arm.gets.Load(), e.binder.calls.Load())
	}
}

// ---------------------------------------------------------------------------------------------
// Jobs.

// saGetter reads ServiceAccounts from client-go's fake clientset (NotFound as the apiserver says
// it), optionally failing.
type saGetter struct {
	cs  *k8sfake.Clientset
	err error
}

func (g saGetter) Get(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	if g.err != nil {
		return nil, g.err
	}
	return g.cs.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
}

func jobObject(jobAnn map[string]string, template map[string]any, sa string) string {
	spec := map[string]any{"containers": []any{map[string]any{"name": "backup", "image": "ghcr.io/kubestash/restic:0.14"}}, "restartPolicy": "Never"}
	if sa != "" {
		spec["serviceAccountName"] = sa
	}
	tmpl := map[string]any{"spec": spec}
	if template != nil {
		tmpl["metadata"] = template
	}
	meta := map[string]any{"name": "sample-backup-1778072138", "namespace": saNS,
		"labels": map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue, "app.kubernetes.io/component": "kubestash-backup"}}
	if jobAnn != nil {
		meta["annotations"] = jobAnn
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": map[string]any{"template": tmpl}})
	return string(b)
}

func TestJobPlugin(t *testing.T) {
	cs := k8sfake.NewClientset(
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: saName, Annotations: azAnn(testSub, testRG, testMI)}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: "default", Annotations: map[string]string{annotations.AzureMIName: testMI}}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: "plain"}},
	)
	withSA := &JobPlugin{ServiceAccounts: saGetter{cs: cs}}
	const (
		use  = annotations.AzureUseLabel
		bind = annotations.AzureUseIdentityBinding
	)
	kubestash := map[string]any{"labels": map[string]string{"app.kubernetes.io/component": "kubestash-backup"}}
	tests := []struct {
		name       string
		plugin     *JobPlugin
		op         admissionv1.Operation
		obj        string
		wantLabels map[string]string // template labels after the patch (nil: no patch expected)
		wantAnn    map[string]string
		warn       string
	}{
		{name: "own annotations", plugin: &JobPlugin{}, obj: jobObject(azAnn(testSub, testRG, testMI), kubestash, "plain"),
			wantLabels: map[string]string{"app.kubernetes.io/component": "kubestash-backup", use: "true"}, wantAnn: map[string]string{bind: "true"}},
		{name: "through the ServiceAccount", plugin: withSA, obj: jobObject(nil, kubestash, saName),
			wantLabels: map[string]string{"app.kubernetes.io/component": "kubestash-backup", use: "true"}, wantAnn: map[string]string{bind: "true"}},
		{name: "default ServiceAccount", plugin: withSA, obj: jobObject(nil, kubestash, ""),
			wantLabels: map[string]string{"app.kubernetes.io/component": "kubestash-backup", use: "true"}, wantAnn: map[string]string{bind: "true"}},
		{name: "no template metadata", plugin: &JobPlugin{}, obj: jobObject(azAnn(testSub, testRG, testMI), nil, ""),
			wantLabels: map[string]string{use: "true"}, wantAnn: map[string]string{bind: "true"}},
		{name: "already there", plugin: &JobPlugin{}, obj: jobObject(azAnn(testSub, testRG, testMI),
			map[string]any{"labels": map[string]string{use: "true"}, "annotations": map[string]string{bind: "true"}}, "")},
		{name: "opted out: kept, warned", plugin: &JobPlugin{}, obj: jobObject(azAnn(testSub, testRG, testMI),
			map[string]any{"labels": map[string]string{use: "false"}, "annotations": map[string]string{"x": "y"}}, ""),
			wantLabels: map[string]string{use: "false"}, wantAnn: map[string]string{"x": "y", bind: "true"}, warn: "kept as set"},
		{name: "ServiceAccount without identity", plugin: withSA, obj: jobObject(nil, kubestash, "plain")},
		{name: "ServiceAccount missing", plugin: withSA, obj: jobObject(nil, kubestash, "nope")},
		{name: "no getter, no own annotations", plugin: &JobPlugin{}, obj: jobObject(nil, kubestash, saName)},
		{name: "getter fails", plugin: &JobPlugin{ServiceAccounts: saGetter{err: errors.New("apiserver down")}}, obj: jobObject(nil, kubestash, saName)},
		{name: "update is not ours", plugin: &JobPlugin{}, op: admissionv1.Update, obj: jobObject(azAnn(testSub, testRG, testMI), kubestash, "")},
		{name: "hostile template label value", plugin: &JobPlugin{}, obj: jobObject(azAnn(testSub, testRG, testMI),
			map[string]any{"labels": map[string]string{use: "1\nWarning: fine"}}, ""),
			wantLabels: map[string]string{use: "1\nWarning: fine"}, wantAnn: map[string]string{bind: "true"}, warn: `"1\nWarning: fine"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			op := tc.op
			if op == "" {
				op = admissionv1.Create
			}
			req := &admission.Request{Operation: op, Namespace: saNS, Name: "sample-backup-1778072138", Object: []byte(tc.obj), Log: slog.New(slog.DiscardHandler)}
			resp := &admission.Response{Patch: patches.NewBuilder()}
			if err := tc.plugin.Admit(context.Background(), req, resp); err != nil {
				t.Fatal(err)
			}
			out := applyOps(t, []byte(tc.obj), resp.Patch)
			if tc.wantLabels == nil {
				if resp.Patch.Len() != 0 {
					t.Fatalf("patch %+v, want none", resp.Patch.Ops())
				}
			} else {
				if got := metaMap(t, out, "spec", "template", "metadata", "labels"); !equalMaps(got, tc.wantLabels) {
					t.Errorf("template labels %v, want %v", got, tc.wantLabels)
				}
				if got := metaMap(t, out, "spec", "template", "metadata", "annotations"); !equalMaps(got, tc.wantAnn) {
					t.Errorf("template annotations %v, want %v", got, tc.wantAnn)
				}
			}
			if tc.warn == "" && len(resp.Warnings) != 0 || tc.warn != "" && (len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tc.warn)) {
				t.Errorf("warnings %q, want %q", resp.Warnings, tc.warn)
			}
			// The Job's own metadata is never touched.
			if got, want := metaMap(t, out, "metadata", "labels"), metaMap(t, []byte(tc.obj), "metadata", "labels"); !equalMaps(got, want) {
				t.Errorf("Job labels changed: %v", got)
			}
		})
	}
}

func TestJobPluginHostileInput(t *testing.T) {
	for _, obj := range []string{`{"spec":`, `{"spec":{"template":{"metadata":{"labels":{"azure.workload.identity/use":1}}}}}`, `[]`} {
		req := &admission.Request{Operation: admissionv1.Create, Namespace: saNS, Object: []byte(obj), Log: slog.New(slog.DiscardHandler)}
		resp := &admission.Response{Patch: patches.NewBuilder()}
		err := (&JobPlugin{}).Admit(context.Background(), req, resp)
		if d, ok := admission.IsDenied(err); !ok || d.Code != http.StatusBadRequest {
			t.Errorf("%s: err %v, want a 400 denial", obj, err)
		}
	}
	// A null template metadata is like an absent one.
	obj := `{"metadata":{"annotations":{"klusters.dev/azure-mi-name":"mi"}},"spec":{"template":{"metadata":null,"spec":{}}}}`
	req := &admission.Request{Operation: admissionv1.Create, Namespace: saNS, Object: []byte(obj), Log: slog.New(slog.DiscardHandler)}
	resp := &admission.Response{Patch: patches.NewBuilder()}
	if err := (&JobPlugin{}).Admit(context.Background(), req, resp); err != nil {
		t.Fatal(err)
	}
	out := applyOps(t, []byte(obj), resp.Patch)
	if got := metaMap(t, out, "spec", "template", "metadata", "labels"); got[annotations.AzureUseLabel] != "true" {
		t.Fatalf("null metadata: %s", out)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
