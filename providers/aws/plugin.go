package aws

import (
	"context"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/prometheus/client_golang/prometheus"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// AssignerAPI is what the ServiceAccount plugin needs of an Assigner.
type AssignerAPI interface {
	Assign(ctx context.Context, seed RoleARN, namespace, name string) (Assignment, error)
	Plan(ctx context.Context, seed RoleARN, namespace, name string) (roleARN string, known bool, err error)
	Reserve(ctx context.Context, seed RoleARN, namespace, name string) (roleARN string, known bool, err error)
}

// ClaimOf is the claim a ServiceAccount's annotations make on AWS: a digest of its canonical
// seed role ARN. ok is false when there is no valid seed annotation.
func ClaimOf(ann map[string]string) (markers.Claim, bool) {
	seed, err := ParseRoleARN(ann[annotations.SeedRole])
	if err != nil {
		return markers.Claim{}, false
	}
	return SeedClaim(seed), true
}

// SeedClaim is the claim on seed: a digest of its canonical ARN.
func SeedClaim(seed RoleARN) markers.Claim { return markers.For(markers.AWS, seed.String()) }

// EventSink records a Kubernetes Event about a ServiceAccount (asynchronously; never on the
// critical path of a review).
type EventSink interface {
	Warning(namespace, name, reason, message string)
}

// Plugin plans the derived role of ServiceAccounts carrying the seed-role annotation: it patches
// in eks.amazonaws.com/role-arn with the planned role and adds the AWS claim to our pending
// marker. It writes nothing to IAM unless the review is Authenticated (a client certificate):
// a review body proves nothing, so the write follows once the ServiceAccount is seen persisted
// (the writer, sweeper/writer.go). Cloud failures never deny: the ServiceAccount is admitted with a warning.
type Plugin struct {
	Assigner AssignerAPI
	Seeds    Allowlist
	Access   access.Policy
	Metrics  *Metrics
	Events   EventSink // optional
}

// Metrics counts assignments by outcome.
type Metrics struct {
	Assignments *prometheus.CounterVec
}

// NewMetrics registers the AWS admission metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{Assignments: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credential_webhook_aws_assignments_total",
		Help: "ServiceAccount assignments to derived roles at admission, by outcome.",
	}, []string{"outcome"})}
	reg.MustRegister(m.Assignments)
	return m
}

func (p *Plugin) count(outcome string) {
	if p.Metrics != nil {
		p.Metrics.Assignments.WithLabelValues(outcome).Inc()
	}
}

func (*Plugin) Name() string { return "aws-seed-role" }

const annotationsPath = "/metadata/annotations"

// Action is what a ServiceAccount review asks of the AWS side.
type Action int

const (
	ActionNone      Action = iota // no seed annotation
	ActionUnchanged               // UPDATE that changes nothing relevant: no IAM call
	ActionAssign
)

// Decide is the pure decision for a ServiceAccount review.
func Decide(op admissionv1.Operation, cur, old map[string]string) Action {
	seed := cur[annotations.SeedRole]
	if seed == "" {
		return ActionNone
	}
	if op == admissionv1.Update && old[annotations.SeedRole] == seed && !markers.PendingOn(cur[annotations.Pending], markers.AWS) &&
		IsDerivedFrom(cur[annotations.AWSRoleARN], seed) && granted(cur) {
		return ActionUnchanged
	}
	return ActionAssign
}

// granted reports whether the granted marker covers the current seed (the UID is the object's
// own on UPDATE; garbage collection checks it against the live object).
func granted(cur map[string]string) bool {
	c, ok := ClaimOf(cur)
	return ok && markers.IsGranted(cur[annotations.Granted], c)
}

func (p *Plugin) Admit(ctx context.Context, req *admission.Request, resp *admission.Response) error {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return nil
	}
	cur, err := req.Annotations()
	if err != nil {
		return admission.Deny(400, "%v", err)
	}
	var old map[string]string
	if req.Operation == admissionv1.Update {
		if old, err = req.OldAnnotations(); err != nil {
			return admission.Deny(400, "%v", err)
		}
	}
	switch Decide(req.Operation, cur, old) {
	case ActionNone:
		return nil
	case ActionUnchanged:
		p.count("unchanged")
		return nil
	}
	raw := cur[annotations.SeedRole]
	seed, err := ParseRoleARN(raw)
	if err != nil {
		p.count("invalid")
		resp.Warn("%s ignored: %v", annotations.SeedRole, err)
		req.Log.Warn("invalid seed role annotation", "error", err)
		return nil
	}
	if !p.Seeds.Allows(seed.String()) {
		p.count("not_allowed")
		resp.Warn("seed role %s is not allowed on this cluster (--aws-seed-roles); no IAM role was assigned", seed)
		req.Log.Warn("seed role not allowed", "seed", seed.String(), "user", req.UserInfo.Username)
		return nil
	}
	if err := p.Access.Check(req.Namespace, req.UserInfo.Username, req.UserInfo.Groups); err != nil {
		p.count("not_allowed")
		resp.Warn("no IAM role was assigned: %v", err)
		req.Log.Warn("requester not allowed", "error", err, "user", req.UserInfo.Username)
		return nil
	}
	name := req.Name
	if name == "" { // generateName on CREATE: the name is not known yet
		p.count("invalid")
		resp.Warn("no IAM role was assigned: ServiceAccounts with generateName cannot be assigned at admission")
		return nil
	}

	claim := SeedClaim(seed)
	switch {
	case req.DryRun:
		// No IAM write and no reservation; say which role would be used when reads can tell.
		p.count("dry_run")
		arn, known, err := p.Assigner.Plan(ctx, seed, req.Namespace, name)
		switch {
		case err != nil:
			resp.Warn("dry run: no IAM change was made; the role cannot be predicted: %v", err)
		case known:
			resp.Patch.SetMapEntry(annotationsPath, cur, annotations.AWSRoleARN, arn)
		default:
			resp.Patch.SetMapEntry(annotationsPath, cur, annotations.AWSRoleARN, arn)
			resp.Warn("dry run: no IAM change was made; %s is where the ServiceAccount would be added", arn)
		}
		return nil
	case req.Authenticated:
		// The apiserver itself sent this review (client certificate): writing now is safe, and
		// the credentials work a little sooner. The claim stays pending until the persisted
		// object is bound (its UID recorded).
		a, err := p.Assigner.Assign(ctx, seed, req.Namespace, name)
		if err == nil {
			outcome := "assigned"
			if a.AlreadyListed {
				outcome = "already_listed"
			} else if a.Created {
				outcome = "created_role"
			}
			p.count(outcome)
			resp.Patch.SetMapEntry(annotationsPath, cur, annotations.AWSRoleARN, a.RoleARN)
			resp.Defer(claim)
			req.Log.Info("assigned derived role at admission (authenticated review)", "role", a.RoleARN, "outcome", outcome)
			return nil
		}
		p.failed(req, resp, cur, seed, claim, err)
		return nil
	}
	arn, _, err := p.Assigner.Reserve(ctx, seed, req.Namespace, name)
	if err != nil {
		p.failed(req, resp, cur, seed, claim, err)
		return nil
	}
	p.count("planned")
	resp.Patch.SetMapEntry(annotationsPath, cur, annotations.AWSRoleARN, arn)
	resp.Defer(claim)
	req.Log.Info("planned derived role; IAM is written once the ServiceAccount is persisted", "role", arn)
	return nil
}

// failed answers a plan or assignment that did not work out: permanent refusals get a warning
// and no claim; anything else (role limit, IAM slow or down) keeps the claim pending for the
// writer and the sweeper.
func (p *Plugin) failed(req *admission.Request, resp *admission.Response, cur map[string]string, seed RoleARN, claim markers.Claim, err error) {
	name := req.Name
	switch {
	case errors.Is(err, ErrRoleLimitReached):
		p.count("role_limit")
		resp.Warn("no IAM role was assigned: seed %s already has its maximum number of derived roles (--role-creation-limit); the sweeper retries when space frees up", seed)
		resp.Defer(claim)
		if p.Events != nil {
			p.Events.Warning(req.Namespace, name, "RoleLimitReached", fmt.Sprintf("seed %s has reached --role-creation-limit derived roles", seed))
		}
		req.Log.Warn("role creation limit reached", "seed", seed.String())
	case Permanent(err):
		// Permanent for this object: retrying later cannot help, so no claim.
		p.count("refused")
		resp.Warn("no IAM role was assigned: %v", err)
		req.Log.Warn("assignment refused", "error", err)
	default:
		p.count("deferred")
		resp.Warn("IAM role assignment did not finish in time (%v); the ServiceAccount was admitted and credential-webhook will finish it shortly", err)
		resp.Defer(claim)
		req.Log.Warn("assignment deferred to the sweeper", "error", err)
	}
}
