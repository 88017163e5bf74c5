package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// Issuer is the EKS-style OIDC issuer the benchmark seed roles trust.
const Issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/5C5E1A2B3C4D5E6F7A8B9C0D1E2F3A4B"

// SeedTrust returns a KubeStash seed role's trust policy with one OIDC statement per cluster
// (clusters >= 1), each trusting the operator's ServiceAccount, as moto.TrustPolicy writes it.
func SeedTrust(clusters int) (awsp.TrustPolicy, error) {
	var stmts []json.RawMessage
	for c := range max(clusters, 1) {
		var doc struct{ Statement []json.RawMessage }
		if err := json.Unmarshal([]byte(moto.TrustPolicy(providerARN(c), issuerN(c), moto.SeedSubject)), &doc); err != nil {
			return awsp.TrustPolicy{}, err
		}
		stmts = append(stmts, doc.Statement...)
	}
	doc, err := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": stmts})
	if err != nil {
		return awsp.TrustPolicy{}, err
	}
	return awsp.ParseTrustPolicy(string(doc))
}

func issuerN(c int) string {
	if c == 0 {
		return Issuer
	}
	return fmt.Sprintf("https://oidc.eks.eu-west-%d.amazonaws.com/id/5C5E1A2B3C4D5E6F7A8B9C0D1E2F3A4%d", c, c)
}

func providerARN(c int) string {
	return "arn:aws:iam::" + moto.AccountID + ":oidc-provider/" + moto.IssuerHost(issuerN(c))
}

// Session timestamps advance by an hour, as an hourly KubeStash BackupConfiguration creates them.
const firstSession = 1778072138

// BackupSubjects are n per-session backup ServiceAccounts in namespace demo:
// system:serviceaccount:demo:sample-backup-daemon-demo-session-<unix> (71 characters).
func BackupSubjects(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = awsp.SubjectPrefix + "demo:sample-backup-daemon-demo-session-" + strconv.Itoa(firstSession+i*3600)
	}
	return out
}

// RetentionSubjects are n retention-policy ServiceAccounts (88 characters), the longest names
// KubeStash creates for one session.
func RetentionSubjects(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = awsp.SubjectPrefix + "demo:retention-policy-sample-backup-daemon-demo-session-" + strconv.Itoa(firstSession+264+i*3600)
	}
	return out
}

// RestoreSubjects are n restore ServiceAccounts, app-restore-restore in namespaces app-0001...
// (the shortest names: 52 characters).
func RestoreSubjects(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%sapp-%04d:app-restore-restore", awsp.SubjectPrefix, i+1)
	}
	return out
}

// MixedSubjects is what a busy cluster creates, in arrival order: for every hourly session of one
// of five BackupConfigurations in namespaces of different lengths, a backup and a retention
// ServiceAccount; every tenth session also a restore. It returns exactly n subjects.
func MixedSubjects(n int) []string {
	type app struct{ ns, name string }
	apps := []app{
		{"demo", "sample-backup"}, {"prod-postgres", "pg-nightly"}, {"team-analytics", "warehouse-backup"},
		{"kube-system", "etcd-snapshot"}, {"payments", "ledger-db-backup"},
	}
	out := make([]string, 0, n)
	for s := 0; len(out) < n; s++ {
		a := apps[s%len(apps)]
		ts := strconv.Itoa(firstSession + s*3600)
		session := a.name + "-daemon-" + a.ns + "-session-" + ts
		out = append(out, awsp.SubjectPrefix+a.ns+":"+session)
		if len(out) < n {
			out = append(out, awsp.SubjectPrefix+a.ns+":retention-policy-"+session)
		}
		if s%10 == 9 && len(out) < n {
			out = append(out, awsp.SubjectPrefix+a.ns+":"+a.name+"-restore-"+ts)
		}
	}
	return out
}

// Packing is the outcome of placing subjects, in order, by first fit into derived roles: Roles[i]
// is role <seed>-<i>.
type Packing struct {
	Roles []awsp.TrustPolicy
}

// Pack places subjects with awsp.Place, the Assigner's own placement: first fit over existing
// roles by lowest index, a new role only when none fits.
func Pack(seed awsp.TrustPolicy, subjects []string, quota int) (Packing, error) {
	var p Packing
	if err := p.Add(seed, subjects, quota); err != nil {
		return p, err
	}
	return p, nil
}

// Add places more subjects into p, without a role creation limit.
func (p *Packing) Add(seed awsp.TrustPolicy, subjects []string, quota int) error {
	views := make([]awsp.RoleView, len(p.Roles))
	for i, r := range p.Roles {
		views[i] = awsp.RoleView{Index: i, Trust: r}
	}
	pl := awsp.Place(views, subjects, quota, math.MaxInt, awsp.PlaceOptions{Seed: &seed})
	for _, d := range pl.Decisions {
		if d.Err != nil {
			return fmt.Errorf("placing %s: %w", d.Subject, d.Err)
		}
	}
	p.Roles = p.Roles[:0]
	for i, r := range pl.After(views) {
		if r.Index != i { // new roles take the lowest free index, and Packing has no holes
			return fmt.Errorf("placement left role %d empty", i)
		}
		p.Roles = append(p.Roles, r.Trust)
	}
	return nil
}

// Remove drops subjects from whichever roles list them (a ServiceAccount deleted).
func (p *Packing) Remove(subjects []string) {
	for i := range p.Roles {
		p.Roles[i], _ = p.Roles[i].WithoutSubjects(subjects...)
	}
}

// Subjects is the number of subjects placed.
func (p Packing) Subjects() int {
	n := 0
	for _, r := range p.Roles {
		n += r.Len()
	}
	return n
}

// RoleModel splits a trust policy's size for subjects S (|S| >= 1) into a constant per role and a
// cost per subject: Size(S) = Overhead + sum over S of Cost(s), where Cost(s) is, in every OIDC
// statement, the subject quoted plus its separating comma. The separator IAM does not need
// after the last element is folded into Overhead. Measured, not assumed: see RoleModel.
type RoleModel struct {
	Overhead   int
	Statements int
}

// Cost is one subject's share of a role's size.
func (m RoleModel) Cost(subject string) int { return m.Statements * (len(strconv.Quote(subject)) + 1) }

// Capacity is the subject budget of one role under quota.
func (m RoleModel) Capacity(quota int) int { return quota - m.Overhead }

// MeasureRoleModel derives the model from real documents built by DeriveTrustPolicy and checks
// it against a third size, so a change in rendering cannot silently skew the bound.
func MeasureRoleModel(seed awsp.TrustPolicy, a, b, c string) (RoleModel, error) {
	size := func(subjects ...string) (int, error) {
		p, err := awsp.DeriveTrustPolicy(seed, subjects)
		if err != nil {
			return 0, err
		}
		return p.Size()
	}
	one, err := size(a)
	if err != nil {
		return RoleModel{}, err
	}
	m := RoleModel{Statements: seed.OIDCStatements()}
	m.Overhead = one - m.Cost(a)
	for _, set := range [][]string{{a, b}, {a, b, c}} {
		got, err := size(set...)
		if err != nil {
			return RoleModel{}, err
		}
		want := m.Overhead
		for _, s := range set {
			want += m.Cost(s)
		}
		if got != want {
			return RoleModel{}, fmt.Errorf("role size model is off: %d subjects measure %d, model says %d", len(set), got, want)
		}
	}
	return m, nil
}

// LowerBound is the fewest roles that could hold subjects under quota if subjects could be split
// across roles (a fluid bin-packing bound): no placement can need fewer. RunPacking also applies
// the integral bound, subjects divided by the most one role can hold.
func (m RoleModel) LowerBound(subjects []string, quota int) int {
	total := 0
	for _, s := range subjects {
		total += m.Cost(s)
	}
	c := m.Capacity(quota)
	return (total + c - 1) / c
}

// PackingResult is one row of the packing table.
type PackingResult struct {
	Name       string `json:"name"`
	Quota      int    `json:"quota"`
	Statements int    `json:"statements"` // OIDC statements (clusters) in the seed
	Subjects   int    `json:"subjects"`
	MinLen     int    `json:"minLen"` // subject lengths in characters
	MaxLen     int    `json:"maxLen"`
	Roles      int    `json:"roles"`      // derived roles Place needed
	LowerBound int    `json:"lowerBound"` // no placement can use fewer roles
	// TheoreticalMax is awsp.TheoreticalMax over the subject set (shortest names first): for a
	// set of equal-length names it is exactly how many one role can hold.
	TheoreticalMax int `json:"theoreticalMax"`
	// PerFullRole are the smallest and mean subject counts of every role but the last (the last
	// is still filling).
	MinPerFullRole  int     `json:"minPerFullRole"`
	MeanPerFullRole float64 `json:"meanPerFullRole"`
	// Density is MinPerFullRole/TheoreticalMax for equal-length names; for mixed lengths
	// LowerBound/Roles (how close to the fewest roles possible).
	Density float64 `json:"density"`
	// MeanFill is the mean size/quota of the full roles.
	MeanFill float64 `json:"meanFill"`
	Note     string  `json:"note,omitempty"`
}

// PackingCase is one subject set to pack.
type PackingCase struct {
	Name     string
	Clusters int
	Subjects []string
	// Churn, when > 0, removes every Churn-th subject after packing and adds as many new ones
	// (from Extra), to show that freed space is reused.
	Churn int
	Extra []string
}

// RunPacking packs c under quota and measures it.
func RunPacking(c PackingCase, quota int) (PackingResult, error) {
	seed, err := SeedTrust(max(c.Clusters, 1))
	if err != nil {
		return PackingResult{}, err
	}
	model, err := MeasureRoleModel(seed, c.Subjects[0], c.Subjects[1], c.Subjects[2])
	if err != nil {
		return PackingResult{}, err
	}
	p, err := Pack(seed, c.Subjects, quota)
	if err != nil {
		return PackingResult{}, err
	}
	live := c.Subjects
	note := ""
	if c.Churn > 0 {
		var removed, kept []string
		for i, s := range c.Subjects {
			if i%c.Churn == c.Churn-1 {
				removed = append(removed, s)
			} else {
				kept = append(kept, s)
			}
		}
		before := len(p.Roles)
		p.Remove(removed)
		add := c.Extra[:len(removed)]
		if err := p.Add(seed, add, quota); err != nil {
			return PackingResult{}, err
		}
		live = append(kept, add...)
		note = fmt.Sprintf("%d removed, %d added: %d roles before, %d after", len(removed), len(add), before, len(p.Roles))
	}
	if got := p.Subjects(); got != len(live) {
		return PackingResult{}, fmt.Errorf("packed %d subjects, want %d", got, len(live))
	}
	tmax, err := awsp.TheoreticalMax(seed, live, quota)
	if err != nil {
		return PackingResult{}, err
	}
	r := PackingResult{
		Name: c.Name, Quota: quota, Statements: seed.OIDCStatements(), Subjects: len(live),
		Roles: len(p.Roles), TheoreticalMax: tmax, Note: note,
		LowerBound: max(model.LowerBound(live, quota), (len(live)+tmax-1)/tmax),
	}
	r.MinLen, r.MaxLen = len(live[0]), len(live[0])
	for _, s := range live {
		r.MinLen, r.MaxLen = min(r.MinLen, len(s)), max(r.MaxLen, len(s))
	}
	full := p.Roles
	if len(full) > 1 {
		full = full[:len(full)-1]
	}
	r.MinPerFullRole = full[0].Len()
	sum, fill := 0, 0.0
	for _, role := range full {
		r.MinPerFullRole = min(r.MinPerFullRole, role.Len())
		sum += role.Len()
		size, err := role.Size()
		if err != nil {
			return PackingResult{}, err
		}
		if size > quota {
			return PackingResult{}, fmt.Errorf("a role is %d characters, over the quota %d", size, quota)
		}
		fill += float64(size) / float64(quota)
	}
	r.MeanPerFullRole = float64(sum) / float64(len(full))
	r.MeanFill = fill / float64(len(full))
	if r.MinLen == r.MaxLen {
		r.Density = float64(r.MinPerFullRole) / float64(tmax)
	} else {
		r.Density = float64(r.LowerBound) / float64(r.Roles)
	}
	return r, nil
}

// PackingCases are the subject sets of the packing table, n ServiceAccounts each.
func PackingCases(n int) []PackingCase {
	mixed := MixedSubjects(2 * n)
	return []PackingCase{
		{Name: "backup sessions (equal length)", Clusters: 1, Subjects: BackupSubjects(n)},
		{Name: "retention sessions (equal length)", Clusters: 1, Subjects: RetentionSubjects(n)},
		{Name: "restores, short names (equal length)", Clusters: 1, Subjects: RestoreSubjects(n)},
		{Name: "KubeStash mix", Clusters: 1, Subjects: mixed[:n]},
		{Name: "KubeStash mix, seed trusted by 2 clusters", Clusters: 2, Subjects: mixed[:n]},
		{Name: "KubeStash mix, then 1/3 deleted and replaced", Clusters: 1, Subjects: mixed[:n], Churn: 3, Extra: mixed[n:]},
	}
}
