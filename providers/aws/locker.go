package aws

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

// Locker serialises the read-modify-write of one seed's derived roles (IAM has no
// compare-and-swap) and carries a generation number per key.
//
// Generation protocol. The generation of a key counts the lock sessions that wrote to IAM for that
// seed. Every Assigner remembers the generation at which its cache of derived roles was last
// known to match IAM:
//
//  1. Lock returns the current generation g. If the cache was taken at g, nobody wrote since, so
//     the cache is used as is: the steady-state assignment costs one IAM call, the write itself.
//     Otherwise the cache is reloaded from IAM (ListRoles) first.
//  2. Before the first IAM write of a session the Assigner calls Bump, so the generation becomes
//     g+1 and its own cache is recorded at g+1. Bumping before rather than after the write means
//     a crash between the two costs other replicas one needless reload, whereas bumping after
//     would let them keep a stale cache and overwrite the subject just written.
//     (kube.LeaseLocker records the bump and writes it with the release, which frees the Lease in
//     the same update: nobody reads the generation while the Lease is held, and a holder that
//     dies holding it has the generation bumped by whoever takes it over. Its Bump, and Held
//     before every later write, refuse once the Lease may have expired, so a session that
//     outlives its Lease stops writing; a write already sent when it expires is the residual
//     risk, bounded by HoldLimit as before.)
//  3. A write whose outcome is unknown (timeout) drops the cache, so it is reloaded next time.
//
// The key is the seed role ARN. NewLocalLocker is enough for one process; replicas share a
// Kubernetes Lease per seed (coordination.k8s.io), whose implementation lives elsewhere and keeps
// the generation in the Lease. Residual risk: IAM reads are eventually consistent, so a reload
// right after another replica's write may miss it; Assign of an already-listed subject is free,
// so the sweeper re-assigning annotated ServiceAccounts repairs such a loss.
type Locker interface {
	// Lock blocks until key is held or ctx ends; unlock releases it (calling it twice is safe).
	Lock(ctx context.Context, key string) (unlock func(), generation int64, err error)
	// Bump increments key's generation (kube.LeaseLocker: at the release); the caller holds
	// the lock.
	Bump(ctx context.Context, key string) error
}

// LocalLocker is an in-process Locker: one mutex (context-aware) and one generation per key.
type LocalLocker struct {
	mu   sync.Mutex
	keys map[string]*localKey
}

type localKey struct {
	sem chan struct{}
	gen int64 // guarded by LocalLocker.mu
}

// NewLocalLocker returns an empty LocalLocker.
func NewLocalLocker() *LocalLocker { return &LocalLocker{keys: map[string]*localKey{}} }

func (l *LocalLocker) key(key string) *localKey {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.keys[key]
	if !ok {
		k = &localKey{sem: make(chan struct{}, 1)}
		l.keys[key] = k
	}
	return k
}

// Lock implements Locker.
func (l *LocalLocker) Lock(ctx context.Context, key string) (func(), int64, error) {
	k := l.key(key)
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("waiting for lock %q: %w", key, ctx.Err())
	}
	l.mu.Lock()
	gen := k.gen
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { <-k.sem }) }, gen, nil
}

// Bump implements Locker.
func (l *LocalLocker) Bump(_ context.Context, key string) error {
	k := l.key(key)
	l.mu.Lock()
	k.gen++
	l.mu.Unlock()
	return nil
}

// ErrSeedMissing: the seed role does not exist in IAM, so no lock (no Lease) is taken for it.
var ErrSeedMissing = errors.New("seed role does not exist")

// SeedGuard wraps the per-seed Locker so that no lock, and so no Lease, is ever taken for a key
// that is not a configured seed or names a role that does not exist (issue 16: a Lease was
// created for every seed string a ServiceAccount named, and never removed). A seed whose role
// was deleted after this server wrote for it is still locked while its lock already exists
// (Known), so the garbage collection of its derived roles goes on.
type SeedGuard struct {
	Locker Locker
	// Allowed says whether a key (a seed role ARN) is configured (--aws-seed-roles).
	Allowed func(key string) bool
	// IAM reads the seed role (iam:GetRole); the answer is cached (seedExistsTTL,
	// seedMissingTTL).
	IAM IAMAPI
	// Known says whether a lock for key already exists (its Lease); nil: never.
	Known func(ctx context.Context, key string) (bool, error)

	mu     sync.Mutex
	exists map[string]seedCheck
}

type seedCheck struct {
	exists bool
	until  time.Time
}

// Cached answers: a seed that exists stays so for a long while (a deleted seed only stops new
// Leases later), a missing one is looked up again soon (it may be created any moment).
const (
	seedExistsTTL  = 10 * time.Minute
	seedMissingTTL = 30 * time.Second
	maxSeedChecks  = 1024
)

// NewSeedGuard returns the guarded Locker. It keeps the wrapped Locker's hold limit (a Lease
// expires), which the Assigner bounds its sessions by.
func NewSeedGuard(l Locker, allowed func(string) bool, api IAMAPI, known func(context.Context, string) (bool, error)) Locker {
	g := &SeedGuard{Locker: l, Allowed: allowed, IAM: api, Known: known, exists: map[string]seedCheck{}}
	h, limited := l.(holdLimiter)
	r, renews := l.(Renewer)
	switch {
	case limited && renews:
		return &renewingSeedGuard{limitedSeedGuard: limitedSeedGuard{SeedGuard: g, limit: h}, renew: r}
	case limited:
		return &limitedSeedGuard{SeedGuard: g, limit: h}
	}
	return g
}

type limitedSeedGuard struct {
	*SeedGuard
	limit holdLimiter
}

func (g *limitedSeedGuard) HoldLimit() time.Duration { return g.limit.HoldLimit() }

// renewingSeedGuard is a limitedSeedGuard over a Locker that can renew its hold (Renewer).
type renewingSeedGuard struct {
	limitedSeedGuard
	renew Renewer
}

// Renew implements Renewer; the key was checked when it was locked.
func (g *renewingSeedGuard) Renew(ctx context.Context, key string) (time.Time, error) {
	return g.renew.Renew(ctx, key)
}

// Lock implements Locker: it refuses keys that are not configured, existing seeds.
func (g *SeedGuard) Lock(ctx context.Context, key string) (func(), int64, error) {
	if err := g.check(ctx, key); err != nil {
		return nil, 0, err
	}
	return g.Locker.Lock(ctx, key)
}

// Bump implements Locker.
func (g *SeedGuard) Bump(ctx context.Context, key string) error { return g.Locker.Bump(ctx, key) }

// Held implements heldChecker when the wrapped Locker does.
func (g *SeedGuard) Held(key string) error {
	if h, ok := g.Locker.(heldChecker); ok {
		return h.Held(key)
	}
	return nil
}

// heldChecker is a Locker whose hold can end by itself (a Lease expires): Held answers, without
// an API call, whether writing under key is still safe. The session asks before every IAM write,
// not only the first (Bump), so a session that outlives its Lease stops writing.
type heldChecker interface {
	Held(key string) error
}

func (g *SeedGuard) check(ctx context.Context, key string) error {
	if g.Allowed != nil && !g.Allowed(key) {
		return fmt.Errorf("%w: %s is not in the seed allowlist", ErrNotAllowed, key)
	}
	if g.IAM == nil {
		return nil
	}
	now := time.Now()
	g.mu.Lock()
	c, cached := g.exists[key]
	g.mu.Unlock()
	if !cached || now.After(c.until) {
		seed, err := ParseRoleARN(key)
		if err != nil {
			return err
		}
		_, err = g.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(seed.Name)})
		switch {
		case err == nil:
			c = seedCheck{exists: true, until: now.Add(seedExistsTTL)}
		case isNoSuchEntity(err):
			c = seedCheck{exists: false, until: now.Add(seedMissingTTL)}
		default:
			return fmt.Errorf("reading seed role %s: %w", key, err)
		}
		g.mu.Lock()
		if len(g.exists) >= maxSeedChecks {
			clear(g.exists) // configured seeds only: never near this, but bounded
		}
		g.exists[key] = c
		g.mu.Unlock()
	}
	if c.exists {
		return nil
	}
	if g.Known != nil {
		if ok, err := g.Known(ctx, key); err != nil {
			return err
		} else if ok {
			return nil
		}
	}
	return fmt.Errorf("%w: %s", ErrSeedMissing, key)
}
