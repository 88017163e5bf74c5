package aws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// ErrSeedNotOIDC is wrapped when a seed role's trust policy has no statement a derived role could
// copy (an Allow for exactly one Federated OIDC provider).
var ErrSeedNotOIDC = errors.New("seed trust policy trusts no OIDC provider")

// NormalizeIssuer turns an OIDC issuer URL ("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC")
// into the form IAM names providers and condition keys by: host and path, no scheme, no trailing
// slash. "" stays "".
func NormalizeIssuer(issuer string) (string, error) {
	s := strings.TrimSpace(issuer)
	if s == "" {
		return "", nil
	}
	if rest, ok := strings.CutPrefix(s, "https://"); ok {
		s = rest
	} else if strings.Contains(s, "://") {
		return "", fmt.Errorf("OIDC issuer %s: IAM trusts https issuers only", quoteShort(issuer))
	}
	s = strings.TrimSuffix(s, "/")
	if s == "" || strings.ContainsAny(s, " \t\n*?\"\\") || strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("OIDC issuer %s is not a URL like https://oidc.eks.<region>.amazonaws.com/id/<ID>", quoteShort(issuer))
	}
	return s, nil
}

// OIDCProviderARN is the IAM OIDC provider ARN for issuer (as NormalizeIssuer returns it) in the
// seed's account: the only Federated principal whose trust statements receive subjects when the
// issuer is pinned (Config.OIDCIssuer).
func OIDCProviderARN(seed RoleARN, issuer string) string {
	return "arn:" + seed.Partition + ":iam::" + seed.Account + ":oidc-provider/" + issuer
}

// noSubject is written as the only subject of a derived role that has none left. An OIDC Allow
// statement without a ":sub" condition would trust every ServiceAccount of the cluster, and IAM
// does not reliably accept an empty value list, so an unmatchable value keeps the statement
// closed: Kubernetes never issues a token whose sub lacks the system:serviceaccount: prefix.
const noSubject = "credential-webhook:no-subject"

// maxPolicyDocLen bounds what we parse. IAM's largest trust-policy quota is 8,192 characters; a
// URL-encoded document can be up to three times longer.
const maxPolicyDocLen = 64 << 10

type statementKind int

const (
	// kindOther: kept verbatim on a round trip, dropped when deriving (it trusts something other
	// than ServiceAccounts, and derived roles exist only for ServiceAccounts).
	kindOther statementKind = iota
	// kindOIDC: Effect Allow, Principal {"Federated": one oidc-provider ARN}. Its "<issuer>:sub"
	// conditions are replaced by the policy's subject list.
	kindOIDC
	// kindDeny: kept verbatim, always, including when deriving: dropping a Deny would widen trust.
	kindDeny
	// kindPinnedOut: an OIDC Allow statement for another provider than the pinned one (parsed
	// with a provider, see ParseTrustPolicyFor): kept verbatim, including when deriving, and it
	// never receives subjects. The seed trusts those principals already, so copying the statement
	// grants nothing the seed does not.
	kindPinnedOut
)

// statement is one parsed trust statement. It is never mutated after parsing, so TrustPolicy
// values can share statements and stay cheap to copy.
type statement struct {
	kind   statementKind
	issuer string                     // OIDC issuer host/path (no scheme) for kindOIDC
	fields map[string]json.RawMessage // everything but Condition for kindOIDC; everything otherwise
	// condition is the Condition block minus every "<issuer>:sub" key (kindOIDC only).
	condition map[string]map[string]json.RawMessage
}

// TrustPolicy is a role trust policy split into statement templates and a subject set. Values are
// immutable: the With* methods return modified copies, so a cached policy is never half-edited by
// a failed write.
type TrustPolicy struct {
	top        map[string]json.RawMessage // top-level fields but Statement
	statements []*statement
	single     bool     // Statement was an object, not an array (kept for round trips)
	subjects   []string // sorted, unique, never noSubject
	// size memoises Size for this value (values are immutable, so it never goes stale): the
	// first-fit scan measures every full role for every assignment otherwise.
	size *sizeMemo
	// tmpl is the rendered document without its subjects, shared by every value with the
	// same statements (JSON).
	tmpl *docTemplate
	// derived is the template of every policy DeriveTrustPolicy makes from this one (a seed):
	// they all have the same statements, so a new role's document is not templated afresh.
	derived *docTemplate
}

type sizeMemo struct {
	once  sync.Once
	ready atomic.Bool // n and err are set (read without the Once by WithSubject)
	n     int
	err   error
}

// known returns the memoised size when it has been measured without error.
func (m *sizeMemo) known() (int, bool) {
	if m == nil || !m.ready.Load() || m.err != nil {
		return 0, false
	}
	return m.n, true
}

// knownSize is a memo that needs no measuring.
func knownSize(n int) *sizeMemo {
	m := &sizeMemo{}
	m.once.Do(func() { m.n = n })
	m.ready.Store(true)
	return m
}

// resized is the memo of p's size after its subject list changed by delta subjects' worth of
// JSON (jsonListItemLen each, negative when removed), from old, p's size before. The subject
// list is always a JSON array in every OIDC statement, so each subject costs exactly its quoted
// form and a comma there: as long as the list is non-empty before and after (an empty list
// renders a placeholder), the new size is arithmetic. Placement asks Size of every candidate
// document; rendering each one was most of a lock session's CPU (benchtool sim's profile).
func resized(p TrustPolicy, old int, oldKnown bool, before, delta int) *sizeMemo {
	if !oldKnown || before == 0 || len(p.subjects) == 0 {
		return &sizeMemo{}
	}
	return knownSize(old + p.OIDCStatements()*delta)
}

// jsonListItemLen is the characters subject adds to a non-empty JSON string array as
// marshalCompact writes it (no HTML escaping): its quoted, escaped form and a comma.
func jsonListItemLen(subject string) int {
	// The printable ASCII written as it is, first, with one test a byte: every ServiceAccount
	// subject is all of it, and the escapes' switch below for each byte was 3 % of benchtool
	// sim's CPU (placement and removal measure every subject they add or drop).
	i := 0
	for i < len(subject) {
		if b := subject[i]; b < 0x20 || b >= utf8.RuneSelf || b == '"' || b == '\\' {
			break
		}
		i++
	}
	n := 3 + i // two quotes and a comma
	for i < len(subject) {
		b := subject[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\' || b == '\b' || b == '\f' || b == '\n' || b == '\r' || b == '\t':
				n += 2
			case b < 0x20:
				n += 6 // \u00XX
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(subject[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 6 // invalid UTF-8 becomes \ufffd
		case r == '\u2028' || r == '\u2029':
			n += 6 // escaped for JavaScript, HTML escaping or not
		default:
			n++
		}
		i += size
	}
	return n
}

// DecodePolicyDocument undoes the URL encoding IAM applies to policy documents in its responses.
// Plain JSON passes through, so moto and hand-written input work too.
func DecodePolicyDocument(doc string) (string, error) {
	if len(doc) > maxPolicyDocLen {
		return "", fmt.Errorf("policy document is %d bytes, more than the %d we accept", len(doc), maxPolicyDocLen)
	}
	s := strings.TrimSpace(doc)
	if strings.HasPrefix(s, "{") {
		return s, nil
	}
	// PathUnescape, not QueryUnescape: IAM percent-encodes per RFC 3986, and a literal '+' in a
	// policy must stay a '+'.
	dec, err := url.PathUnescape(s)
	if err != nil {
		return "", fmt.Errorf("policy document is neither JSON nor URL-encoded JSON: %w", err)
	}
	dec = strings.TrimSpace(dec)
	if !strings.HasPrefix(dec, "{") {
		return "", fmt.Errorf("policy document is neither JSON nor URL-encoded JSON (starts with %s)", quoteShort(firstN(s, 16)))
	}
	return dec, nil
}

// ParseTrustPolicy parses a trust policy, URL-encoded or not. Subjects are collected from every
// "<issuer>:sub" condition of the OIDC statements (StringEquals, StringLike, or any other
// operator), so the same function reads seeds and derived roles.
func ParseTrustPolicy(doc string) (TrustPolicy, error) { return ParseTrustPolicyFor(doc, "") }

// ParseTrustPolicyFor parses like ParseTrustPolicy, but when provider (an oidc-provider ARN, see
// OIDCProviderARN) is set, only the OIDC statements whose Federated principal is exactly provider
// carry subjects; other OIDC statements are kept verbatim (kindPinnedOut) and contribute none.
func ParseTrustPolicyFor(doc, provider string) (TrustPolicy, error) {
	js, err := DecodePolicyDocument(doc)
	if err != nil {
		return TrustPolicy{}, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(js), &top); err != nil {
		return TrustPolicy{}, fmt.Errorf("parsing trust policy: %w", err)
	}
	p := TrustPolicy{top: top}
	rawStmts, ok := top["Statement"]
	if !ok {
		return TrustPolicy{}, errors.New("trust policy has no Statement")
	}
	delete(top, "Statement")
	var list []json.RawMessage
	if bytes.HasPrefix(bytes.TrimSpace(rawStmts), []byte("{")) {
		p.single = true
		list = []json.RawMessage{rawStmts}
	} else if err := json.Unmarshal(rawStmts, &list); err != nil {
		return TrustPolicy{}, fmt.Errorf("trust policy Statement is neither an object nor an array: %w", err)
	}
	var subjects []string
	for i, raw := range list {
		st, subs, err := parseStatement(raw, provider)
		if err != nil {
			return TrustPolicy{}, fmt.Errorf("trust policy statement %d: %w", i, err)
		}
		p.statements = append(p.statements, st)
		subjects = append(subjects, subs...)
	}
	p.subjects = normalizeSubjects(subjects)
	p.size = &sizeMemo{}
	p.tmpl, p.derived = &docTemplate{}, &docTemplate{}
	return p, nil
}

// parseTrustKnown is ParseTrustPolicyFor(doc, provider), except that it returns known itself
// when doc is the document known renders: parsing the rendering of a policy gives that policy
// back (same statements, top-level fields and subjects; TestParseOfRenderingIsThePolicy), so a
// string comparison replaces a parse. known must have been parsed or derived for the same
// provider (the provider decides which statements carry subjects). A zero known, or one without
// an OIDC statement for its provider (whose rendering does not show its subjects), is never used.
// The garbage collection's full pass reads back every role this process wrote (SyncFromSeed,
// Roles): those parses were a tenth of the simulated month's CPU (benchtool sim).
func parseTrustKnown(doc, provider string, known TrustPolicy) (TrustPolicy, error) {
	if known.tmpl != nil && known.OIDCStatements() > 0 {
		if kjs, err := known.JSON(); err == nil && decodesTo(doc, kjs) {
			return known, nil
		}
	}
	return ParseTrustPolicyFor(doc, provider)
}

// decodesTo reports whether DecodePolicyDocument(doc) is js without an error, for a js that is
// compact JSON (no surrounding whitespace), decoding doc as it compares rather than into a new
// string: IAM's GetRole answers URL-encoded, and unescaping each document the garbage
// collection's full pass reads (SyncFromSeed, Roles) only to compare it was 2 % of benchtool
// sim's CPU. It errs towards false (the caller then parses): Unicode whitespace around the
// document, which DecodePolicyDocument would trim, is not skipped.
func decodesTo(doc, js string) bool {
	if len(doc) > maxPolicyDocLen || js == "" {
		return false
	}
	s := strings.TrimSpace(doc)
	if strings.HasPrefix(s, "{") {
		return s == js
	}
	// PathUnescape's rules: "%" and two hex digits is a byte, a malformed escape an error, any
	// other byte (a '+' too) itself.
	next := func(i int) (b byte, n int, ok bool) {
		if s[i] != '%' {
			return s[i], 1, true
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return 0, 0, false
		}
		return unhex(s[i+1])<<4 | unhex(s[i+2]), 3, true
	}
	space := func(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r' }
	i := 0
	for i < len(s) { // whitespace before the document, which DecodePolicyDocument trims
		b, n, ok := next(i)
		if !ok {
			return false
		}
		if !space(b) {
			break
		}
		i += n
	}
	for j := 0; j < len(js); j++ {
		if i >= len(s) {
			return false
		}
		b, n, ok := next(i)
		if !ok || b != js[j] {
			return false
		}
		i += n
	}
	for i < len(s) { // and after it
		b, n, ok := next(i)
		if !ok || !space(b) {
			return false
		}
		i += n
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func parseStatement(raw json.RawMessage, provider string) (*statement, []string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, nil, fmt.Errorf("not an object: %w", err)
	}
	st := &statement{kind: kindOther, fields: fields}
	var effect string
	if e, ok := fields["Effect"]; ok {
		if err := json.Unmarshal(e, &effect); err != nil {
			return nil, nil, fmt.Errorf("Effect: %w", err)
		}
	}
	if effect == "Deny" {
		st.kind = kindDeny
		return st, nil, nil
	}
	if effect != "Allow" {
		return st, nil, nil
	}
	providers, onlyFederated, err := oidcProviders(fields["Principal"])
	if err != nil {
		return nil, nil, err
	}
	switch {
	case len(providers) == 0 || !onlyFederated:
		return st, nil, nil
	case provider != "" && !slices.Contains(providers, provider):
		st.kind = kindPinnedOut
		return st, nil, nil
	case len(providers) > 1:
		// One statement with two providers would need both "<issuer>:sub" keys present in one
		// token, which never happens; refuse instead of writing a policy that matches nothing.
		return nil, nil, fmt.Errorf("trusts %d OIDC providers in one statement; split it into one statement per provider", len(providers))
	}
	st.kind = kindOIDC
	st.issuer, _ = oidcIssuer(providers[0])
	st.fields = make(map[string]json.RawMessage, len(fields))
	for k, v := range fields {
		if k != "Condition" {
			st.fields[k] = v
		}
	}
	var subjects []string
	if c, ok := fields["Condition"]; ok {
		var cond map[string]map[string]json.RawMessage
		if err := json.Unmarshal(c, &cond); err != nil {
			return nil, nil, fmt.Errorf("Condition: %w", err)
		}
		subKey := st.issuer + ":sub"
		for op, keys := range cond {
			for k, v := range keys {
				if !strings.EqualFold(k, subKey) {
					continue
				}
				vals, err := stringOrList(v)
				if err != nil {
					return nil, nil, fmt.Errorf("Condition %s %s: %w", op, k, err)
				}
				subjects = append(subjects, vals...)
				delete(keys, k)
			}
			if len(keys) == 0 {
				delete(cond, op)
			}
		}
		st.condition = cond
	}
	return st, subjects, nil
}

// oidcProviders returns the oidc-provider ARNs in a Principal, and whether Federated is the
// Principal's only key (a mixed principal is not something we know how to narrow).
func oidcProviders(raw json.RawMessage) (providers []string, onlyFederated bool, err error) {
	if len(raw) == 0 || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		return nil, false, nil // absent or "*"
	}
	var principal map[string]json.RawMessage
	if err := json.Unmarshal(raw, &principal); err != nil {
		return nil, false, fmt.Errorf("Principal: %w", err)
	}
	fed, ok := principal["Federated"]
	if !ok {
		return nil, false, nil
	}
	vals, err := stringOrList(fed)
	if err != nil {
		return nil, false, fmt.Errorf("Principal Federated: %w", err)
	}
	for _, v := range vals {
		if _, ok := oidcIssuer(v); ok {
			providers = append(providers, v)
		}
	}
	return providers, len(principal) == 1 && len(providers) == len(vals), nil
}

// oidcIssuer extracts "oidc.eks.<region>.amazonaws.com/id/<ID>" from
// "arn:<partition>:iam::<account>:oidc-provider/<issuer>".
func oidcIssuer(federated string) (string, bool) {
	parts := strings.SplitN(federated, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "iam" {
		return "", false
	}
	iss, ok := strings.CutPrefix(parts[5], "oidc-provider/")
	return iss, ok && iss != ""
}

func stringOrList(raw json.RawMessage) ([]string, error) {
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		// A list (every subject list we write): decoding it as a string first failed only after
		// scanning it twice, a sixth of a trust policy's parse.
		var many []string
		if err := json.Unmarshal(raw, &many); err != nil {
			return nil, errors.New("want a string or a list of strings")
		}
		return many, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, errors.New("want a string or a list of strings")
	}
	return many, nil
}

// normalizeSubjects sorts, de-duplicates and drops the placeholder. Sorting gives a stable
// document (and a stable size) whatever order subjects were added in.
func normalizeSubjects(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if s != noSubject {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// DeriveTrustPolicy builds a derived role's trust policy from its seed's: the seed's Deny
// statements verbatim, its OIDC Allow statements with their non-subject conditions (":aud" and
// any other) and without the seed's own subjects, then subjects as the only allowed ":sub" values.
//
// When the seed was parsed pinned to this cluster's OIDC provider (ParseTrustPolicyFor), only the
// statements for that provider get the subjects; the seed's statements for other providers are
// copied verbatim. Unpinned, every OIDC statement gets the whole subject list (a ServiceAccount
// name says nothing about its cluster); the price is capacity, and trust in every cluster the seed
// names. Allow statements for other principals (AWS accounts, services, SAML) are not copied:
// derived roles exist for ServiceAccounts only.
func DeriveTrustPolicy(seed TrustPolicy, subjects []string) (TrustPolicy, error) {
	d := TrustPolicy{top: seed.top, subjects: normalizeSubjects(slices.Clone(subjects)), size: &sizeMemo{}}
	for _, st := range seed.statements {
		if st.kind != kindOther {
			d.statements = append(d.statements, st)
		}
	}
	if d.OIDCStatements() == 0 {
		return TrustPolicy{}, ErrSeedNotOIDC
	}
	if _, ok := d.top["Version"]; !ok {
		d.top = cloneRaw(d.top)
		d.top["Version"] = json.RawMessage(`"2012-10-17"`)
	}
	d.tmpl = seed.derived // the same statements and top-level fields for every role of the seed
	if d.tmpl == nil {
		d.tmpl = &docTemplate{}
	}
	return d, nil
}

// Subjects returns the assigned subjects in sorted order.
func (p TrustPolicy) Subjects() []string { return slices.Clone(p.subjects) }

// Has reports whether subject is assigned.
func (p TrustPolicy) Has(subject string) bool {
	_, ok := slices.BinarySearch(p.subjects, subject)
	return ok
}

// Len is the number of assigned subjects.
func (p TrustPolicy) Len() int { return len(p.subjects) }

// OIDCStatements counts the statements that carry the subject list.
func (p TrustPolicy) OIDCStatements() int {
	n := 0
	for _, st := range p.statements {
		if st.kind == kindOIDC {
			n++
		}
	}
	return n
}

// Issuers lists the OIDC issuers the policy trusts, in statement order.
func (p TrustPolicy) Issuers() []string {
	var out []string
	for _, st := range p.statements {
		if st.kind == kindOIDC {
			out = append(out, st.issuer)
		}
	}
	return out
}

// WithSubject returns p with subject added; added is false when it was already there.
func (p TrustPolicy) WithSubject(subject string) (q TrustPolicy, added bool) {
	i, found := slices.BinarySearch(p.subjects, subject)
	if found || subject == noSubject {
		return p, false
	}
	old, ok := p.size.known()
	before := len(p.subjects)
	// One allocation of the final length: slices.Insert on a clone (whose capacity is its
	// length) allocated and copied the list twice, for every subject placement tries.
	subs := make([]string, before+1)
	copy(subs, p.subjects[:i])
	subs[i] = subject
	copy(subs[i+1:], p.subjects[i:])
	p.subjects = subs
	p.size = resized(p, old, ok, before, jsonListItemLen(subject))
	return p, true
}

// WithoutSubjects returns p without the given subjects and how many of them it held.
func (p TrustPolicy) WithoutSubjects(subjects ...string) (q TrustPolicy, removed int) {
	dropped := func(s string) bool { return slices.Contains(subjects, s) }
	if len(subjects) > dropScanMax {
		drop := make(map[string]bool, len(subjects))
		for _, s := range subjects {
			drop[s] = true
		}
		dropped = func(s string) bool { return drop[s] }
	}
	kept := make([]string, 0, len(p.subjects))
	delta := 0
	for _, s := range p.subjects {
		if dropped(s) {
			removed++
			delta -= jsonListItemLen(s)
		} else {
			kept = append(kept, s)
		}
	}
	if removed == 0 {
		return p, 0
	}
	old, ok := p.size.known()
	before := len(p.subjects)
	p.subjects = kept
	p.size = resized(p, old, ok, before, delta)
	return p, removed
}

// dropScanMax is the most subjects WithoutSubjects looks for by scanning rather than in a set:
// a collection after a deletion removes one or two subjects from a role, and building a map for
// them cost more than the scan (benchtool sim).
const dropScanMax = 8

// JSON renders the compact document that is sent to IAM: the policy's template (everything but
// the subject lists, rendered once per set of statements) joined around the subject list.
func (p TrustPolicy) JSON() (string, error) {
	parts, err := p.template()
	if err != nil || len(parts) < 2 {
		return p.render(p.subjects) // no template (a zero TrustPolicy) or no OIDC statement
	}
	subjects := p.subjects
	if len(subjects) == 0 {
		subjects = []string{noSubject}
	}
	// A list of plain subjects is written straight into the document: rendered apart first, it
	// was allocated and copied once more for every trust policy write (benchtool sim).
	n, plain := plainListLen(subjects)
	var list json.RawMessage
	if !plain {
		if list, err = marshalCompact(subjects); err != nil {
			return "", err
		}
		n = len(list)
	}
	var b strings.Builder
	b.Grow(len(parts[0]) + len(parts[len(parts)-1]) + (len(parts)-1)*(n+len(parts[1])))
	b.WriteString(parts[0])
	for _, part := range parts[1:] {
		if plain {
			writePlainList(&b, subjects)
		} else {
			b.Write(list)
		}
		b.WriteString(part)
	}
	return b.String(), nil
}

// docTemplate memoises a policy's document cut at its subject lists. Statements and top-level
// fields never change after parsing (TrustPolicy values share them), so every value derived
// with WithSubject or WithoutSubjects shares its template.
type docTemplate struct {
	once  sync.Once
	parts []string
	err   error
}

// subjectHole stands in for the subject list while the template is rendered: a string no policy
// holds (NUL is escaped as \u0000 in JSON, so its rendering is unique to this marker).
const subjectHole = "\x00credential-webhook:subjects\x00"

// template returns the document split at each OIDC statement's subject list: the subject list
// goes between consecutive parts.
func (p TrustPolicy) template() ([]string, error) {
	if p.tmpl == nil {
		return nil, nil
	}
	p.tmpl.once.Do(func() {
		js, err := p.render([]string{subjectHole})
		if err != nil {
			p.tmpl.err = err
			return
		}
		hole, err := marshalCompact([]string{subjectHole})
		if err != nil {
			p.tmpl.err = err
			return
		}
		parts := strings.Split(js, string(hole))
		if len(parts)-1 != p.OIDCStatements() {
			p.tmpl.err = fmt.Errorf("internal error: trust policy template has %d subject lists for %d OIDC statements", len(parts)-1, p.OIDCStatements())
			return
		}
		p.tmpl.parts = parts
	})
	return p.tmpl.parts, p.tmpl.err
}

// render builds the document with subjects by marshalling every part (the template's source,
// and the reference its tests compare JSON with).
func (p TrustPolicy) render(subjects []string) (string, error) {
	doc := cloneRaw(p.top)
	if doc == nil {
		doc = map[string]json.RawMessage{}
	}
	stmts := make([]json.RawMessage, 0, len(p.statements))
	for _, st := range p.statements {
		raw, err := st.render(subjects)
		if err != nil {
			return "", err
		}
		stmts = append(stmts, raw)
	}
	var err error
	if p.single && len(stmts) == 1 {
		doc["Statement"] = stmts[0]
	} else if doc["Statement"], err = marshalCompact(stmts); err != nil {
		return "", err
	}
	out, err := marshalCompact(doc)
	return string(out), err
}

// Size is the length in characters of JSON(), the number IAM compares with ACLSizePerRole.
func (p TrustPolicy) Size() (int, error) {
	if p.size == nil {
		return p.measure()
	}
	p.size.once.Do(func() {
		p.size.n, p.size.err = p.measure()
		p.size.ready.Store(true)
	})
	return p.size.n, p.size.err
}

func (p TrustPolicy) measure() (int, error) {
	js, err := p.JSON()
	if err != nil {
		return 0, err
	}
	return utf8.RuneCountInString(js), nil
}

func (st *statement) render(subjects []string) (json.RawMessage, error) {
	if st.kind != kindOIDC {
		return marshalCompact(st.fields)
	}
	fields := cloneRaw(st.fields)
	cond := make(map[string]map[string]json.RawMessage, len(st.condition)+1)
	for op, keys := range st.condition {
		cond[op] = cloneRaw(keys)
	}
	if len(subjects) == 0 {
		subjects = []string{noSubject}
	}
	list, err := marshalCompact(subjects)
	if err != nil {
		return nil, err
	}
	if cond["StringLike"] == nil {
		cond["StringLike"] = map[string]json.RawMessage{}
	}
	cond["StringLike"][st.issuer+":sub"] = list
	if fields["Condition"], err = marshalCompact(cond); err != nil {
		return nil, err
	}
	return marshalCompact(fields)
}

// marshalSubjects is marshalCompact(subjects) for a subject list. ServiceAccount subjects are
// printable ASCII without quotes or backslashes, which JSON writes as they are, so the list is
// joined by hand; anything else goes through encoding/json. Every trust policy write renders its
// list, and encoding/json's reflection was most of the rendering (benchtool sim).
// JSON writes its lists the same way without this intermediate (plainListLen, writePlainList).
func marshalSubjects(subjects []string) (json.RawMessage, error) {
	n, plain := plainListLen(subjects)
	if subjects == nil || !plain {
		return marshalCompact(subjects) // nil: null, as encoding/json has it
	}
	var b strings.Builder
	b.Grow(n)
	writePlainList(&b, subjects)
	return json.RawMessage(b.String()), nil
}

// plainListLen reports whether every subject is printable ASCII without quotes or backslashes
// (JSON writes them as they are), and the length of the list's JSON if so.
func plainListLen(subjects []string) (n int, plain bool) {
	n = 2 // []
	for i, s := range subjects {
		if !isPlainJSON(s) {
			return 0, false
		}
		if n += len(s) + 2; i > 0 {
			n++ // ,
		}
	}
	return n, true
}

// Bytes repeated in every lane of a 64-bit word, for isPlainJSON.
const (
	lanes01 = 0x0101010101010101
	lanes80 = 0x8080808080808080
)

// isPlainJSON reports whether every byte of s is printable ASCII (0x20-0x7e) other than '"' and
// '\\': a JSON string of s is s in quotes. Eight bytes at a time (the tests check it against the
// byte-by-byte rule): every trust policy write checks every subject, and byte by byte it was
// 4.6 % of benchtool sim's CPU.
func isPlainJSON(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		// Any lane below 0x20, from 0x80 up, or 0x7f, '"' or '\\' (a zero lane of x^c) leaves
		// its top bit set here. (A borrow only leaves a lane that matched, so no match is missed;
		// the byte loop below decides.)
		below := (x - 0x20*lanes01) &^ x
		if (below|x|zeroLanes(x^0x7f*lanes01)|zeroLanes(x^'"'*lanes01)|zeroLanes(x^'\\'*lanes01))&lanes80 != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// zeroLanes sets the top bit of a lane of its result only if x has a zero lane (the lowest
// zero lane's for sure; the lanes above it may follow from its borrow).
func zeroLanes(x uint64) uint64 { return (x - lanes01) &^ x }

// writePlainList writes the JSON array of subjects that plainListLen found plain.
func writePlainList(b *strings.Builder, subjects []string) {
	b.WriteByte('[')
	for i, s := range subjects {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
	}
	b.WriteByte(']')
}

// marshalCompact marshals without HTML escaping: "\u003c" would cost IAM quota for nothing.
// RawMessage values are compacted by encoding/json, so whitespace in input documents is dropped.
func marshalCompact(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encoding policy: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func cloneRaw(m map[string]json.RawMessage) map[string]json.RawMessage {
	if m == nil {
		return nil
	}
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func firstN(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// CanonicalJSON re-encodes any JSON document with sorted keys and no whitespace, so two policy
// documents can be compared for meaning rather than formatting. Input may be URL-encoded.
func CanonicalJSON(doc string) (string, error) {
	js, err := DecodePolicyDocument(doc)
	if err != nil {
		return "", err
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("parsing policy document: %w", err)
	}
	out, err := marshalCompact(v)
	return string(out), err
}
