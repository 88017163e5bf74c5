package sweeper

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// markerClaims are the claims a ServiceAccount's own markers record: what admission accepted
// (pending) and what this server granted (granted). Only this server writes them (the admission
// policy and the guard see to it), so they, not the input annotations, say which of our cloud
// objects may hold something for the ServiceAccount. Unreadable markers count as none.
func markerClaims(sa *corev1.ServiceAccount) markers.Claims {
	var out markers.Claims
	if p, err := markers.ParsePending(sa.Annotations[annotations.Pending]); err == nil {
		out = p
	}
	if v := sa.Annotations[annotations.Granted]; v != "" {
		if _, g, err := markers.ParseGranted(v); err == nil {
			for _, c := range g {
				if !out.Has(c) {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// tokenBucket allows burst events at once and then one per interval.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

// buckets are the per-scope token buckets of event-driven collections. They belong to the
// Sweeper, not to a term, so losing and regaining the leadership does not refill them.
type buckets struct {
	mu       sync.Mutex
	interval time.Duration
	burst    int
	m        map[string]*tokenBucket
}

func newBuckets(interval time.Duration, burst int) *buckets {
	return &buckets{interval: interval, burst: burst, m: map[string]*tokenBucket{}}
}

// take spends a token of key's bucket at now when one is there (0), else says how long until
// one is.
func (b *buckets) take(key string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	tb, ok := b.m[key]
	if !ok {
		tb = &tokenBucket{tokens: float64(b.burst), last: now}
		b.m[key] = tb
	}
	if el := now.Sub(tb.last); el > 0 {
		tb.tokens = min(float64(b.burst), tb.tokens+float64(el)/float64(b.interval))
		tb.last = now
	}
	if tb.tokens >= 1 {
		tb.tokens--
		return 0
	}
	return time.Duration((1 - tb.tokens) * float64(b.interval))
}

// keep forgets the buckets of keys not in live (scopes no longer configured), so the map stays
// the size of the configuration. A forgotten bucket that comes back starts full.
func (b *buckets) keep(live map[string]bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, tb := range b.m {
		// A bucket still short of tokens is kept, or dropping it would refill it.
		full := float64(now.Sub(tb.last))/float64(b.interval)+tb.tokens >= float64(b.burst)
		if !live[k] && full {
			delete(b.m, k)
		}
	}
}
