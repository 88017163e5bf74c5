package aws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/annotations"
)

// Adoption: taking over roles named "<seed>-<i>" that carry no seed tag, such as the derived
// roles KubeStash's aws-credential-manager created before this server replaced it. The server
// never writes such a role (errForeign), and its IAM policy cannot make one ours: TagRole is
// allowed only on roles that already carry the seed tag, so stolen webhook credentials can never
// adopt a foreign role. Adoption therefore runs with an administrator's credentials (the roles
// adopt subcommand), and only tags: a role whose permissions or trust differ from the seed's in
// any way that matters is refused with the differences listed, and nothing of its policies is
// changed. Once a role is ours, garbage collection's drift repair (SyncFromSeed) keeps it in line
// like any other derived role.

// AdoptOptions says what Adopt does.
type AdoptOptions struct {
	// Role limits adoption to one role, by name or ARN; it must be named "<seed>-<i>" under the
	// seed's path. Empty: every such role.
	Role string
	// Apply tags the faithful roles. Without it Adopt reads only (a dry run).
	Apply bool
	// PutBoundary lets adoption set the permissions boundary of a role that has none (and is
	// faithful otherwise) before tagging it. Setting a boundary only ever narrows what a role
	// can do, and a role of ours must never be without one: the webhook's IAM policy trusts the
	// boundary to cap every role it may edit. A role with another boundary is refused whatever
	// this says: its owner chose that one.
	PutBoundary bool
}

// AdoptVerdict is the outcome for one role.
type AdoptVerdict string

const (
	// AdoptFaithful: a faithful clone of the seed, not tagged yet (dry run).
	AdoptFaithful AdoptVerdict = "faithful"
	// AdoptAdopted: a faithful clone, tagged now.
	AdoptAdopted AdoptVerdict = "adopted"
	// AdoptOurs: it carries the seed tag for this seed already.
	AdoptOurs AdoptVerdict = "ours"
	// AdoptRefused: not a faithful clone (Reasons lists why); nothing was written.
	AdoptRefused AdoptVerdict = "REFUSED"
	// AdoptFailed: it could not be read, or a write failed (Reasons has the error).
	AdoptFailed AdoptVerdict = "FAILED"
)

// AdoptResult is what Adopt found, or did, for one role.
type AdoptResult struct {
	Index    int
	ARN      string
	Subjects int // ServiceAccounts its trust policy lists
	Verdict  AdoptVerdict
	Reasons  []string // why it was refused, or the error
	Notes    []string // what adopting it changes, or what drift repair changes once it is ours
}

// Failed reports whether the role was refused or could not be adopted.
func (r AdoptResult) Failed() bool { return r.Verdict == AdoptRefused || r.Verdict == AdoptFailed }

// Adopt looks at every role named "<seed>-<i>" under the seed's path (or only opt.Role), judges
// each untagged one against the seed (planAdoption) and, with opt.Apply, tags the faithful ones as
// this server's own derived roles do (the seed tag and the seed's tags). The seed is read and
// checked as the server reads it (Config.PermissionsBoundary and Config.OIDCIssuer apply), so a
// seed the server would refuse is refused here too. Errors are returned for the seed and the
// listing; a role that cannot be read or written is reported in its result and the others go on.
//
// The writes are not made under the seed's lock: a role without the seed tag is never written by
// the server, and a replica that found it foreign reads it again after ForeignRecheck.
func (a *Assigner) Adopt(ctx context.Context, seed RoleARN, opt AdoptOptions) ([]AdoptResult, error) {
	if err := a.allowed(seed); err != nil {
		return nil, err
	}
	s := a.newSession(seed, &seedState{}, false)
	spec, err := s.readSeed(ctx, true)
	if err != nil {
		return nil, err
	}
	listed, err := listDerived(ctx, a.api, seed)
	if err != nil {
		return nil, err
	}
	if opt.Role != "" {
		listed = slices.DeleteFunc(listed, func(l listedRole) bool { return l.arn.Name != opt.Role && l.arn.String() != opt.Role })
		if len(listed) == 0 {
			return nil, fmt.Errorf("no role %s named %s-<i> under the seed's path %s", quoteShort(opt.Role), seed.Name, seed.Path)
		}
	}
	// The administrator's writes: outside the lock protocol (see above), so nothing to bump.
	w := &applier{api: a.api, before: func(context.Context) error { return nil }}
	provider := a.provider(seed)
	out := make([]AdoptResult, 0, len(listed))
	for _, l := range listed {
		res := AdoptResult{Index: l.index, ARN: l.arn.String()}
		target, doc, err := readForAdoption(ctx, a.api, l.arn.Name, provider)
		var unreadable *unreadableTrust
		switch {
		case errors.As(err, &unreadable):
			// Read, but its trust policy cannot be parsed: nothing we could take over.
			res.Verdict, res.Reasons = AdoptRefused, []string{err.Error()}
			out = append(out, res)
			continue
		case err != nil:
			res.Verdict, res.Reasons = AdoptFailed, []string{err.Error()}
			out = append(out, res)
			continue
		}
		res.Subjects = target.trust.Len()
		p := planAdoption(spec, target, doc, opt.PutBoundary)
		res.Notes = p.notes
		switch {
		case p.ours:
			res.Verdict = AdoptOurs
		case len(p.reasons) > 0:
			res.Verdict, res.Reasons = AdoptRefused, p.reasons
		case !opt.Apply:
			res.Verdict = AdoptFaithful
		default:
			if err := w.apply(ctx, p.writes...); err != nil {
				res.Verdict, res.Reasons = AdoptFailed, []string{err.Error()}
				break
			}
			res.Verdict = AdoptAdopted
			a.log.Info("adopted a role as a derived role of its seed", "role", res.ARN, "seed", seed.String(), "subjects", res.Subjects)
		}
		out = append(out, res)
	}
	return out, nil
}

// unreadableTrust is a role whose trust policy cannot be parsed.
type unreadableTrust struct{ err error }

func (e *unreadableTrust) Error() string { return "its trust policy cannot be read: " + e.err.Error() }
func (e *unreadableTrust) Unwrap() error { return e.err }

// readForAdoption reads a role with its inline documents, and its trust policy as IAM has it
// (decoded). A trust policy that cannot be parsed is an *unreadableTrust.
func readForAdoption(ctx context.Context, api IAMAPI, name, provider string) (*roleSpec, string, error) {
	got, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		return nil, "", fmt.Errorf("iam:GetRole %s: %w", name, err)
	}
	doc, err := DecodePolicyDocument(aws.ToString(got.Role.AssumeRolePolicyDocument))
	if err != nil {
		return nil, "", &unreadableTrust{err}
	}
	spec, err := specFromRole(got.Role, provider)
	if err != nil {
		return nil, "", &unreadableTrust{err}
	}
	if err := readPolicies(ctx, api, spec, true); err != nil {
		return nil, "", err
	}
	return spec, doc, nil
}

// adoptionPlan is planAdoption's decision for one role.
type adoptionPlan struct {
	ours    bool     // it carries the seed tag for this seed already: nothing to do
	reasons []string // why it is not a faithful clone; empty: adopt it
	notes   []string // what adopting changes, or drift repair once it is ours
	writes  []write  // the adoption: the boundary (PutBoundary, when missing), then the tags
}

// planAdoption decides whether target, a role named like a derived role of seed, is a faithful
// clone of it: what this server would have made, but for the ServiceAccounts it trusts. seed is
// the seed as readSeed returns it (its boundary is the one derived roles get), read with its
// inline documents; target was read with its inline documents too, its trust policy parsed with
// the same provider pin; trustDoc is target's trust policy as IAM has it (decoded).
//
// Faithful means: the same managed and inline policies (documents compared as canonical JSON),
// the boundary derived roles get, the same max session duration, and the trust statements
// DeriveTrustPolicy makes from the seed for the subjects it lists, every subject a
// "system:serviceaccount:<namespace>:<name>", each OIDC statement limiting ":sub" to those
// subjects with StringEquals or StringLike (trustProblems), and no tag the seed does not have (a
// principal tag can grant access). The description and the values of the seed's tags may differ:
// adoption sets the seed's tags and drift repair the description.
//
// The writes only tag, and with setBoundary set the missing boundary first, so the role is never
// ours without one.
func planAdoption(seed, target *roleSpec, trustDoc string, setBoundary bool) adoptionPlan {
	var p adoptionPlan
	if tag, ok := target.tags[annotations.SeedTag]; ok {
		if tag == seed.arn.String() {
			p.ours = true
			return p
		}
		p.reasons = append(p.reasons, fmt.Sprintf("it is tagged %s=%s: a derived role of another seed", annotations.SeedTag, tag))
		return p
	}
	diff, err := policyDiff(seed, target, true)
	if err != nil {
		p.reasons = append(p.reasons, err.Error())
		return p
	}
	for _, w := range diff {
		switch w := w.(type) {
		case putBoundary:
			switch {
			case target.boundary != "":
				p.reasons = append(p.reasons, fmt.Sprintf("its permissions boundary is %s; derived roles of this seed carry %s", target.boundary, seed.boundary))
			case !setBoundary:
				p.reasons = append(p.reasons, fmt.Sprintf("it has no permissions boundary; derived roles of this seed carry %s (--put-boundary sets it before tagging)", seed.boundary))
			default:
				p.writes = append(p.writes, w)
				p.notes = append(p.notes, "permissions boundary "+seed.boundary+" is set before tagging")
			}
		case attachPolicy:
			p.reasons = append(p.reasons, "the seed's managed policy "+w.policy+" is not attached")
		case detachPolicy:
			p.reasons = append(p.reasons, "managed policy "+w.policy+" is attached; the seed has no such policy")
		case putInline:
			if _, ok := target.inline[w.policy]; ok {
				p.reasons = append(p.reasons, "inline policy "+w.policy+" differs from the seed's")
			} else {
				p.reasons = append(p.reasons, "the seed's inline policy "+w.policy+" is missing")
			}
		case deleteInline:
			p.reasons = append(p.reasons, "inline policy "+w.policy+" is not the seed's")
		case updateRole:
			if seed.maxSession != 0 && seed.maxSession != target.maxSession {
				p.reasons = append(p.reasons, fmt.Sprintf("its max session duration is %d s; the seed's is %d s", target.maxSession, seed.maxSession))
			}
			if seed.description != target.description {
				p.notes = append(p.notes, "its description differs from the seed's; drift repair sets the seed's once it is ours")
			}
		}
	}
	p.reasons = append(p.reasons, trustProblems(seed.trust, target.trust, trustDoc)...)

	want := copiedTags(seed)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if have, ok := target.tags[k]; ok && have != want[k] && k != annotations.SeedTag {
			p.notes = append(p.notes, fmt.Sprintf("tag %s=%s becomes the seed's %s", k, have, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(target.tags)) {
		if _, ok := want[k]; !ok && !strings.HasPrefix(strings.ToLower(k), "aws:") {
			// Refused, not noted: a principal tag can grant access (aws:PrincipalTag conditions in
			// bucket or key policies), and until a full drift pass the role would carry it for
			// every new ServiceAccount placed in it.
			p.reasons = append(p.reasons, "tag "+k+" is not the seed's (principal tags can grant access); remove it, then adopt")
		}
	}
	// Last: the role becomes ours only once everything before it was written.
	p.writes = append(p.writes, tagRole{role: target.arn.Name, tags: want})
	return p
}

// trustProblems compares a role's trust policy with the one DeriveTrustPolicy makes from the seed
// for the same subjects, and checks on the document as IAM has it what parsing alone would hide.
// It returns nothing for a faithful one.
func trustProblems(seed, have TrustPolicy, doc string) []string {
	var out []string
	for _, s := range have.subjects {
		if _, _, err := ParseSubject(s); err != nil {
			out = append(out, fmt.Sprintf("it trusts %s, which is not a ServiceAccount subject system:serviceaccount:<namespace>:<name>", quoteShort(s)))
		}
	}
	out = append(out, subjectConditionProblems(have, doc)...)
	want, err := DeriveTrustPolicy(seed, have.subjects)
	if err != nil {
		return append(out, "the seed's trust policy: "+err.Error())
	}
	haveStmts, err1 := renderedStatements(have)
	wantStmts, err2 := renderedStatements(want)
	if err1 != nil || err2 != nil {
		return append(out, fmt.Sprintf("rendering the trust policies: %v %v", err1, err2))
	}
	for _, st := range multisetMinus(haveStmts, wantStmts) {
		out = append(out, "a trust statement derived roles of this seed do not have: "+firstN(st, 300))
	}
	for _, st := range multisetMinus(wantStmts, haveStmts) {
		out = append(out, "the seed's trust statement is missing or differs: "+firstN(st, 300))
	}
	if !sameTopLevel(have, want) {
		out = append(out, "the trust policy's top-level fields (Version, Id) differ from the seed's")
	}
	return out
}

// subjectConditionProblems looks at the ":sub" conditions of the OIDC statements as the document
// states them. Parsing collects subjects from every operator and rendering writes them back under
// StringLike, so a comparison of rendered policies would take a StringNotLike (everyone but
// these) or a statement without ":sub" (every ServiceAccount of the cluster) for a faithful list.
func subjectConditionProblems(p TrustPolicy, doc string) []string {
	js, err := DecodePolicyDocument(doc)
	if err != nil {
		return []string{"trust policy: " + err.Error()}
	}
	var top struct {
		Statement json.RawMessage
	}
	if err := json.Unmarshal([]byte(js), &top); err != nil {
		return []string{"trust policy: " + err.Error()}
	}
	var list []json.RawMessage
	if p.single {
		list = []json.RawMessage{top.Statement}
	} else if err := json.Unmarshal(top.Statement, &list); err != nil {
		return []string{"trust policy Statement: " + err.Error()}
	}
	if len(list) != len(p.statements) {
		return []string{"internal error: the trust policy's statements changed between two reads"}
	}
	var out []string
	var subjectLists [][]string
	for i, st := range p.statements {
		if st.kind != kindOIDC {
			continue
		}
		var fields struct {
			Condition map[string]map[string]json.RawMessage
		}
		if err := json.Unmarshal(list[i], &fields); err != nil {
			out = append(out, fmt.Sprintf("trust statement %d: %v", i, err))
			continue
		}
		key := st.issuer + ":sub"
		var ops, subs []string
		for op, keys := range fields.Condition {
			for k, v := range keys {
				if !strings.EqualFold(k, key) {
					continue
				}
				ops = append(ops, op)
				vals, err := stringOrList(v)
				if err != nil {
					out = append(out, fmt.Sprintf("trust statement %d: %s %s: %v", i, op, k, err))
				}
				subs = append(subs, vals...)
			}
		}
		slices.Sort(ops)
		switch {
		case len(ops) == 0:
			out = append(out, fmt.Sprintf("trust statement %d has no %s condition: it trusts every ServiceAccount of the cluster", i, key))
		case len(ops) > 1:
			out = append(out, fmt.Sprintf("trust statement %d tests %s under several operators (%s)", i, key, strings.Join(ops, ", ")))
		case ops[0] != "StringEquals" && ops[0] != "StringLike":
			out = append(out, fmt.Sprintf("trust statement %d tests %s with %s; only StringEquals or StringLike limit it to the ServiceAccounts listed", i, key, ops[0]))
		}
		subjectLists = append(subjectLists, normalizeSubjects(subs))
	}
	for _, l := range subjectLists[min(1, len(subjectLists)):] {
		if !slices.Equal(l, subjectLists[0]) {
			out = append(out, "its OIDC statements list different ServiceAccounts (a derived role lists the same ones in each)")
			break
		}
	}
	return out
}

// renderedStatements is every statement of p as sent to IAM, in canonical JSON.
func renderedStatements(p TrustPolicy) ([]string, error) {
	out := make([]string, 0, len(p.statements))
	for _, st := range p.statements {
		raw, err := st.render(p.subjects)
		if err != nil {
			return nil, err
		}
		c, err := CanonicalJSON(string(raw))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// multisetMinus is a without b, counting duplicates, in a's order.
func multisetMinus(a, b []string) []string {
	left := map[string]int{}
	for _, s := range b {
		left[s]++
	}
	var out []string
	for _, s := range a {
		if left[s] > 0 {
			left[s]--
			continue
		}
		out = append(out, s)
	}
	return out
}

// sameTopLevel compares the fields of two trust policies other than Statement.
func sameTopLevel(a, b TrustPolicy) bool {
	canon := func(p TrustPolicy) string {
		m := cloneRaw(p.top)
		delete(m, "Statement")
		raw, err := marshalCompact(m)
		if err != nil {
			return ""
		}
		c, _ := CanonicalJSON(string(raw))
		return c
	}
	x, y := canon(a), canon(b)
	return x != "" && x == y
}

// WriteAdoptTable prints Adopt's results, one line per role and one more per further reason or
// note, for the roles adopt subcommand.
func WriteAdoptTable(w io.Writer, results []AdoptResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tROLE\tSUBJECTS\tVERDICT\tREASONS")
	for _, r := range results {
		lines := slices.Clone(r.Reasons)
		for _, n := range r.Notes {
			lines = append(lines, "note: "+n)
		}
		first := "-"
		if len(lines) > 0 {
			first, lines = lines[0], lines[1:]
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", r.Index, r.ARN, r.Subjects, r.Verdict, first)
		for _, l := range lines {
			fmt.Fprintf(tw, "\t\t\t\t%s\n", l)
		}
	}
	_ = tw.Flush()
}
