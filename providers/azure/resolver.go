package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"golang.org/x/sync/singleflight"
)

// ErrNotFound is wrapped by Lookup errors when ARM says the identity (or its resource group or
// subscription) does not exist. Only these answers are cached negatively.
var ErrNotFound = errors.New("managed identity not found")

// Resolved is what ARM says about an identity.
type Resolved struct {
	ResourceID  string // as ARM returned it (canonical casing)
	ClientID    string
	TenantID    string
	PrincipalID string
}

// ResolverConfig tunes the cache. Zero values take the defaults shown.
type ResolverConfig struct {
	// PositiveTTL keeps a found identity (default 1h). An identity's client ID changes only
	// when it is deleted and re-created under the same name; Forget handles that case early.
	PositiveTTL time.Duration
	// NegativeTTL keeps a NotFound answer (default 30s): long enough to absorb a burst of
	// ServiceAccounts naming a missing identity, short enough that creating it is noticed soon.
	NegativeTTL time.Duration
	// CallTimeout bounds one ARM lookup including the SDK's retries (default 30s). It is
	// independent of the callers' deadlines: see Lookup.
	CallTimeout time.Duration
	// MaxEntries bounds the cache (default 10000). Entries are few in practice (one per
	// identity), but a hostile requester inside an allowed scope can name many missing ones.
	MaxEntries int
	// Now is the clock (default time.Now); tests move it instead of sleeping.
	Now func() time.Time
	// Log receives one debug line per ARM call (default slog.Default()).
	Log *slog.Logger
}

// Stats are the Resolver's counters, cumulative since construction.
type Stats struct {
	Lookups      int64 // Lookup calls
	Hits         int64 // answered from a positive cache entry
	NegativeHits int64 // answered from a NotFound cache entry
	ARMCalls     int64 // UserAssignedIdentitiesClient.Get operations issued (after de-duplication)
	ARMRequests  int64 // HTTP requests sent to ARM, SDK retries included
	Throttled    int64 // HTTP 429 responses received
}

// Resolver looks managed identities up in ARM, caching by resource ID. It is safe for concurrent
// use.
type Resolver struct {
	cred    azcore.TokenCredential
	opts    arm.ClientOptions
	cfg     ResolverConfig
	flights singleflight.Group

	clientsMu sync.Mutex
	clients   map[string]*armmsi.UserAssignedIdentitiesClient // by lower-case subscription ID

	cacheMu sync.Mutex
	cache   map[string]cacheEntry // by Identity.key()

	lookups, hits, negHits, armCalls, armRequests, throttled atomic.Int64
}

type cacheEntry struct {
	val     Resolved
	err     error // non-nil: a cached NotFound
	expires time.Time
}

// NewResolver builds a Resolver. cred is typically from NewCredential; opts carries the ARM
// endpoint (ClientOptions) and, in tests, the armmsi/fake transport. A policy counting HTTP
// requests is added to opts; the caller's options are otherwise used as given (including the
// SDK's default retries, which honour ARM's Retry-After).
func NewResolver(cred azcore.TokenCredential, opts arm.ClientOptions, cfg ResolverConfig) (*Resolver, error) {
	if cred == nil {
		return nil, errors.New("azure resolver: nil credential")
	}
	if cfg.PositiveTTL <= 0 {
		cfg.PositiveTTL = time.Hour
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 10000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Resolver{
		cred:    cred,
		cfg:     cfg,
		clients: map[string]*armmsi.UserAssignedIdentitiesClient{},
		cache:   map[string]cacheEntry{},
	}
	// Copy the slice so appending never writes into the caller's backing array.
	opts.PerRetryPolicies = append(append([]policy.Policy(nil), opts.PerRetryPolicies...), countingPolicy{r})
	r.opts = opts
	return r, nil
}

// countingPolicy sits inside the SDK's retry loop, so it sees every HTTP attempt.
type countingPolicy struct{ r *Resolver }

func (p countingPolicy) Do(req *policy.Request) (*http.Response, error) {
	p.r.armRequests.Add(1)
	resp, err := req.Next()
	var re *azcore.ResponseError
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests ||
		resp == nil && errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests {
		// The second form is how an in-process transport (the SDK's fake) reports a status.
		p.r.throttled.Add(1)
	}
	return resp, err
}

// Stats returns a snapshot of the counters.
func (r *Resolver) Stats() Stats {
	return Stats{
		Lookups:      r.lookups.Load(),
		Hits:         r.hits.Load(),
		NegativeHits: r.negHits.Load(),
		ARMCalls:     r.armCalls.Load(),
		ARMRequests:  r.armRequests.Load(),
		Throttled:    r.throttled.Load(),
	}
}

// Lookup returns the identity's client and tenant IDs.
//
// A cached answer is returned without I/O. Otherwise concurrent lookups of one identity share a
// single ARM call, which runs detached from any one caller's cancellation (bounded by
// CallTimeout): an admission review that gives up at its deadline does not fail the others
// waiting on the same call, and the answer still lands in the cache for the sweeper. Each caller
// stops waiting when its own ctx ends.
//
// Errors wrap ErrNotFound when ARM says the identity does not exist (cached for NegativeTTL);
// throttling, 5xx, authorization and network errors are returned uncached, the SDK's
// *azcore.ResponseError reachable with errors.As.
func (r *Resolver) Lookup(ctx context.Context, id Identity) (Resolved, error) {
	r.lookups.Add(1)
	key := id.key()
	if e, ok := r.cached(key); ok {
		if e.err != nil {
			r.negHits.Add(1)
			return Resolved{}, e.err
		}
		r.hits.Add(1)
		return e.val, nil
	}
	detached := context.WithoutCancel(ctx)
	ch := r.flights.DoChan(key, func() (any, error) {
		// A flight that finished between our cache check and DoChan already stored the answer.
		if e, ok := r.cached(key); ok {
			return e.val, e.err
		}
		cctx, cancel := context.WithTimeout(detached, r.cfg.CallTimeout)
		defer cancel()
		return r.fetch(cctx, id)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Resolved{}, res.Err
		}
		return res.Val.(Resolved), nil
	case <-ctx.Done():
		return Resolved{}, fmt.Errorf("looking up managed identity %s: %w", id, context.Cause(ctx))
	}
}

// Forget drops the cache entry for id, e.g. when the sweeper finds the binding does not work
// with the cached client ID (the identity was re-created).
func (r *Resolver) Forget(id Identity) {
	r.cacheMu.Lock()
	delete(r.cache, id.key())
	r.cacheMu.Unlock()
}

func (r *Resolver) cached(key string) (cacheEntry, bool) {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	e, ok := r.cache[key]
	if !ok {
		return cacheEntry{}, false
	}
	if !r.cfg.Now().Before(e.expires) {
		delete(r.cache, key)
		return cacheEntry{}, false
	}
	return e, true
}

func (r *Resolver) store(key string, e cacheEntry) {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	if _, ok := r.cache[key]; !ok && len(r.cache) >= r.cfg.MaxEntries {
		now := r.cfg.Now()
		for k, old := range r.cache {
			if !now.Before(old.expires) {
				delete(r.cache, k)
			}
		}
		// Still full: drop arbitrary entries. Losing one costs at most one more ARM call.
		for k := range r.cache {
			if len(r.cache) < r.cfg.MaxEntries {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[key] = e
}

func (r *Resolver) fetch(ctx context.Context, id Identity) (Resolved, error) {
	client, err := r.client(id.SubscriptionID)
	if err != nil {
		return Resolved{}, err
	}
	r.armCalls.Add(1)
	start := r.cfg.Now()
	resp, err := client.Get(ctx, id.ResourceGroup, id.Name, nil)
	r.cfg.Log.DebugContext(ctx, "ARM get managed identity", "id", id.ResourceID(), "elapsed", r.cfg.Now().Sub(start), "err", err)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusNotFound {
			// ResourceNotFound, ResourceGroupNotFound and SubscriptionNotFound all land here.
			nf := fmt.Errorf("%w: %s (ARM %s)", ErrNotFound, id, re.ErrorCode)
			r.store(id.key(), cacheEntry{err: nf, expires: r.cfg.Now().Add(r.cfg.NegativeTTL)})
			return Resolved{}, nf
		}
		return Resolved{}, fmt.Errorf("looking up managed identity %s: %w", id, err)
	}
	res, err := resolvedFrom(id, resp.Identity)
	if err != nil {
		return Resolved{}, err
	}
	r.store(id.key(), cacheEntry{val: res, expires: r.cfg.Now().Add(r.cfg.PositiveTTL)})
	return res, nil
}

// resolvedFrom validates ARM's answer: the client ID becomes part of RBAC object names and both
// IDs become annotation values, so anything but GUIDs is refused rather than passed on.
func resolvedFrom(id Identity, mi armmsi.Identity) (Resolved, error) {
	var res Resolved
	if mi.ID != nil {
		res.ResourceID = *mi.ID
	} else {
		res.ResourceID = id.ResourceID()
	}
	if p := mi.Properties; p != nil {
		if p.ClientID != nil {
			res.ClientID = *p.ClientID
		}
		if p.TenantID != nil {
			res.TenantID = *p.TenantID
		}
		if p.PrincipalID != nil {
			res.PrincipalID = *p.PrincipalID
		}
	}
	if !IsGUID(res.ClientID) || !IsGUID(res.TenantID) {
		return Resolved{}, fmt.Errorf("ARM returned managed identity %s without a valid clientId/tenantId (%s, %s)", id, quote(res.ClientID), quote(res.TenantID))
	}
	return res, nil
}

// client returns the per-subscription ARM client: armmsi binds a client to one subscription.
func (r *Resolver) client(sub string) (*armmsi.UserAssignedIdentitiesClient, error) {
	k := strings.ToLower(sub)
	r.clientsMu.Lock()
	defer r.clientsMu.Unlock()
	if c, ok := r.clients[k]; ok {
		return c, nil
	}
	opts := r.opts
	c, err := armmsi.NewUserAssignedIdentitiesClient(sub, r.cred, &opts)
	if err != nil {
		return nil, fmt.Errorf("creating ARM client for subscription %s: %w", sub, err)
	}
	r.clients[k] = c
	return c, nil
}
