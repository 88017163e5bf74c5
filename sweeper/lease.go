package sweeper

import (
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
)

// Per-seed lock Leases (kube.LeaseLocker) are created by the writers when they first write for a
// seed. The leader removes those of seeds that are no longer configured (issue 16): only Leases
// this server created (our managed label, a key annotation, and the name kube.LeaseName derives
// from that key), only while nobody holds them, and only at the resourceVersion it read.

// seedLeaseKeyAnnotation is the annotation kube.LeaseLocker records its key in.
const seedLeaseKeyAnnotation = annotations.Prefix + "key"

// pruneSeedLeases also hands the list it read, minus what it deleted, to Deps.SeedLeasesListed.
func (t *term) pruneSeedLeases(ctx context.Context) {
	allowed, listed := t.deps.SeedLeaseAllowed, t.deps.SeedLeasesListed
	if (allowed == nil && listed == nil) || t.cfg.Namespace == "" {
		return
	}
	leases := t.cs.CoordinationV1().Leases(t.cfg.Namespace)
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: annotations.ManagedLabel + "=true"})
	if err != nil {
		t.log.Warn("listing lock Leases failed", "error", err)
		return
	}
	now := t.now()
	kept := list.Items[:0] // what is left after the deletions below, in place
	for i := range list.Items {
		l := &list.Items[i]
		if t.pruneSeedLease(ctx, leases, l, allowed, now) {
			continue
		}
		kept = append(kept, *l)
	}
	if listed != nil {
		listed(t.cfg.Namespace, kept)
	}
}

// pruneSeedLease deletes l if it is the unheld lock Lease of a seed allowed does not allow (nil
// allows every seed), and reports whether l is gone.
func (t *term) pruneSeedLease(ctx context.Context, leases kube.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList], l *coordinationv1.Lease, allowed func(string) bool, now time.Time) bool {
	k := l.Annotations[seedLeaseKeyAnnotation]
	if allowed == nil || k == "" || l.Name != kube.LeaseName(k) || allowed(k) {
		return false // not a seed lock of ours (the sweeper's own Lease), or still configured
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
		now.Before(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second)) {
		return false // held: look again on the next full collection
	}
	rv, uid := l.ResourceVersion, l.UID
	err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv, UID: &uid}})
	switch {
	case err == nil:
		t.log.Info("deleted the lock Lease of a seed that is no longer configured", "lease", l.Name, "seed", k)
		return true
	case apierrors.IsNotFound(err):
		return true
	case apierrors.IsConflict(err):
		// Changed since the list: it exists, in a state the list does not show.
	case apierrors.IsForbidden(err):
		if !t.leasesForbidden {
			t.leasesForbidden = true
			t.log.Warn("cannot delete lock Leases of seeds no longer configured (RBAC: leases delete); they are ignored", "lease", l.Name, "error", err)
		}
	default:
		t.log.Warn("deleting a lock Lease failed", "lease", l.Name, "error", err)
	}
	return false
}

// SeedLeaseExists returns whether the per-seed lock Lease of a key exists in namespace (for
// aws.SeedGuard: a seed deleted after this server wrote for it keeps being locked, and
// collected). nil without a Kubernetes API or namespace.
func SeedLeaseExists(cs kube.Client, namespace string) func(ctx context.Context, key string) (bool, error) {
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
