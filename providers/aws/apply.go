package aws

import (
	"context"
	"fmt"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

// write is one IAM write to a derived role, as a value: the pure functions (policyDiff,
// deletionWrites) return lists of them and the applier sends them. Retries of throttled and
// failed attempts, attempt timeouts and call metrics live in the IAM client (NewIAMClient,
// CallMetrics), below this.
type write interface {
	// action names the call in errors: "iam:AttachRolePolicy <role> <policy ARN>".
	action() string
	send(ctx context.Context, api IAMAPI) error
}

type createRole struct {
	in *iam.CreateRoleInput
	id *string // receives the new RoleId: the cache tells a re-created role by it
}

type updateTrust struct{ role, document string }

type putBoundary struct{ role, boundary string }

type attachPolicy struct{ role, policy string }

type detachPolicy struct{ role, policy string }

type putInline struct{ role, policy, document string }

type deleteInline struct{ role, policy string }

// updateRole sets the description, and the max session duration unless it is 0 (IAM default).
type updateRole struct {
	role        string
	description string
	maxSession  int32
}

type tagRole struct {
	role string
	tags map[string]string
}

type untagRole struct {
	role string
	keys []string // sorted
}

type deleteRole struct{ role string }

func (w createRole) action() string   { return "iam:CreateRole " + aws.ToString(w.in.RoleName) }
func (w updateTrust) action() string  { return "iam:UpdateAssumeRolePolicy " + w.role }
func (w putBoundary) action() string  { return "iam:PutRolePermissionsBoundary " + w.role }
func (w attachPolicy) action() string { return "iam:AttachRolePolicy " + w.role + " " + w.policy }
func (w detachPolicy) action() string { return "iam:DetachRolePolicy " + w.role + " " + w.policy }
func (w putInline) action() string    { return "iam:PutRolePolicy " + w.role + " " + w.policy }
func (w deleteInline) action() string { return "iam:DeleteRolePolicy " + w.role + " " + w.policy }
func (w updateRole) action() string   { return "iam:UpdateRole " + w.role }
func (w tagRole) action() string      { return "iam:TagRole " + w.role }
func (w untagRole) action() string    { return "iam:UntagRole " + w.role }
func (w deleteRole) action() string   { return "iam:DeleteRole " + w.role }

func (w createRole) send(ctx context.Context, api IAMAPI) error {
	out, err := api.CreateRole(ctx, w.in)
	if err == nil && w.id != nil && out.Role != nil {
		*w.id = aws.ToString(out.Role.RoleId)
	}
	return err
}

func (w updateTrust) send(ctx context.Context, api IAMAPI) error {
	_, err := api.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String(w.role), PolicyDocument: aws.String(w.document)})
	return err
}

func (w putBoundary) send(ctx context.Context, api IAMAPI) error {
	_, err := api.PutRolePermissionsBoundary(ctx, &iam.PutRolePermissionsBoundaryInput{RoleName: aws.String(w.role), PermissionsBoundary: aws.String(w.boundary)})
	return err
}

func (w attachPolicy) send(ctx context.Context, api IAMAPI) error {
	_, err := api.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String(w.role), PolicyArn: aws.String(w.policy)})
	return err
}

func (w detachPolicy) send(ctx context.Context, api IAMAPI) error {
	_, err := api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: aws.String(w.role), PolicyArn: aws.String(w.policy)})
	return err
}

func (w putInline) send(ctx context.Context, api IAMAPI) error {
	_, err := api.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(w.role), PolicyName: aws.String(w.policy), PolicyDocument: aws.String(w.document)})
	return err
}

func (w deleteInline) send(ctx context.Context, api IAMAPI) error {
	_, err := api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: aws.String(w.role), PolicyName: aws.String(w.policy)})
	return err
}

func (w updateRole) send(ctx context.Context, api IAMAPI) error {
	in := &iam.UpdateRoleInput{RoleName: aws.String(w.role), Description: aws.String(w.description)}
	if w.maxSession != 0 {
		in.MaxSessionDuration = aws.Int32(w.maxSession)
	}
	_, err := api.UpdateRole(ctx, in)
	return err
}

func (w tagRole) send(ctx context.Context, api IAMAPI) error {
	_, err := api.TagRole(ctx, &iam.TagRoleInput{RoleName: aws.String(w.role), Tags: tagList(w.tags)})
	return err
}

func (w untagRole) send(ctx context.Context, api IAMAPI) error {
	_, err := api.UntagRole(ctx, &iam.UntagRoleInput{RoleName: aws.String(w.role), TagKeys: w.keys})
	return err
}

func (w deleteRole) send(ctx context.Context, api IAMAPI) error {
	_, err := api.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: aws.String(w.role)})
	return err
}

// applier is the one place IAM writes are sent from. Before the first write of a session it
// calls before (the generation bump, see Locker), so no write ever happens outside the protocol.
// It is safe for concurrent use: a lock session writes the roles it touches in parallel.
type applier struct {
	api    IAMAPI
	before func(context.Context) error

	mu     sync.Mutex // serialises before and counts writes
	writes int        // sent so far, failed ones included
}

// admit runs before and counts the write about to be sent.
func (w *applier) admit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.before(ctx); err != nil {
		return err
	}
	w.writes++
	return nil
}

// sent is how many writes were sent so far.
func (w *applier) sent() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// apply sends ws in order and stops at the first failure, which it returns wrapped with the call
// that failed (the API error stays reachable with errors.As: isDefinite, isNoSuchEntity and
// trustQuotaError look at it).
func (w *applier) apply(ctx context.Context, ws ...write) error {
	for _, op := range ws {
		if err := w.admit(ctx); err != nil {
			return err
		}
		if err := op.send(ctx, w.api); err != nil {
			return fmt.Errorf("%s: %w", op.action(), err)
		}
	}
	return nil
}

// applyUnordered sends ws at once when their order does not matter, and returns the first
// failure in ws's order. It is for the policies a new role gets after CreateRole (which set its
// boundary already): attaching managed policies and putting inline ones do not depend on each
// other, and sending them one after the other cost a whole IAM round trip each. A list with a
// write whose order matters (a boundary, which must come first) is sent in order (apply).
func (w *applier) applyUnordered(ctx context.Context, ws ...write) error {
	if len(ws) < 2 || !allOrderFree(ws) {
		return w.apply(ctx, ws...)
	}
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, op := range ws {
		wg.Go(func() { errs[i] = w.apply(ctx, op) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func allOrderFree(ws []write) bool {
	for _, op := range ws {
		if !orderFree(op) {
			return false
		}
	}
	return true
}

// orderFree reports whether op may be sent alongside the other writes to a role that already
// carries its boundary.
func orderFree(op write) bool {
	switch op.(type) {
	case attachPolicy, putInline:
		return true
	}
	return false
}
