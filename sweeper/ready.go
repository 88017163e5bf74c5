package sweeper

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
)

// ReadyCache remembers ServiceAccounts whose credentials the sweeper proved to work, so that
// admission can let their next Jobs start without a hold. It implements hold.ReadyCache.
//
// An entry is bound to the identity it proved (role ARN, client and tenant IDs, UID): when the
// ServiceAccount changes or is deleted and recreated under the same name, Observe or Forget
// drops it, and every entry expires after its TTL anyway, so a trust policy changed behind our
// back costs at most one TTL of unheld Jobs. Only the leader's sweeper fills it: other replicas
// hold every Job of a cloud ServiceAccount, and the leader releases it after one check.
type ReadyCache struct {
	ttl time.Duration
	now func() time.Time

	mu sync.RWMutex
	m  map[string]readyEntry
}

type readyEntry struct {
	fingerprint string
	until       time.Time
}

// NewReadyCache returns an empty cache whose entries live for ttl.
func NewReadyCache(ttl time.Duration) *ReadyCache {
	return &ReadyCache{ttl: ttl, now: time.Now, m: map[string]readyEntry{}}
}

// fingerprint is what a proof is about. A pending marker makes it unique to the moment so a
// pending ServiceAccount never matches a proven one. The bucket names are part of it: the AWS
// check proves the buckets named when it ran (awscheck's bucket proof), not others named later.
func fingerprint(sa *corev1.ServiceAccount) string {
	a := sa.Annotations
	return string(sa.UID) + "\x00" + a[annotations.AWSRoleARN] + "\x00" + a[annotations.AzureClientID] + "\x00" +
		a[annotations.AzureTenantID] + "\x00" + a[annotations.Pending] + "\x00" + a[annotations.BucketNames]
}

// Ready implements hold.ReadyCache.
func (c *ReadyCache) Ready(namespace, name string) bool {
	if c == nil {
		return false
	}
	c.mu.RLock()
	e, ok := c.m[namespace+"/"+name]
	c.mu.RUnlock()
	return ok && c.now().Before(e.until)
}

// MarkReady records that sa's current identity works.
func (c *ReadyCache) MarkReady(sa *corev1.ServiceAccount) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	// Per-session ServiceAccounts come and go by the hundred a day: drop expired entries now
	// and then so the map stays the size of what is alive.
	if len(c.m) >= 1024 && len(c.m)%256 == 0 {
		for k, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, k)
			}
		}
	}
	c.m[sa.Namespace+"/"+sa.Name] = readyEntry{fingerprint: fingerprint(sa), until: now.Add(c.ttl)}
}

// Observe drops the entry of sa when its identity is no longer the one proven.
func (c *ReadyCache) Observe(sa *corev1.ServiceAccount) {
	key := sa.Namespace + "/" + sa.Name
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && e.fingerprint != fingerprint(sa) {
		delete(c.m, key)
	}
}

// Forget drops the entry of a ServiceAccount (deleted).
func (c *ReadyCache) Forget(namespace, name string) {
	c.mu.Lock()
	delete(c.m, namespace+"/"+name)
	c.mu.Unlock()
}

// The Job admission plugin reads this cache.
var _ hold.ReadyCache = (*ReadyCache)(nil)
