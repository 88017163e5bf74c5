package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
)

// Adoption: taking over the use-mi-<client ID> ClusterRoles and ClusterRoleBindings that carry no
// managed label, such as those KubeStash's azure-credential-manager created before this server
// replaced it. The server already binds ServiceAccounts through an unlabelled binding whose role
// is exact, but never prunes it (RemoveSubjects and the Collector touch only labelled bindings),
// so its subjects would stay for good. The server cannot label one itself: its RBAC has no update
// on ClusterRoles nor patch on bindings, and its self policy (selfpolicy.yaml) refuses any change
// of a binding's labels. Adoption therefore runs as a cluster administrator (roles adopt-azure),
// and only labels objects that are exactly what this server would have made.

// AdoptOptions says what Adopt does.
type AdoptOptions struct {
	// ClientID limits adoption to use-mi-<ClientID>. Empty: every use-mi-<GUID> object.
	ClientID string
	// Apply labels the faithful objects. Without it Adopt reads only (a dry run).
	Apply bool
}

// AdoptVerdict is the outcome for one identity's pair of objects.
type AdoptVerdict string

const (
	// AdoptFaithful: what this server would have made, not labelled yet (dry run).
	AdoptFaithful AdoptVerdict = "faithful"
	// AdoptAdopted: faithful, labelled now.
	AdoptAdopted AdoptVerdict = "adopted"
	// AdoptOurs: labelled already.
	AdoptOurs AdoptVerdict = "ours"
	// AdoptRefused: not faithful (Reasons lists why); nothing was written.
	AdoptRefused AdoptVerdict = "REFUSED"
	// AdoptFailed: a write failed (Reasons has the error).
	AdoptFailed AdoptVerdict = "FAILED"
)

// AdoptResult is what Adopt found, or did, for one identity.
type AdoptResult struct {
	Name     string // use-mi-<client ID>
	Subjects int    // subjects of the binding
	Verdict  AdoptVerdict
	Reasons  []string
	Notes    []string
}

// Failed reports whether the identity's objects were refused or could not be labelled.
func (r AdoptResult) Failed() bool { return r.Verdict == AdoptRefused || r.Verdict == AdoptFailed }

// adoptionPlan is planAdoption's decision for one identity.
type adoptionPlan struct {
	ours         bool // both objects (those that exist) carry our label already
	reasons      []string
	notes        []string
	labelRole    bool
	labelBinding bool
}

// planAdoption decides whether the ClusterRole and ClusterRoleBinding named name (either may be
// nil: missing) are exactly what EnsureBinding makes: the role holds exactly the one rule
// (roleExact) and no label that aggregates it into other roles, the binding refers to the role
// of the same name, and every subject is a ServiceAccount with a valid namespace and name. Only
// the missing labels are written; a missing role is created, exact, by the server when it next
// binds a ServiceAccount of that identity.
func planAdoption(name string, role *rbacv1.ClusterRole, binding *rbacv1.ClusterRoleBinding) adoptionPlan {
	var p adoptionPlan
	clientID, ok := strings.CutPrefix(name, RBACNamePrefix)
	if !ok || !IsGUID(clientID) || clientID != strings.ToLower(clientID) {
		p.reasons = append(p.reasons, fmt.Sprintf("%s is not named use-mi-<client ID> with a lower-case GUID", quote(name)))
		return p
	}
	if role != nil {
		if !roleExact(role, clientID) {
			p.reasons = append(p.reasons, fmt.Sprintf("ClusterRole %s is not exactly one rule granting %s on %s/%s (it has %d rules%s)",
				name, UseManagedIdentityVerb, IdentityBindingAPIGroup, clientID, len(role.Rules), aggregationNote(role)))
		}
		for _, k := range slices.Sorted(maps.Keys(role.Labels)) {
			if strings.Contains(k, "aggregate-to-") {
				p.reasons = append(p.reasons, fmt.Sprintf("ClusterRole %s carries label %s, which adds its rule to other ClusterRoles", name, k))
			}
		}
		p.labelRole = !isOurs(role)
	} else {
		p.notes = append(p.notes, "no ClusterRole "+name+": the server creates the exact one when it next binds a ServiceAccount to this identity")
	}
	if binding != nil {
		if !roleRefOK(binding, name) {
			p.reasons = append(p.reasons, fmt.Sprintf("ClusterRoleBinding %s refers to %s %q, not ClusterRole %q", name, binding.RoleRef.Kind, binding.RoleRef.Name, name))
		}
		for _, s := range binding.Subjects {
			switch {
			case s.Kind != rbacv1.ServiceAccountKind || s.APIGroup != "":
				p.reasons = append(p.reasons, fmt.Sprintf("subject %s %s is not a ServiceAccount", s.Kind, quote(s.Name)))
			default:
				if err := validateSA(s.Namespace, s.Name); err != nil {
					p.reasons = append(p.reasons, "subject: "+err.Error())
				}
			}
		}
		p.labelBinding = !isOurs(binding)
	} else {
		p.notes = append(p.notes, "no ClusterRoleBinding "+name)
	}
	p.ours = len(p.reasons) == 0 && !p.labelRole && !p.labelBinding
	return p
}

func aggregationNote(role *rbacv1.ClusterRole) string {
	if role.AggregationRule != nil {
		return ", and an aggregationRule"
	}
	return ""
}

// Adopt looks at every use-mi-<GUID> ClusterRole and ClusterRoleBinding (or only
// use-mi-<opt.ClientID>), judges each pair (planAdoption) and, with opt.Apply, labels the
// faithful ones with annotations.ManagedLabel. Each label is a merge patch carrying the
// resourceVersion that was judged, so an object changed in between is not labelled (a Conflict,
// reported as FAILED: run again).
func Adopt(ctx context.Context, cs kube.Client, opt AdoptOptions) ([]AdoptResult, error) {
	roles := map[string]*rbacv1.ClusterRole{}
	bindings := map[string]*rbacv1.ClusterRoleBinding{}
	if opt.ClientID != "" {
		name, err := RBACName(opt.ClientID)
		if err != nil {
			return nil, err
		}
		if r, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); err == nil {
			roles[name] = r
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading ClusterRole %s: %w", name, err)
		}
		if b, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{}); err == nil {
			bindings[name] = b
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading ClusterRoleBinding %s: %w", name, err)
		}
		if len(roles)+len(bindings) == 0 {
			return nil, fmt.Errorf("neither a ClusterRole nor a ClusterRoleBinding %s exists", name)
		}
	} else {
		rl, err := cs.RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing ClusterRoles: %w", err)
		}
		for i := range rl.Items {
			if isRBACName(rl.Items[i].Name) {
				roles[rl.Items[i].Name] = &rl.Items[i]
			}
		}
		bl, err := cs.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing ClusterRoleBindings: %w", err)
		}
		for i := range bl.Items {
			if isRBACName(bl.Items[i].Name) {
				bindings[bl.Items[i].Name] = &bl.Items[i]
			}
		}
	}
	names := slices.Sorted(maps.Keys(roles))
	for n := range bindings {
		if _, ok := roles[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	out := make([]AdoptResult, 0, len(names))
	for _, name := range names {
		role, binding := roles[name], bindings[name]
		res := AdoptResult{Name: name}
		if binding != nil {
			res.Subjects = len(binding.Subjects)
		}
		p := planAdoption(name, role, binding)
		res.Notes = p.notes
		switch {
		case p.ours:
			res.Verdict = AdoptOurs
		case len(p.reasons) > 0:
			res.Verdict, res.Reasons = AdoptRefused, p.reasons
		case !opt.Apply:
			res.Verdict = AdoptFaithful
		default:
			res.Verdict = AdoptAdopted
			// The role first: a labelled binding to an unlabelled role is as good as before.
			if p.labelRole {
				if err := labelManaged(ctx, cs, "clusterroles", name, role.ResourceVersion); err != nil {
					res.Verdict, res.Reasons = AdoptFailed, []string{err.Error()}
					break
				}
			}
			if p.labelBinding {
				if err := labelManaged(ctx, cs, "clusterrolebindings", name, binding.ResourceVersion); err != nil {
					res.Verdict, res.Reasons = AdoptFailed, []string{err.Error()}
				}
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// isRBACName reports whether name is use-mi-<GUID>, in any case: planAdoption refuses the
// upper-case ones with a reason rather than leaving them out of the table.
func isRBACName(name string) bool {
	id, ok := strings.CutPrefix(name, RBACNamePrefix)
	return ok && IsGUID(id)
}

// labelManaged adds annotations.ManagedLabel to a ClusterRole or ClusterRoleBinding with a merge
// patch that fails (Conflict) unless the object is still at resourceVersion.
func labelManaged(ctx context.Context, cs kube.Client, resource, name, resourceVersion string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": resourceVersion,
		"labels":          managedLabels(),
	}})
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	switch resource {
	case "clusterroles":
		_, err = cs.RbacV1().ClusterRoles().Patch(ctx, name, types.MergePatchType, patch, opts)
	default:
		_, err = cs.RbacV1().ClusterRoleBindings().Patch(ctx, name, types.MergePatchType, patch, opts)
	}
	if err != nil {
		return fmt.Errorf("labelling %s %s %s=true: %w", resource, name, annotations.ManagedLabel, err)
	}
	return nil
}

// WriteAdoptTable prints Adopt's results, one line per identity and one more per further reason
// or note, for the roles adopt-azure subcommand.
func WriteAdoptTable(w io.Writer, results []AdoptResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSUBJECTS\tVERDICT\tREASONS")
	for _, r := range results {
		lines := slices.Clone(r.Reasons)
		for _, n := range r.Notes {
			lines = append(lines, "note: "+n)
		}
		first := "-"
		if len(lines) > 0 {
			first, lines = lines[0], lines[1:]
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.Name, r.Subjects, r.Verdict, first)
		for _, l := range lines {
			fmt.Fprintf(tw, "\t\t\t%s\n", l)
		}
	}
	_ = tw.Flush()
}
