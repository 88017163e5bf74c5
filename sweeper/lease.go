package sweeper

import (
	"context"
	"time"

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
