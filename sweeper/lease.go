package sweeper

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
)

// renewalTracker wraps the leader election lock and remembers when the last write that made or
// kept this replica the holder was sent.
//
// client-go's elector cancels the leadership context only after a failed renewal AND an attempt
// to release the Lease, each allowed up to RenewDeadline: with the apiserver unreachable the
// term's workers kept releasing Jobs and writing IAM for about 2 x RenewDeadline, well past the
// Lease's expiry, when another replica may already lead. The sweeper therefore keeps its own
// account of the renewals and stops the term itself (see Sweeper.watchLease).
type renewalTracker struct {
	resourcelock.Interface

	mu   sync.Mutex
	last time.Time // when the last successful Create/Update as holder was sent (monotonic)
}

// Create implements resourcelock.Interface.
func (l *renewalTracker) Create(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, ler, l.Interface.Create)
}

// Update implements resourcelock.Interface.
func (l *renewalTracker) Update(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, ler, l.Interface.Update)
}

// write records the time before sending, not after the answer: the apiserver stores the write,
// and other replicas start counting the Lease duration, at some moment in between, so the
// moment of sending is the conservative start of the Lease. Only writes naming this replica
// count: the release on the way out (holder "") renews nothing.
func (l *renewalTracker) write(ctx context.Context, ler resourcelock.LeaderElectionRecord,
	do func(context.Context, resourcelock.LeaderElectionRecord) error) error {
	sent := time.Now()
	if err := do(ctx, ler); err != nil {
		return err
	}
	if ler.HolderIdentity == l.Identity() {
		l.mu.Lock()
		if sent.After(l.last) {
			l.last = sent
		}
		l.mu.Unlock()
	}
	return nil
}

// lastRenewal is when the last successful renewal (or acquisition) was sent; zero if none.
func (l *renewalTracker) lastRenewal() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// renewalBudget is how long after its last successful renewal a leader may keep working. It is
// RenewDeadline, the elector's own patience, but always ends a margin before the Lease expires
// for the other replicas. They count the LeaseDurationSeconds the elector writes, which is the
// LeaseDuration truncated to whole seconds, so a fractional LeaseDuration is shorter for them.
func renewalBudget(cfg Config) time.Duration {
	margin := min(cfg.RetryPeriod/4, 250*time.Millisecond)
	lease := cfg.LeaseDuration.Truncate(time.Second)
	if lease <= 0 {
		lease = cfg.LeaseDuration
	}
	return max(min(cfg.RenewDeadline, lease-margin), 0)
}

// leaseOverdue reports how long ago the last renewal was sent, and whether that exceeds budget.
func leaseOverdue(lock *renewalTracker, budget time.Duration) (time.Duration, bool) {
	since := time.Since(lock.lastRenewal())
	return since, since >= budget
}

// watchLease calls expired (once) when no renewal succeeded for budget, and returns then or
// when ctx ends. It sleeps until the moment the budget of the latest renewal runs out rather
// than polling, so it fires on time whatever the retry period.
func (s *Sweeper) watchLease(ctx context.Context, lock *renewalTracker, budget time.Duration, expired func(since time.Duration)) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		since, overdue := leaseOverdue(lock, budget)
		if overdue {
			expired(since)
			return
		}
		timer.Reset(budget - since) // timers never fire early: since >= budget then, unless renewed
	}
}

// Per-seed lock Leases (kube.LeaseLocker) are created by the writers when they first write for a
// seed. The leader removes those of seeds that are no longer configured (issue 16): only Leases
// this server created (our managed label, a key annotation, and the name kube.LeaseName derives
// from that key), only while nobody holds them, and only at the resourceVersion it read.

// seedLeaseKeyAnnotation is the annotation kube.LeaseLocker records its key in.
const seedLeaseKeyAnnotation = annotations.Prefix + "key"

func (t *term) pruneSeedLeases(ctx context.Context) {
	allowed := t.deps.SeedLeaseAllowed
	if allowed == nil || t.cfg.Namespace == "" {
		return
	}
	leases := t.cs.CoordinationV1().Leases(t.cfg.Namespace)
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: annotations.ManagedLabel + "=true"})
	if err != nil {
		t.log.Warn("listing lock Leases failed", "error", err)
		return
	}
	now := t.now()
	for i := range list.Items {
		l := &list.Items[i]
		k := l.Annotations[seedLeaseKeyAnnotation]
		if k == "" || l.Name != kube.LeaseName(k) || allowed(k) {
			continue // not a seed lock of ours (the sweeper's own Lease), or still configured
		}
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
			now.Before(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second)) {
			continue // held: look again on the next full collection
		}
		rv, uid := l.ResourceVersion, l.UID
		err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv, UID: &uid}})
		switch {
		case err == nil:
			t.log.Info("deleted the lock Lease of a seed that is no longer configured", "lease", l.Name, "seed", k)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		case apierrors.IsForbidden(err):
			if !t.leasesForbidden {
				t.leasesForbidden = true
				t.log.Warn("cannot delete lock Leases of seeds no longer configured (RBAC: leases delete); they are ignored", "lease", l.Name, "error", err)
			}
		default:
			t.log.Warn("deleting a lock Lease failed", "lease", l.Name, "error", err)
		}
	}
}

// SeedLeaseExists returns whether the per-seed lock Lease of a key exists in namespace (for
// aws.SeedGuard: a seed deleted after this server wrote for it keeps being locked, and
// collected). nil without a Kubernetes API or namespace.
func SeedLeaseExists(cs kubernetes.Interface, namespace string) func(ctx context.Context, key string) (bool, error) {
	if cs == nil || namespace == "" {
		return nil
	}
	return func(ctx context.Context, key string) (bool, error) {
		_, err := cs.CoordinationV1().Leases(namespace).Get(ctx, kube.LeaseName(key), metav1.GetOptions{})
		switch {
		case err == nil:
			return true, nil
		case apierrors.IsNotFound(err):
			return false, nil
		}
		return false, err
	}
}
