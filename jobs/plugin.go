// Package jobs is the Job admission plugin: on CREATE it suspends a KubeStash Job whose
// ServiceAccount has no working cloud identity yet, so its backup does not start (and fail)
// before the credentials work. What to hold, why, and the patch are package hold's; this package
// decodes the Job, looks up its ServiceAccount and renders hold's decision into the response.
// The sweeper (package sweeper) releases the Job later; on UPDATE, a resume by anyone else is
// turned back (hold.KeepHeld), so the one who holds releases.
package jobs

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	// One validating pass, case-sensitive like the apiserver's decoder; several times faster
	// than encoding/json-based decoders on a 5 KB Job (see admission/review.go).
	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/hold"
)

// ServiceAccounts reads a ServiceAccount (an informer cache with a direct-read fallback in
// production). A missing one is reported with a Kubernetes NotFound error.
type ServiceAccounts interface {
	Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// Plugin is the Job CREATE admission plugin. It makes no cloud call and has no side effect, so
// dryRun needs no special case: the same patch is returned and the apiserver discards it.
type Plugin struct {
	ServiceAccounts ServiceAccounts
	// Ready may be nil: nothing is ever known ready, so every Job of a cloud ServiceAccount is
	// held until the sweeper has checked it.
	Ready hold.ReadyCache
	// Now defaults to time.Now.
	Now func() time.Time
	// Self lists the usernames this server acts as: its own release of a held Job passes.
	Self map[string]bool
}

// NewPlugin returns a Plugin reading ServiceAccounts from sas; ready may be nil.
func NewPlugin(sas ServiceAccounts, ready hold.ReadyCache) *Plugin {
	return &Plugin{ServiceAccounts: sas, Ready: ready, Now: time.Now}
}

// Name implements admission.Plugin.
func (p *Plugin) Name() string { return "job-hold" }

// Admit implements admission.Plugin.
func (p *Plugin) Admit(ctx context.Context, req *admission.Request, resp *admission.Response) error {
	if req.Operation == admissionv1.Update {
		return p.admitUpdate(req, resp)
	}
	if req.Operation != "" && req.Operation != admissionv1.Create {
		return nil
	}
	job, err := p.job(req)
	if err != nil {
		return admission.Deny(http.StatusBadRequest, "decode Job: %v", err)
	}
	if job.Namespace == "" {
		job.Namespace = req.Namespace
	}
	if ok, _ := hold.Screen(job); !ok {
		return nil
	}
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	saName := hold.ServiceAccountName(&job.Spec.Template.Spec)
	sa, err := p.ServiceAccounts.Get(ctx, job.Namespace, saName)
	var d hold.Decision
	switch {
	case apierrors.IsNotFound(err):
		d = hold.Decide(job, nil, false, now())
	case err != nil:
		d = hold.Unreadable(job, err, now())
	default:
		d = hold.Decide(job, sa, p.Ready != nil && p.Ready.Ready(job.Namespace, saName), now())
	}
	if !d.Hold {
		return nil
	}
	hold.Patch(resp.Patch, job.Annotations, d)
	resp.Warn("%s", hold.Warning(d))
	// On the review's one log line rather than a line of its own (a held Job is the common case
	// on this route).
	resp.LogAttrs = append(resp.LogAttrs, slog.String("serviceaccount", saName),
		slog.String("holdReason", d.Reason), slog.String("holdDetail", d.Detail))
	return nil
}

// admitUpdate keeps a held Job held when someone else resumes it (hold.KeepHeld): the KubeStash
// operator resumes Jobs by itself once the role ARN is on the ServiceAccount, which admission
// writes before the trust policy works. The webhook sees UPDATEs of Jobs carrying our
// annotations (matchConditions), so this costs nothing for other Jobs.
func (p *Plugin) admitUpdate(req *admission.Request, resp *admission.Response) error {
	if p.Self[req.UserInfo.Username] || len(req.OldObject) == 0 {
		return nil
	}
	old, err := decodeJob(req.OldObject)
	if err != nil {
		return admission.Deny(http.StatusBadRequest, "decode old Job: %v", err)
	}
	cur, err := p.job(req)
	if err != nil {
		return admission.Deny(http.StatusBadRequest, "decode Job: %v", err)
	}
	if !hold.KeepHeld(old, cur) {
		return nil
	}
	resp.Patch.Set("/spec/suspend", true)
	resp.Warn("%s", hold.KeepHeldWarning(old))
	if req.Log != nil {
		req.Log.Info("kept a held Job suspended: only this server releases what it holds", "user", req.UserInfo.Username)
	}
	return nil
}

// View is the part of a Job the Job route's plugins read: what hold.Decide reads, and the pod
// template's labels and annotations (Azure identity binding). Decoding a whole batchv1.Job (with
// its Pod template's resources, probes and managedFields) costs several times more for nothing.
type View struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Suspend *bool `json:"suspend"`
		// ManagedBy: hold.ManagedElsewhere reads it (a Job another controller owns is never held).
		ManagedBy *string `json:"managedBy"`
		Template  struct {
			// Metadata is nil when the template has none (a patch then creates it).
			Metadata *struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Spec struct {
				ServiceAccountName       string `json:"serviceAccountName"`
				DeprecatedServiceAccount string `json:"serviceAccount"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// ObjectDecoder implements admission.ObjectReader: the Job's View is read while the server
// reads the review, in one pass over the object, for this plugin and the other Job plugins
// (Azure's) that read it.
func (p *Plugin) ObjectDecoder() admission.ObjectDecoder { return ViewDecoder }

// ViewDecoder reads a Job's View (admission.ObjectDecoder); Request.Decoded(ViewDecoder) is the
// *View of the review's Job when the server read it.
var ViewDecoder admission.ObjectDecoder = viewDecoder{}

type viewDecoder struct{}

func (viewDecoder) DecodeObject(dec *jsontext.Decoder) (any, error) {
	var v View
	if err := json.UnmarshalDecode(dec, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// job is the review's Job as ViewDecoder read it, or decoded from the raw object.
func (p *Plugin) job(req *admission.Request) (*batchv1.Job, error) {
	if v, ok := req.Decoded(ViewDecoder); ok {
		if view, ok := v.(*View); ok {
			return view.job(), nil
		}
	}
	return decodeJob(req.Object)
}

// jobView is the part of a Job that hold.Decide reads: decodeJob reads only it, so a Job is
// refused for nothing this plugin does not read (View, a superset, may refuse more; the server
// then falls back to decodeJob, see admission.ObjectDecoder).
type jobView struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Suspend   *bool   `json:"suspend"`
		ManagedBy *string `json:"managedBy"`
		Template  struct {
			Spec struct {
				ServiceAccountName       string `json:"serviceAccountName"`
				DeprecatedServiceAccount string `json:"serviceAccount"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// decodeJob reads raw (left untouched) into a skeleton Job holding what hold.Decide reads. The
// decoder is case-sensitive like the apiserver's, so a key the apiserver would drop is ignored.
func decodeJob(raw []byte) (*batchv1.Job, error) {
	var v jobView
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return skeletonJob(v.Metadata.Namespace, v.Metadata.Labels, v.Metadata.Annotations, v.Spec.Suspend, v.Spec.ManagedBy,
		v.Spec.Template.Spec.ServiceAccountName, v.Spec.Template.Spec.DeprecatedServiceAccount), nil
}

func (v *View) job() *batchv1.Job {
	return skeletonJob(v.Metadata.Namespace, v.Metadata.Labels, v.Metadata.Annotations, v.Spec.Suspend, v.Spec.ManagedBy,
		v.Spec.Template.Spec.ServiceAccountName, v.Spec.Template.Spec.DeprecatedServiceAccount)
}

func skeletonJob(namespace string, labels, annotations map[string]string, suspend *bool, managedBy *string, sa, deprecatedSA string) *batchv1.Job {
	job := &batchv1.Job{}
	job.Namespace, job.Labels, job.Annotations = namespace, labels, annotations
	job.Spec.Suspend, job.Spec.ManagedBy = suspend, managedBy
	job.Spec.Template.Spec.ServiceAccountName, job.Spec.Template.Spec.DeprecatedServiceAccount = sa, deprecatedSA
	return job
}
