package pods

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// ServiceAccounts reads a ServiceAccount (an informer's lister in production). A missing one is
// reported with a Kubernetes NotFound error.
type ServiceAccounts interface {
	Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// Plugin is the Pod CREATE admission plugin. It has no side effects, so dryRun needs no special
// case: the patch is returned and the apiserver discards the result itself.
type Plugin struct {
	ServiceAccounts ServiceAccounts
	Config          Config
	// Metrics, when set, counts injected Pods and unreadable ServiceAccounts.
	Metrics *Metrics

	waiters atomic.Int32 // reviews in awaitGrant (maxGrantWaiters)
}

// NewPlugin returns a Plugin reading ServiceAccounts from sas.
func NewPlugin(sas ServiceAccounts, cfg Config) *Plugin {
	return &Plugin{ServiceAccounts: sas, Config: cfg}
}

// Name implements admission.Plugin.
func (p *Plugin) Name() string { return "pod-irsa" }

// Admit implements admission.Plugin.
func (p *Plugin) Admit(ctx context.Context, req *admission.Request, resp *admission.Response) error {
	if req.Operation != "" && req.Operation != admissionv1.Create {
		return nil
	}
	pod, err := p.pod(req)
	if err != nil {
		return admission.Deny(http.StatusBadRequest, "decode Pod: %v", err)
	}
	if skipPod(pod.Metadata.Labels) {
		// The webhook's objectSelector keeps such Pods away; this is the second line, for a
		// configuration without it (static manifests edited by hand, another registration).
		return nil
	}
	name := pod.Spec.ServiceAccountName
	if name == "" {
		name = "default"
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Metadata.Namespace
	}
	sa, err := p.ServiceAccounts.Get(ctx, ns, name)
	if err != nil {
		return p.missing(req, resp, ns, name, err)
	}
	if planned(sa) && !injected(pod) {
		if sa, err = p.granted(ctx, req, resp, ns, name, sa); err != nil {
			return err
		}
	}
	before := resp.Patch.Len()
	warnings, sidecar := inject(pod, sa, p.Config, resp.Patch)
	for _, w := range warnings {
		resp.Warn("%s", w)
	}
	// A reinvocation, or a Pod the EKS webhook already served, adds nothing and is not counted;
	// nor is a dry run, which creates no Pod.
	if resp.Patch.Len() > before && !req.DryRun {
		p.Metrics.injected(sidecar)
	}
	return nil
}

// podDecoder reads the Pod's view while the server reads the review, in one pass over the
// object (admission.ObjectDecoder).
type podDecoder struct{}

func (podDecoder) DecodeObject(dec *jsontext.Decoder) (any, error) { return decodePodFrom(dec) }

// ObjectDecoder implements admission.ObjectReader.
func (p *Plugin) ObjectDecoder() admission.ObjectDecoder { return podDecoder{} }

// pod is the review's Pod as podDecoder read it, or decoded from the raw object.
func (p *Plugin) pod(req *admission.Request) (*podView, error) {
	if v, ok := req.Decoded(podDecoder{}); ok {
		if pod, ok := v.(*podView); ok {
			return pod, nil
		}
	}
	return decodePod(req.Object)
}

// skipPod: the EKS pod-identity webhook's opt-out label, with its objectSelector's semantics
// (operator DoesNotExist): present with any value, even "false", the Pod is left alone.
func skipPod(labels map[string]string) bool {
	_, ok := labels[annotations.AWSSkipPodIdentityLabel]
	return ok
}

// planned reports whether sa's role ARN is still only admission's plan: its AWS claim is
// pending, so the writer has not put the ServiceAccount in a role yet, and the role it ends up in
// may not be the planned one (the writer then corrects the annotation; with two replicas planning
// one burst of ServiceAccounts, most plans for new roles miss). A Pod's environment is fixed at
// creation, so a Pod injected with a plan that missed would never get credentials.
func planned(sa *corev1.ServiceAccount) bool {
	v, ok := sa.Annotations[annotations.Pending]
	return ok && sa.Annotations[annotations.AWSRoleARN] != "" && markers.PendingOn(v, markers.AWS)
}

// injected reports whether the Pod already has what inject adds first: the token volume (a
// reinvocation, or the EKS webhook ran first). inject changes nothing then, so there is nothing
// to wait for.
func injected(pod *podView) bool { return hasVolume(pod.Spec.Volumes, TokenVolumeName) }

// grantPoll is how often awaitGrant reads the ServiceAccount again (from the informer: no
// apiserver call).
const grantPoll = 20 * time.Millisecond

// maxGrantWaiters bounds the reviews waiting for a grant at once. Each holds one of the server's
// in-flight slots (--max-inflight-reviews), shared with the ServiceAccount route, whose failure
// policy is Fail: a flood of Pod reviews, forged or real (a writer outage), naming pending
// ServiceAccounts must not take them all. Past it, a review decides at once.
const maxGrantWaiters = 64

// awaitGrant waits for the writer to grant sa, reading it again every grantPoll, for at most
// Config.GrantWait and half of what is left of the review's budget, and returns the last one
// read (the one before, when it is gone or unreadable now: decided on what was read). The writer
// grants a new ServiceAccount within about a second, in a burst too.
func (p *Plugin) awaitGrant(ctx context.Context, req *admission.Request, ns, name string, sa *corev1.ServiceAccount) *corev1.ServiceAccount {
	wait := p.Config.grantWait()
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	if wait <= 0 {
		return sa
	}
	if n := p.waiters.Add(1); n > maxGrantWaiters {
		p.waiters.Add(-1)
		if req.Log != nil {
			req.Log.Warn("not waiting for the ServiceAccount's grant: too many Pod reviews wait already", "serviceaccount", name, "waiting", maxGrantWaiters)
		}
		return sa
	}
	defer p.waiters.Add(-1)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(grantPoll)
	defer tick.Stop()
	for planned(sa) {
		select {
		case <-ctx.Done():
			return sa
		case <-deadline.C:
			return sa
		case <-tick.C:
		}
		cur, err := p.ServiceAccounts.Get(ctx, ns, name)
		if err != nil {
			return sa
		}
		sa = cur
	}
	return sa
}

// granted waits for the grant of sa, whose role ARN is only planned (awaitGrant), and returns the
// ServiceAccount to inject from: the granted one or, past the wait, the planned one when
// Config.MissingServiceAccount admits it (stillPlanned).
func (p *Plugin) granted(ctx context.Context, req *admission.Request, resp *admission.Response, ns, name string, sa *corev1.ServiceAccount) (*corev1.ServiceAccount, error) {
	cur := p.awaitGrant(ctx, req, ns, name, sa)
	if !planned(cur) {
		p.Metrics.grantWait(grantGranted)
		return cur, nil
	}
	return cur, p.stillPlanned(req, resp, cur)
}

// stillPlanned applies Config.MissingServiceAccount to a Pod whose ServiceAccount was not granted
// within the wait: deny (the Pod's controller retries), or admit it with the planned role and a
// warning.
func (p *Plugin) stillPlanned(req *admission.Request, resp *admission.Response, sa *corev1.ServiceAccount) error {
	if p.Config.MissingServiceAccount == MissingDeny {
		p.Metrics.grantWait(grantDenied)
		return admission.Deny(http.StatusServiceUnavailable,
			"ServiceAccount %s/%s is not in its IAM role yet (credential-webhook is still writing it), so AWS credentials cannot be injected; retry creating the Pod", sa.Namespace, sa.Name)
	}
	p.Metrics.grantWait(grantPlanned)
	if req.Log != nil {
		req.Log.Warn("admitting Pod with the planned role ARN: its ServiceAccount is not granted yet", "serviceaccount", sa.Name, "role", sa.Annotations[annotations.AWSRoleARN])
	}
	resp.Warn("ServiceAccount %s/%s was not in its IAM role yet: the Pod gets the planned %s, and if credential-webhook puts the ServiceAccount in another role, the Pod must be created again to get credentials",
		sa.Namespace, sa.Name, sa.Annotations[annotations.AWSRoleARN])
	return nil
}

// missing applies Config.MissingServiceAccount when the ServiceAccount cannot be read. A Pod is
// usually created moments after its ServiceAccount, and the informer may not have seen it yet.
func (p *Plugin) missing(req *admission.Request, resp *admission.Response, ns, name string, err error) error {
	notFound := apierrors.IsNotFound(err)
	p.Metrics.unreadable(notFound, p.Config.MissingServiceAccount)
	if p.Config.MissingServiceAccount == MissingDeny {
		if notFound {
			return admission.Deny(http.StatusNotFound,
				"ServiceAccount %s/%s not found yet, so AWS credentials cannot be injected; retry creating the Pod", ns, name)
		}
		return admission.Deny(http.StatusServiceUnavailable,
			"cannot read ServiceAccount %s/%s to inject AWS credentials (%v); retry creating the Pod", ns, name, err)
	}
	what := "not found"
	if !notFound {
		what = fmt.Sprintf("unreadable (%v)", err)
	}
	if req.Log != nil {
		req.Log.Warn("admitting Pod without AWS credentials", "serviceaccount", name, "error", err)
	}
	resp.Warn("ServiceAccount %s/%s %s: Pod admitted without AWS credentials injection", ns, name, what)
	return nil
}
