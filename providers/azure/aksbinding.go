package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/containerservice/armcontainerservice/v8"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
)

// The AKS identity binding in ARM. Besides the use-mi-<clientID> RBAC objects in the cluster
// (rbac.go), AKS identity binding needs one ARM resource per managed identity and cluster,
// Microsoft.ContainerService/managedClusters/<cluster>/identityBindings/<name>, which the
// operator creates (az aks identity-binding create); AKS then puts the one federated credential
// it needs (aks-identity-binding) on the identity. This server never creates it (that would need
// write access to the cluster and the identity); the sweeper only reads it, to prove it exists
// before a held Job is released. The API is a preview one (armcontainerservice/v8 beta, api-version
// 2025-10-02-preview): should Azure retire that version, the reads fail, the check reports an
// error and held Jobs wait until max hold; unset --azure-aks-cluster to skip the check.

// ClusterID names the AKS managed cluster this server runs in (--azure-aks-cluster).
type ClusterID struct {
	SubscriptionID, ResourceGroup, Name string
}

// String is the cluster's ARM resource ID.
func (c ClusterID) String() string {
	return "/subscriptions/" + c.SubscriptionID + "/resourceGroups/" + c.ResourceGroup +
		"/providers/Microsoft.ContainerService/managedClusters/" + c.Name
}

// ParseClusterID reads an AKS cluster's ARM resource ID,
// /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ContainerService/managedClusters/<name>.
func ParseClusterID(s string) (ClusterID, error) {
	rid, err := arm.ParseResourceID(s)
	if err != nil {
		return ClusterID{}, fmt.Errorf("%s is not an ARM resource ID: %w", quote(s), err)
	}
	if !strings.EqualFold(rid.ResourceType.String(), "Microsoft.ContainerService/managedClusters") {
		return ClusterID{}, fmt.Errorf("%s is a %s, not a Microsoft.ContainerService/managedClusters", quote(s), rid.ResourceType)
	}
	c := ClusterID{SubscriptionID: rid.SubscriptionID, ResourceGroup: rid.ResourceGroupName, Name: rid.Name}
	if !IsGUID(c.SubscriptionID) || c.ResourceGroup == "" || c.Name == "" {
		return ClusterID{}, fmt.Errorf("%s: want /subscriptions/<GUID>/resourceGroups/<rg>/providers/Microsoft.ContainerService/managedClusters/<name>", quote(s))
	}
	return c, nil
}

// AKSBinding is one identity binding of the cluster as ARM lists it.
type AKSBinding struct {
	Name string
	// IdentityResourceID and ClientID name the managed identity it maps to the cluster.
	IdentityResourceID, ClientID string
	// ProvisioningState is ARM's (Succeeded once AKS has set it up).
	ProvisioningState string
}

// AKSBindingLister lists the identity bindings of the cluster: the ARM read, behind which the
// SDK client sits in production (ARMIdentityBindings).
type AKSBindingLister interface {
	ListIdentityBindings(ctx context.Context) ([]AKSBinding, error)
}

// ARMIdentityBindings lists a cluster's identity bindings with the SDK's IdentityBindingsClient.
type ARMIdentityBindings struct {
	cluster ClusterID
	client  *armcontainerservice.IdentityBindingsClient
}

// NewARMIdentityBindings builds the lister; opts carries the ARM endpoint (ClientOptions) and, in
// tests, the SDK's fake transport. It does no I/O.
func NewARMIdentityBindings(cluster ClusterID, cred azcore.TokenCredential, opts arm.ClientOptions) (*ARMIdentityBindings, error) {
	c, err := armcontainerservice.NewIdentityBindingsClient(cluster.SubscriptionID, cred, &opts)
	if err != nil {
		return nil, fmt.Errorf("creating the identity bindings client for %s: %w", cluster, err)
	}
	return &ARMIdentityBindings{cluster: cluster, client: c}, nil
}

// maxBindingPages bounds one listing: ARM pages hold many bindings, and a cluster has one per
// identity, so this is far beyond any real cluster; it only stops a misbehaving endpoint.
const maxBindingPages = 50

// ListIdentityBindings implements AKSBindingLister: one ARM request per page.
func (l *ARMIdentityBindings) ListIdentityBindings(ctx context.Context) ([]AKSBinding, error) {
	pager := l.client.NewListByManagedClusterPager(l.cluster.ResourceGroup, l.cluster.Name, nil)
	var out []AKSBinding
	for pages := 0; pager.More(); pages++ {
		if pages == maxBindingPages {
			return nil, fmt.Errorf("listing the identity bindings of %s: more than %d pages", l.cluster, maxBindingPages)
		}
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the identity bindings of %s: %w", l.cluster, err)
		}
		for _, b := range page.Value {
			out = append(out, bindingOf(b))
		}
	}
	return out, nil
}

func bindingOf(b *armcontainerservice.IdentityBinding) AKSBinding {
	var out AKSBinding
	if b == nil {
		return out
	}
	out.Name = deref(b.Name)
	if p := b.Properties; p != nil {
		if p.ProvisioningState != nil {
			out.ProvisioningState = string(*p.ProvisioningState)
		}
		if mi := p.ManagedIdentity; mi != nil {
			out.IdentityResourceID, out.ClientID = deref(mi.ResourceID), deref(mi.ClientID)
		}
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// MatchBinding finds, among the cluster's bindings, the one for managed identity id whose client
// ID is clientID: the binding names the identity by resource ID (ARM compares those without
// case), and when ARM reports the binding's client ID too it must be clientID (a binding made for
// an identity since deleted and re-created under the same name maps another client). ok is true
// only for a binding ARM reports Succeeded; why says what is missing otherwise.
func MatchBinding(bindings []AKSBinding, id Identity, clientID string, cluster ClusterID) (b AKSBinding, ok bool, why string) {
	var found []AKSBinding
	for _, b := range bindings {
		if strings.EqualFold(b.IdentityResourceID, id.ResourceID()) {
			found = append(found, b)
		}
	}
	if len(found) == 0 {
		return AKSBinding{}, false, fmt.Sprintf("no AKS identity binding of cluster %s maps managed identity %s (az aks identity-binding create)", cluster.Name, id)
	}
	var reasons []string
	for _, b := range found {
		switch {
		case b.ClientID != "" && !strings.EqualFold(b.ClientID, clientID):
			reasons = append(reasons, fmt.Sprintf("AKS identity binding %s maps client %s, not %s", quote(b.Name), quote(b.ClientID), clientID))
		case b.ProvisioningState != string(armcontainerservice.IdentityBindingProvisioningStateSucceeded):
			reasons = append(reasons, fmt.Sprintf("AKS identity binding %s is %s, not Succeeded", quote(b.Name), quote(b.ProvisioningState)))
		default:
			return b, true, fmt.Sprintf("AKS identity binding %s maps managed identity %s to cluster %s", quote(b.Name), id.Name, cluster.Name)
		}
	}
	return AKSBinding{}, false, strings.Join(reasons, "; ")
}

// DefaultBindingListTTL is how long IdentityBindingProver reuses one listing of the cluster's
// bindings. A cluster has one binding per identity, so one listing answers every held Job: with
// hundreds of Jobs checked every few seconds, ARM sees one list request per TTL, and a binding
// the operator creates is noticed within it.
const DefaultBindingListTTL = 30 * time.Second

// bindingListTimeout bounds one listing, the SDK's retries included.
const bindingListTimeout = 30 * time.Second

// IdentityBindingProver proves, from ARM, what AKS identity binding needs outside the cluster:
// the managed identity a ServiceAccount names exists with the client ID on the ServiceAccount
// (Identities, the Resolver's cached armmsi read), and the cluster has a Succeeded identity
// binding for it (Bindings). It implements sweeper.IdentityBindingProver.
//
// What it cannot prove: that Entra ID will issue a token (neither the AKS token proxy nor Entra
// ID is called: the server holds no token of the ServiceAccount that the proxy would exchange),
// that the workload-identity webhook in the cluster injects the proxy variables into the Job's
// Pods, that AKS's federated credential aks-identity-binding is still on the identity, and that
// the identity has Azure role assignments on the backup storage.
type IdentityBindingProver struct {
	Cluster    ClusterID
	Identities Looker
	Bindings   AKSBindingLister
	// TTL of a listing (default DefaultBindingListTTL); Now the clock (default time.Now).
	TTL time.Duration
	Now func() time.Time
	// Log receives one debug line per listing (nil: none).
	Log *slog.Logger

	flights singleflight.Group
	mu      sync.Mutex
	list    []AKSBinding
	listAt  time.Time
	listed  bool
}

// IdentityBound implements sweeper.IdentityBindingProver for sa, whose client-id annotation is
// clientID. A ServiceAccount that names no valid identity, an identity ARM does not know or one
// with another client ID, and a missing or unfinished binding are answers (false with a reason);
// failures to read ARM are errors.
func (p *IdentityBindingProver) IdentityBound(ctx context.Context, sa *corev1.ServiceAccount, clientID string) (bool, string, error) {
	id, ok, err := ParseIdentity(sa.Annotations)
	switch {
	case !ok:
		return false, "the ServiceAccount names no managed identity", nil
	case err != nil:
		return false, err.Error(), nil
	}
	r, err := p.Identities.Lookup(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, fmt.Sprintf("managed identity %s does not exist in ARM", id), nil
	}
	if err != nil {
		return false, "", err
	}
	if !strings.EqualFold(r.ClientID, clientID) {
		return false, fmt.Sprintf("the ServiceAccount's client ID %s is not that of managed identity %s (%s)", clientID, id, r.ClientID), nil
	}
	bindings, err := p.listing(ctx)
	if err != nil {
		return false, "", err
	}
	_, ok, why := MatchBinding(bindings, id, clientID, p.Cluster)
	return ok, why, nil
}

// listing returns the cluster's bindings, listing them at most once per TTL; concurrent callers
// share one ARM call. Failures are not kept: the next check lists again.
func (p *IdentityBindingProver) listing(ctx context.Context) ([]AKSBinding, error) {
	now := p.now()
	ttl := p.TTL
	if ttl <= 0 {
		ttl = DefaultBindingListTTL
	}
	p.mu.Lock()
	if p.listed && now.Sub(p.listAt) < ttl && !now.Before(p.listAt) {
		l := p.list
		p.mu.Unlock()
		return l, nil
	}
	p.mu.Unlock()
	ch := p.flights.DoChan("list", func() (any, error) {
		// Detached from this caller (others may be waiting on the same call), bounded on its own.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bindingListTimeout)
		defer cancel()
		l, err := p.Bindings.ListIdentityBindings(cctx)
		if p.Log != nil {
			p.Log.Debug("ARM list identity bindings", "cluster", p.Cluster.String(), "bindings", len(l), "err", err)
		}
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.list, p.listAt, p.listed = l, p.now(), true
		p.mu.Unlock()
		return l, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]AKSBinding), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("listing the identity bindings of %s: %w", p.Cluster, context.Cause(ctx))
	}
}

func (p *IdentityBindingProver) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}
