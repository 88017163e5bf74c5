package sweeper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"go.klusters.dev/credential-webhook/hold"
)

// readiness says whether the credentials of the Job's ServiceAccount work, and why (not): what
// is known without a cloud call (hold.Precheck), else the Checker of every cloud the
// ServiceAccount asks for. The cloud check ends by the Job's max-hold deadline (see
// hold.CheckDeadline): once it has passed, only the answers known without a cloud call count,
// and hold.Plan releases the Job without credentials. checked is false when the answer is only
// that max hold cut the check short (or left no time).
func (t *term) readiness(ctx context.Context, job *batchv1.Job, saName string, heldSince time.Time) (ready bool, why string, checked bool) {
	sa, err := t.saLister.ServiceAccounts(job.Namespace).Get(saName)
	switch {
	case apierrors.IsNotFound(err):
		sa = nil
	case err != nil:
		return false, fmt.Sprintf("ServiceAccount %s/%s: %v", job.Namespace, saName, err), true
	}
	v := hold.Precheck(job.Namespace, saName, sa, sa != nil && t.ready.Ready(sa.Namespace, sa.Name))
	if v.Known {
		return v.Ready, v.Why, true
	}
	id := v.Identity
	deadline, cause, inTime := hold.CheckDeadline(heldSince, t.now(), t.cfg.holdPolicy())
	if !inTime {
		return false, fmt.Sprintf("max hold reached before the credentials of ServiceAccount %s/%s were proven", sa.Namespace, sa.Name), false
	}
	ctx, cancel := context.WithDeadlineCause(ctx, deadline, cause)
	defer cancel()
	var reasons []string
	for _, c := range []struct {
		cloud   string
		wanted  bool
		checker Checker
	}{{"aws", id.AWS, t.deps.AWS}, {"azure", id.Azure, t.deps.Azure}} {
		if !c.wanted {
			continue
		}
		if c.checker == nil {
			reasons = append(reasons, c.cloud+" identity assigned (no checker configured)")
			continue
		}
		ok, why, err := c.checker.Check(ctx, sa)
		switch {
		case err != nil:
			t.m.checks.WithLabelValues(c.cloud, "error").Inc()
			if errors.Is(context.Cause(ctx), hold.ErrMaxHoldReached) {
				// Not a failure of the cloud: the Job's time is up and Plan releases it now.
				return false, fmt.Sprintf("%s check did not finish before max hold: %v", c.cloud, err), false
			}
			t.log.Warn("credential check failed", "cloud", c.cloud, "serviceaccount", key(sa.Namespace, sa.Name), "error", err)
			return false, fmt.Sprintf("%s check failed: %v", c.cloud, err), true
		case !ok:
			t.m.checks.WithLabelValues(c.cloud, "not-ready").Inc()
			return false, why, true
		}
		t.m.checks.WithLabelValues(c.cloud, "ready").Inc()
		reasons = append(reasons, why)
	}
	t.ready.MarkReady(sa)
	return true, strings.Join(reasons, "; "), true
}
