package sweeper

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// Finishing a pending ServiceAccount: the write that admission planned. It runs on a
// ServiceAccount read from the informer cache, that is one the apiserver persisted after every
// admission plugin and policy (including this server's ValidatingAdmissionPolicy) let it through,
// never on the word of a review. The writer (every replica, for what it planned) and the leader
// (after Config.Handoff, for everything) share it; a finish is idempotent, and its patch tests
// the marker and the UID, so two finishers racing cost one extra read, never a wrong grant.

// outcome of one finish.
type outcome string

const (
	finished outcome = "finished" // every claim written or dropped, patch applied
	gone     outcome = "gone"     // nothing to do: no pending marker, deleted, re-created
	stale    outcome = "stale"    // the patch's tests failed: look again once the cache caught up
)

// finish writes the claims pending on sa to their clouds and records the result on sa. An error
// means a cloud or the apiserver failed and the whole finish is to be retried (writes already
// made are idempotent).
func (s *Sweeper) finish(ctx context.Context, sa *corev1.ServiceAccount) (outcome, error) {
	if sa.DeletionTimestamp != nil {
		return gone, nil
	}
	if _, pending := sa.Annotations[annotations.Pending]; !pending {
		return gone, nil
	}
	k := key(sa.Namespace, sa.Name)
	nsAllowed := s.deps.Namespaces == nil || s.deps.Namespaces(sa.Namespace)
	work, drops, err := Triage(sa, s.clouds, nsAllowed)
	if err != nil {
		// Not ours to read (an older version's reason, or a bug): drop it, with an Event.
		drops = nil
		for name := range s.clouds {
			drops = append(drops, Drop{Claim: markers.Claim{Cloud: name}, Reason: fmt.Sprintf("pending marker unreadable (%v)", err)})
		}
		work = nil
	}
	res := Finished{Set: map[string]string{}}
	for _, c := range work {
		set, err := s.clouds[c.Cloud].Finish(ctx, sa)
		if errors.Is(err, markers.ErrRefused) {
			drops = append(drops, Drop{Claim: c, Reason: err.Error()})
			continue
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", c.Cloud, err)
		}
		maps.Copy(res.Set, set)
		res.Granted = res.Granted.With(c)
	}
	for _, d := range drops {
		res.Dropped = append(res.Dropped, d.Claim.Cloud)
		if cloud, ok := s.clouds[d.Claim.Cloud]; ok {
			res.Clear = append(res.Clear, cloud.Outputs()...)
		}
	}
	patch, err := FinishPatch(sa, res)
	if err != nil {
		return gone, nil
	}
	_, err = s.cs.CoreV1().ServiceAccounts(sa.Namespace).Patch(ctx, sa.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	switch {
	case apierrors.IsNotFound(err):
		return gone, nil
	case isStale(err):
		return stale, nil
	case err != nil:
		return "", fmt.Errorf("recording the assignment on the ServiceAccount: %w", err)
	}
	for _, d := range drops {
		reason := d.Reason
		s.recorder.Eventf(sa, corev1.EventTypeWarning, "ClaimDropped", "credential-webhook did not grant the %s identity: %s", d.Claim.Cloud, reason)
		s.log.Warn("pending claim dropped", "serviceaccount", k, "cloud", d.Claim.Cloud, "reason", reason)
		s.m.finishes.WithLabelValues("dropped").Inc()
	}
	if len(res.Granted) > 0 {
		clouds := make([]string, len(res.Granted))
		for i, c := range res.Granted {
			clouds[i] = c.Cloud
		}
		s.recorder.Eventf(sa, corev1.EventTypeNormal, "Assigned", "credential-webhook granted the %s identity", strings.Join(clouds, " and "))
		s.log.Info("granted pending ServiceAccount", "serviceaccount", k, "uid", sa.UID, "clouds", clouds)
		s.m.finishes.WithLabelValues("finished").Inc()
	}
	return finished, nil
}
