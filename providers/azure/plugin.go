package azure

import (
	"context"
	"errors"
	"strings"

	"github.com/go-json-experiment/json"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/markers"
)

// Looker resolves a managed identity (the cached Resolver).
type Looker interface {
	Lookup(ctx context.Context, id Identity) (Resolved, error)
}

// Binder adds a ServiceAccount to the use-mi-<clientID> binding.
type Binder interface {
	EnsureBinding(ctx context.Context, clientID, namespace, name string) error
}

// ServiceAccountPlugin gives ServiceAccounts that name a managed identity its client and tenant
// IDs (an ARM read) and records the claim in our pending marker; the ServiceAccount is added to
// the identity's use-mi-<clientID> binding once it is seen persisted (the writer, sweeper/writer.go), or at
// admission when the review is Authenticated. Cloud failures admit the ServiceAccount with a
// warning; the claim stays pending and the writer or the sweeper finishes it.
type ServiceAccountPlugin struct {
	Resolver Looker
	Binder   Binder // nil: no Kubernetes API (local runs), IDs only
	Scopes   Scopes
	Access   access.Policy
}

func (*ServiceAccountPlugin) Name() string { return "azure-identity" }

const annotationsPath = "/metadata/annotations"

// Unchanged reports an UPDATE that changes nothing relevant: same identity annotations, IDs
// already present, no Azure claim pending (an AWS one may be), the claim granted. It makes no
// ARM or RBAC call.
func Unchanged(op admissionv1.Operation, cur, old map[string]string) bool {
	if op != admissionv1.Update || markers.PendingOn(cur[annotations.Pending], markers.Azure) ||
		cur[annotations.AzureClientID] == "" || cur[annotations.AzureTenantID] == "" {
		return false
	}
	for _, k := range []string{annotations.AzureMIName, annotations.AzureRGName, annotations.AzureSubscriptionID, annotations.AzureClientID} {
		if cur[k] != old[k] {
			return false
		}
	}
	// Only a claim granted earlier counts as done (the UID is the object's own on UPDATE).
	c, ok := ClaimOfAnnotations(cur)
	return ok && markers.IsGranted(cur[annotations.Granted], c)
}

func (p *ServiceAccountPlugin) Admit(ctx context.Context, req *admission.Request, resp *admission.Response) error {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return nil
	}
	cur, err := req.Annotations()
	if err != nil {
		return admission.Deny(400, "%v", err)
	}
	id, ok, err := ParseIdentity(cur)
	if !ok {
		return nil
	}
	if err != nil {
		resp.Warn("no Azure identity was assigned: %v", err)
		return nil
	}
	var old map[string]string
	if req.Operation == admissionv1.Update {
		if old, err = req.OldAnnotations(); err != nil {
			return admission.Deny(400, "%v", err)
		}
		if Unchanged(req.Operation, cur, old) {
			return nil
		}
	}
	if !p.Scopes.Allows(id) {
		resp.Warn("managed identity %s is outside the allowed scopes (--azure-allowed-scopes); no Azure identity was assigned", id.ResourceID())
		req.Log.Warn("azure identity not allowed", "identity", id.ResourceID(), "user", req.UserInfo.Username)
		return nil
	}
	if err := p.Access.Check(req.Namespace, req.UserInfo.Username, req.UserInfo.Groups); err != nil {
		resp.Warn("no Azure identity was assigned: %v", err)
		req.Log.Warn("requester not allowed", "error", err)
		return nil
	}
	if req.Name == "" {
		resp.Warn("no Azure identity was assigned: ServiceAccounts with generateName cannot be assigned at admission")
		return nil
	}
	claim := ClaimOf(id)
	r, err := p.Resolver.Lookup(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			resp.Warn("managed identity %s does not exist; no Azure identity was assigned", id.ResourceID())
			return nil
		}
		resp.Warn("Azure identity lookup did not finish (%v); the ServiceAccount was admitted and credential-webhook will finish it shortly", err)
		if !req.DryRun {
			resp.Defer(claim)
		}
		req.Log.Warn("azure lookup deferred", "error", err)
		return nil
	}
	d := DecideServiceAccount(cur, r)
	d.Apply(resp.Patch, cur)
	resp.Warnings = append(resp.Warnings, d.Warnings...)
	if req.DryRun {
		return nil // no RBAC write, no claim
	}
	// The binding is written once the ServiceAccount is seen persisted (a review body proves
	// nothing about who sent it), unless the apiserver authenticated itself with a client
	// certificate. Either way the claim stays pending until the persisted object is bound.
	resp.Defer(claim)
	if req.Authenticated && p.Binder != nil {
		if err := p.Binder.EnsureBinding(ctx, r.ClientID, req.Namespace, req.Name); err != nil {
			resp.Warn("adding the ServiceAccount to %s did not finish (%v); credential-webhook will finish it shortly", RBACNamePrefix+r.ClientID, err)
			req.Log.Warn("identity binding deferred", "error", err)
		}
	}
	return nil
}

// ClaimOf is the claim a ServiceAccount naming identity id makes on Azure: a digest of the
// identity's resource ID (lower case: Azure resource IDs compare case-insensitively).
func ClaimOf(id Identity) markers.Claim {
	return markers.For(markers.Azure, strings.ToLower(id.ResourceID()))
}

// ClaimOfAnnotations is ClaimOf for a ServiceAccount's annotations; ok is false when they name
// no valid identity.
func ClaimOfAnnotations(ann map[string]string) (markers.Claim, bool) {
	id, ok, err := ParseIdentity(ann)
	if !ok || err != nil {
		return markers.Claim{}, false
	}
	return ClaimOf(id), true
}

// ServiceAccountGetter reads a ServiceAccount (informer cache with a direct-read fallback).
type ServiceAccountGetter interface {
	Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// JobPlugin labels the pod template of Jobs that use a managed identity (through their own
// annotations or their ServiceAccount's) for AKS identity binding. It never overwrites.
type JobPlugin struct {
	ServiceAccounts ServiceAccountGetter // nil: only the Job's own annotations count
}

func (*JobPlugin) Name() string { return "azure-job-template" }

type jobView struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Template struct {
			Metadata *struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Spec struct {
				ServiceAccountName string `json:"serviceAccountName"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// ObjectDecoder implements admission.ObjectReader: the Job route reads one view of the Job for
// all its plugins (jobs.View, a superset of jobView) while it reads the review.
func (*JobPlugin) ObjectDecoder() admission.ObjectDecoder { return jobs.ViewDecoder }

// readJob is the review's Job as the server read it (jobs.View holds every field of jobView,
// with the same types), or decoded from the raw object.
func readJob(req *admission.Request) (*jobView, error) {
	if v, ok := req.Decoded(jobs.ViewDecoder); ok {
		if view, ok := v.(*jobs.View); ok {
			job := &jobView{}
			job.Metadata.Annotations = view.Metadata.Annotations
			job.Spec.Template.Metadata = view.Spec.Template.Metadata
			job.Spec.Template.Spec.ServiceAccountName = view.Spec.Template.Spec.ServiceAccountName
			return job, nil
		}
	}
	var job jobView
	if err := json.Unmarshal(req.Object, &job); err != nil {
		return nil, err
	}
	return &job, nil
}

func (p *JobPlugin) Admit(ctx context.Context, req *admission.Request, resp *admission.Response) error {
	if req.Operation != admissionv1.Create {
		return nil
	}
	job, err := readJob(req)
	if err != nil {
		return admission.Deny(400, "Job is not valid JSON: %v", err)
	}
	uses := job.Metadata.Annotations[annotations.AzureMIName] != ""
	if !uses && p.ServiceAccounts != nil {
		sa := job.Spec.Template.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		obj, err := p.ServiceAccounts.Get(ctx, req.Namespace, sa)
		switch {
		case err == nil:
			uses = obj.Annotations[annotations.AzureMIName] != ""
		case apierrors.IsNotFound(err):
		default:
			req.Log.Warn("reading the Job's ServiceAccount failed", "error", err)
		}
	}
	if !uses {
		return nil
	}
	var labels, annots map[string]string
	meta := job.Spec.Template.Metadata
	if meta != nil {
		labels, annots = meta.Labels, meta.Annotations
	}
	d := DecideJobTemplate(labels, annots)
	d.Apply(resp.Patch, meta != nil, labels, annots)
	resp.Warnings = append(resp.Warnings, d.Warnings...)
	return nil
}
