package iamproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// policySize is the size IAM charges a policy document against a quota:
// IAM ignores whitespace, so the document is measured in compact form.
// A document that is not JSON (moto will reject it) is measured without
// any whitespace at all.
func policySize(doc string) int {
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(doc)); err == nil {
		return utf8.RuneCount(buf.Bytes())
	}
	n := 0
	for _, r := range doc {
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

// webIdentity is what STS knows about a caller of AssumeRoleWithWebIdentity.
type webIdentity struct {
	Issuer string   // token "iss" without scheme, as IAM names the provider
	Sub    string   // token "sub"
	Aud    []string // token "aud"
}

// trustDecision evaluates a role's trust policy (plain JSON, already
// URL-decoded) the way IAM does for sts:AssumeRoleWithWebIdentity, for the
// subset of the policy language trust policies use: Allow/Deny statements
// with Action, Principal Federated (or "*") and String{Equals,Like,NotEquals,
// NotLike} conditions on "<issuer>:sub" and "<issuer>:aud". An explicit
// Deny wins; otherwise one matching Allow suffices. reason explains a denial.
func trustDecision(doc string, id webIdentity) (allowed bool, reason string, err error) {
	var p struct {
		Statement json.RawMessage
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return false, "", fmt.Errorf("parse trust policy: %w", err)
	}
	var stmts []statement
	if err := json.Unmarshal(p.Statement, &stmts); err != nil {
		var one statement
		if err2 := json.Unmarshal(p.Statement, &one); err2 != nil {
			return false, "", fmt.Errorf("parse trust policy statements: %w", err)
		}
		stmts = []statement{one}
	}
	var reasons []string
	for i, s := range stmts {
		why := s.mismatch(id)
		switch {
		case why == "" && strings.EqualFold(s.Effect, "Deny"):
			return false, fmt.Sprintf("statement %d explicitly denies", i), nil
		case why == "" && strings.EqualFold(s.Effect, "Allow"):
			allowed = true
		case why != "":
			reasons = append(reasons, fmt.Sprintf("statement %d: %s", i, why))
		}
	}
	if allowed {
		return true, "", nil
	}
	if len(reasons) == 0 {
		return false, "trust policy has no Allow statement", nil
	}
	return false, strings.Join(reasons, "; "), nil
}

type statement struct {
	Effect    string
	Action    strList
	Principal json.RawMessage
	Condition map[string]map[string]strList
}

// mismatch returns why s does not apply to id, or "" when it does.
func (s statement) mismatch(id webIdentity) string {
	const action = "sts:assumerolewithwebidentity"
	actionOK := false
	for _, a := range s.Action {
		// Action names are case-insensitive in IAM.
		if globMatch(strings.ToLower(a), action) {
			actionOK = true
			break
		}
	}
	if !actionOK {
		return "action is not sts:AssumeRoleWithWebIdentity"
	}
	if !s.trustsProvider(id.Issuer) {
		return fmt.Sprintf("principal is not Federated oidc-provider/%s", id.Issuer)
	}
	for op, keys := range s.Condition {
		for key, want := range keys {
			got, known := contextValues(key, id)
			if !known {
				return fmt.Sprintf("condition key %q is not available for this token", key)
			}
			if ok, supported := conditionHolds(op, got, want); !supported {
				return fmt.Sprintf("condition operator %q not supported by iamproxy", op)
			} else if !ok {
				return fmt.Sprintf("%s %s=%q does not match %q", op, key, got, []string(want))
			}
		}
	}
	return ""
}

func (s statement) trustsProvider(issuer string) bool {
	var wildcard string
	if json.Unmarshal(s.Principal, &wildcard) == nil {
		return wildcard == "*"
	}
	var p struct{ Federated strList }
	if err := json.Unmarshal(s.Principal, &p); err != nil {
		return false
	}
	for _, f := range p.Federated {
		if strings.HasSuffix(f, ":oidc-provider/"+issuer) {
			return true
		}
	}
	return false
}

// contextValues returns the request's values for an IAM condition key.
// Condition key names are case-insensitive.
func contextValues(key string, id webIdentity) (values []string, known bool) {
	switch strings.ToLower(key) {
	case strings.ToLower(id.Issuer + ":sub"):
		return []string{id.Sub}, true
	case strings.ToLower(id.Issuer + ":aud"):
		return id.Aud, true
	}
	return nil, false
}

// conditionHolds applies a string condition operator: a positive operator
// holds when any request value matches any policy value; a negated one when
// none does.
func conditionHolds(op string, got, want []string) (holds, supported bool) {
	var match func(pattern, s string) bool
	negate := false
	switch op {
	case "StringEquals":
		match = func(p, s string) bool { return p == s }
	case "StringLike":
		match = globMatch
	case "StringNotEquals":
		match, negate = func(p, s string) bool { return p == s }, true
	case "StringNotLike":
		match, negate = globMatch, true
	default:
		return false, false
	}
	matched := false
	for _, g := range got {
		for _, w := range want {
			if match(w, g) {
				matched = true
			}
		}
	}
	return matched != negate, true
}

// globMatch reports whether s matches an IAM StringLike pattern, where "*"
// matches any sequence (also empty) and "?" any single character.
func globMatch(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	pi, si := 0, 0
	star, mark := -1, 0 // last "*" in pattern, and where in s it started matching
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			// Let the last "*" swallow one more character and retry.
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// strList decodes the policy language's "string or list of strings"; IAM
// also accepts bare numbers and booleans as condition values.
type strList []string

func (l *strList) UnmarshalJSON(b []byte) error {
	var raw any
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	items, ok := raw.([]any)
	if !ok {
		items = []any{raw}
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		switch v := it.(type) {
		case string:
			out = append(out, v)
		case float64:
			out = append(out, strconv.FormatFloat(v, 'f', -1, 64))
		case bool:
			out = append(out, strconv.FormatBool(v))
		default:
			return fmt.Errorf("unexpected policy value %v", it)
		}
	}
	*l = out
	return nil
}
