package azure

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v8"
	aksfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v8/fake"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/sweeper"
)

const (
	testClusterSub = "0d6f3a1b-2c4e-4f5a-9b8c-7d6e5f4a3b2c"
	testClusterRG  = "aks-rg"
	testCluster    = "prod-aks"
)

var testClusterID = ClusterID{SubscriptionID: testClusterSub, ResourceGroup: testClusterRG, Name: testCluster}

func TestParseClusterID(t *testing.T) {
	good := "/subscriptions/" + testClusterSub + "/resourceGroups/" + testClusterRG + "/providers/Microsoft.ContainerService/managedClusters/" + testCluster
	for _, tc := range []struct {
		in   string
		want ClusterID
		err  string
	}{
		{good, testClusterID, ""},
		{strings.ToLower(good), ClusterID{SubscriptionID: testClusterSub, ResourceGroup: strings.ToLower(testClusterRG), Name: testCluster}, ""},
		{good + "/agentPools/np1", ClusterID{}, "not a Microsoft.ContainerService/managedClusters"},
		{"/subscriptions/" + testClusterSub + "/resourceGroups/" + testClusterRG, ClusterID{}, "not a Microsoft.ContainerService/managedClusters"},
		{"/subscriptions/" + testSub + "/resourceGroups/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi", ClusterID{}, "not a Microsoft.ContainerService/managedClusters"},
		{"/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c", ClusterID{}, "<GUID>"},
		{"prod-aks", ClusterID{}, "not an ARM resource ID"},
	} {
		got, err := ParseClusterID(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("ParseClusterID(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseClusterID(%q) error %v, want one containing %q", tc.in, err, tc.err)
		}
	}
	if got := testClusterID.String(); got != good {
		t.Errorf("String = %s", got)
	}
}

func TestMatchBinding(t *testing.T) {
	rid := testIdentity.ResourceID()
	ok := AKSBinding{Name: "mi-ib", IdentityResourceID: strings.ToUpper(rid), ClientID: strings.ToUpper(testClientID), ProvisioningState: "Succeeded"}
	other := AKSBinding{Name: "other-ib", IdentityResourceID: "/subscriptions/" + testSub + "/resourceGroups/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/other", ClientID: testClientID, ProvisioningState: "Succeeded"}
	creating := ok
	creating.ProvisioningState = "Creating"
	stale := ok
	stale.ClientID = "11111111-2222-4333-8444-555555555555"
	noClient := ok
	noClient.ClientID = ""
	for _, tc := range []struct {
		name     string
		bindings []AKSBinding
		ok       bool
		why      string
	}{
		{"none", nil, false, "no AKS identity binding of cluster prod-aks maps managed identity " + rid},
		{"only another identity's", []AKSBinding{other}, false, "no AKS identity binding"},
		{"found, case folded", []AKSBinding{other, ok}, true, `AKS identity binding "mi-ib" maps managed identity ` + testMI + " to cluster prod-aks"},
		{"ARM reports no client ID", []AKSBinding{noClient}, true, `"mi-ib"`},
		{"still creating", []AKSBinding{creating}, false, `"mi-ib" is "Creating", not Succeeded`},
		{"made for a re-created identity", []AKSBinding{stale}, false, "maps client"},
		{"a stale one and a good one", []AKSBinding{stale, ok}, true, "maps managed identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, got, why := MatchBinding(tc.bindings, testIdentity, testClientID, testClusterID)
			if got != tc.ok || !strings.Contains(why, tc.why) {
				t.Errorf("MatchBinding = %v, %q; want %v, %q", got, why, tc.ok, tc.why)
			}
		})
	}
}

// fakeAKS is the SDK's own armcontainerservice fake server for the identity bindings of one
// cluster, each listing answered with the bindings set now, behind faults: a thin transport
// that answers queued requests with an error status before the fake sees them (the fake's pager
// cannot: after an error page it answers the next listing "fake paged response is empty").
type fakeAKS struct {
	mu       sync.Mutex
	bindings []*armcontainerservice.IdentityBinding
	statuses []int    // answered, front to back, before the fake is asked
	lists    int      // listings the fake served
	clusters []string // "rg/name" of every listing
	fake     *aksfake.IdentityBindingsServerTransport
}

func newFakeAKS() *fakeAKS {
	f := &fakeAKS{}
	f.fake = aksfake.NewIdentityBindingsServerTransport(f.server())
	return f
}

// Do implements policy.Transporter: a queued status, else the SDK's fake.
func (f *fakeAKS) Do(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	status := 0
	if len(f.statuses) > 0 {
		status, f.statuses = f.statuses[0], f.statuses[1:]
	}
	f.mu.Unlock()
	if status != 0 {
		body := fmt.Sprintf(`{"error":{"code":%q,"message":"injected"}}`, http.StatusText(status))
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Request: req,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body))}, nil
	}
	return f.fake.Do(req)
}

func (f *fakeAKS) server() *aksfake.IdentityBindingsServer {
	return &aksfake.IdentityBindingsServer{
		NewListByManagedClusterPager: func(rg, cluster string, _ *armcontainerservice.IdentityBindingsClientListByManagedClusterOptions) (resp azfake.PagerResponder[armcontainerservice.IdentityBindingsClientListByManagedClusterResponse]) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.lists++
			f.clusters = append(f.clusters, rg+"/"+cluster)
			// Two pages, so paging is exercised.
			half := len(f.bindings) / 2
			resp.AddPage(http.StatusOK, armcontainerservice.IdentityBindingsClientListByManagedClusterResponse{
				IdentityBindingListResult: armcontainerservice.IdentityBindingListResult{Value: f.bindings[:half]}}, nil)
			resp.AddPage(http.StatusOK, armcontainerservice.IdentityBindingsClientListByManagedClusterResponse{
				IdentityBindingListResult: armcontainerservice.IdentityBindingListResult{Value: f.bindings[half:]}}, nil)
			return
		},
	}
}

func (f *fakeAKS) set(bs ...*armcontainerservice.IdentityBinding) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bindings = bs
}

func (f *fakeAKS) fail(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses = append(f.statuses, statuses...)
}

func (f *fakeAKS) listCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

func armBinding(name, identityID, clientID string, state armcontainerservice.IdentityBindingProvisioningState) *armcontainerservice.IdentityBinding {
	return &armcontainerservice.IdentityBinding{
		Name: to.Ptr(name),
		ID:   to.Ptr(testClusterID.String() + "/identityBindings/" + name),
		Properties: &armcontainerservice.IdentityBindingProperties{
			ManagedIdentity:   &armcontainerservice.IdentityBindingManagedIdentityProfile{ResourceID: to.Ptr(identityID), ClientID: to.Ptr(clientID), TenantID: to.Ptr(testTenant)},
			ProvisioningState: to.Ptr(state),
		},
	}
}

// azureEnv is the Azure readiness check as the sweeper runs it: the RBAC binding in a (fake)
// cluster and ARM through the SDK's own fakes (armmsi for the identity, armcontainerservice for
// the cluster's identity bindings).
type azureEnv struct {
	checker sweeper.AzureChecker
	msi     *fakeARM
	aks     *fakeAKS
	kube    *fakeCluster
	clock   *testClock
}

func newAzureEnv(t *testing.T) *azureEnv {
	t.Helper()
	e := &azureEnv{msi: newFakeARM(), aks: newFakeAKS(), kube: newFakeCluster()}
	var r *Resolver
	r, e.clock = newTestResolver(t, e.msi, ResolverConfig{})
	lister, err := NewARMIdentityBindings(testClusterID, &azfake.TokenCredential{}, arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: e.aks,
		Retry:     policy.RetryOptions{MaxRetries: 1, RetryDelay: time.Millisecond, MaxRetryDelay: time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e.checker = sweeper.AzureChecker{
		Bindings: BindingLister{CS: e.kube},
		ARM:      &IdentityBindingProver{Cluster: testClusterID, Identities: r, Bindings: lister, Now: e.clock.Now},
	}
	return e
}

// sa is a ServiceAccount the server finished: it names the identity and carries its IDs.
func (e *azureEnv) sa(t *testing.T, name string) *corev1.ServiceAccount {
	t.Helper()
	ann := withAnn(azAnn(testSub, testRG, testMI), annotations.AzureClientID, testClientID, annotations.AzureTenantID, testTenant)
	if err := EnsureBinding(context.Background(), e.kube, testClientID, "demo", name); err != nil {
		t.Fatal(err)
	}
	return persisted("demo", name, types.UID("uid-"+name), ann)
}

func TestAzureCheckerProvesTheAKSIdentityBinding(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, e *azureEnv, sa *corev1.ServiceAccount) (bool, string, error) {
		t.Helper()
		return e.checker.Check(ctx, sa)
	}

	t.Run("binding present: ready, and the reason says what is not proven", func(t *testing.T) {
		e := newAzureEnv(t)
		e.aks.set(armBinding("other-ib", "/subscriptions/"+testSub+"/resourceGroups/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/other", "11111111-2222-4333-8444-555555555555", "Succeeded"),
			armBinding(testMI+"-ib", testIdentity.ResourceID(), testClientID, "Succeeded"))
		ready, why, err := check(t, e, e.sa(t, "app-backup"))
		if err != nil || !ready {
			t.Fatalf("Check = %v, %q, %v; want ready", ready, why, err)
		}
		for _, want := range []string{"use-mi-" + testClientID + " lists the ServiceAccount", `AKS identity binding "` + testMI + `-ib" maps managed identity`, "not proven: a token from Entra ID"} {
			if !strings.Contains(why, want) {
				t.Errorf("reason %q lacks %q", why, want)
			}
		}
		e.aks.mu.Lock()
		clusters := e.aks.clusters
		e.aks.mu.Unlock()
		if len(clusters) != 1 || clusters[0] != testClusterRG+"/"+testCluster {
			t.Errorf("listings %v, want one of %s/%s", clusters, testClusterRG, testCluster)
		}
	})

	t.Run("binding absent: not ready with a reason, no error", func(t *testing.T) {
		e := newAzureEnv(t)
		e.aks.set(armBinding("other-ib", "/subscriptions/"+testSub+"/resourceGroups/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/other", "11111111-2222-4333-8444-555555555555", "Succeeded"))
		ready, why, err := check(t, e, e.sa(t, "app-backup"))
		if err != nil || ready || !strings.Contains(why, "no AKS identity binding of cluster "+testCluster+" maps managed identity "+testIdentity.ResourceID()) {
			t.Fatalf("Check = %v, %q, %v; want not ready naming the missing binding", ready, why, err)
		}
	})

	t.Run("binding still provisioning: not ready", func(t *testing.T) {
		e := newAzureEnv(t)
		e.aks.set(armBinding(testMI+"-ib", testIdentity.ResourceID(), testClientID, "Creating"))
		ready, why, err := check(t, e, e.sa(t, "app-backup"))
		if err != nil || ready || !strings.Contains(why, "not Succeeded") {
			t.Fatalf("Check = %v, %q, %v", ready, why, err)
		}
	})

	t.Run("ARM outage: an error of the check, not cached", func(t *testing.T) {
		e := newAzureEnv(t)
		e.aks.set(armBinding(testMI+"-ib", testIdentity.ResourceID(), testClientID, "Succeeded"))
		e.aks.fail(http.StatusServiceUnavailable, http.StatusServiceUnavailable) // the call and its one retry
		sa := e.sa(t, "app-backup")
		ready, why, err := check(t, e, sa)
		if err == nil || ready || !strings.Contains(err.Error(), "reading the AKS identity binding") || !strings.Contains(err.Error(), "503") {
			t.Fatalf("Check = %v, %q, %v; want an error with ARM's status", ready, why, err)
		}
		if ready, why, err := check(t, e, sa); err != nil || !ready {
			t.Fatalf("after the outage Check = %v, %q, %v; want ready (a failure is not kept)", ready, why, err)
		}
	})

	t.Run("identity gone from ARM: not ready, bindings not listed", func(t *testing.T) {
		e := newAzureEnv(t)
		e.msi.mu.Lock()
		delete(e.msi.clientIDs, strings.ToLower(testRG+"/"+testMI))
		e.msi.mu.Unlock()
		ready, why, err := check(t, e, e.sa(t, "app-backup"))
		if err != nil || ready || !strings.Contains(why, "does not exist in ARM") {
			t.Fatalf("Check = %v, %q, %v", ready, why, err)
		}
		if n := e.aks.listCount(); n != 0 {
			t.Errorf("%d listings for an identity that does not exist", n)
		}
	})

	t.Run("client ID on the ServiceAccount is not the identity's", func(t *testing.T) {
		e := newAzureEnv(t)
		e.aks.set(armBinding(testMI+"-ib", testIdentity.ResourceID(), testClientID, "Succeeded"))
		e.msi.set(testRG, testMI, "99999999-8888-4777-8666-555555555555") // re-created identity
		ready, why, err := check(t, e, e.sa(t, "app-backup"))
		if err != nil || ready || !strings.Contains(why, "is not that of managed identity") {
			t.Fatalf("Check = %v, %q, %v", ready, why, err)
		}
	})

	t.Run("one listing per TTL for every ServiceAccount; a new binding is seen after it", func(t *testing.T) {
		e := newAzureEnv(t)
		a, b := e.sa(t, "app-a"), e.sa(t, "app-b")
		for _, sa := range []*corev1.ServiceAccount{a, b, a} {
			if ready, _, err := check(t, e, sa); err != nil || ready {
				t.Fatalf("before the binding: %v, %v", ready, err)
			}
		}
		if n := e.aks.listCount(); n != 1 {
			t.Fatalf("%d listings within the TTL, want 1", n)
		}
		e.aks.set(armBinding(testMI+"-ib", testIdentity.ResourceID(), testClientID, "Succeeded"))
		if ready, _, _ := check(t, e, b); ready {
			t.Fatal("ready within the TTL of a listing without the binding")
		}
		e.clock.Advance(DefaultBindingListTTL)
		if ready, why, err := check(t, e, b); err != nil || !ready {
			t.Fatalf("after the TTL: %v, %q, %v", ready, why, err)
		}
		if n := e.aks.listCount(); n != 2 {
			t.Errorf("%d listings, want 2", n)
		}
	})
}
