package pods

import (
	"context"
	"fmt"
	"net/http"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
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
