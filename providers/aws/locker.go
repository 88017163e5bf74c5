package aws

import (
	"context"
	"fmt"
	"sync"
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
	// Bump increments key's generation; the caller holds the lock.
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
