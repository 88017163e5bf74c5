package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/prometheus/client_golang/prometheus"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/stscreds"
	"go.klusters.dev/credential-webhook/testenv/arm"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// Hostile input against the handler serve builds (providerConfig.build + admission.NewHandler,
// as in fixtures_test.go), with moto behind the iamproxy, which counts every IAM call, and the
// local ARM server (whose counters are checked too, but a lookup attempt also shows in the answer:
// a client ID or a pending marker). Whoever can create a ServiceAccount can write
// its annotations (DESIGN.md, "Security model"), so every case below is something a user can
// send; each must end admitted, with a clear warning (or a 4xx for a body no apiserver sends),
// and without a single IAM write or an ARM call it should not make.

const (
	hostileOperator = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	hostileIssuer   = "https://oidc.demo.example/id/DEMO"
	hostileSeed     = "arn:aws:iam::123456789012:role/kubestash-selfhost"
	// hostileOutsideSub is a real identity in ARM, outside the allowed scopes: a bypass of the
	// scope check would resolve it and patch in its client ID.
	hostileOutsideSub = "00000000-0000-0000-0000-0000000000ff"
)

var operatorGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}

// iamWrites lists every IAM action that changes something; the webhook's IAMAPI may call all of
// them (providers/aws/iam.go), so all of them are watched, not only the trust-policy ones.
var iamWrites = []string{
	"iam:CreateRole", "iam:UpdateAssumeRolePolicy", "iam:AttachRolePolicy", "iam:PutRolePolicy",
	"iam:TagRole", "iam:DeleteRole", "iam:UpdateRole", "iam:DetachRolePolicy", "iam:DeleteRolePolicy",
	"iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary", "iam:UntagRole",
}

// hostileEnv is one webhook handler and the cloud emulators behind it.
type hostileEnv struct {
	motoSrv *moto.Server
	proxy   *iamproxy.Proxy
	arm     *arm.Server
	h       http.Handler
	logs    *lockedBuffer
	key     *rsa.PrivateKey // signs ServiceAccount tokens the proxy accepts
	// authenticated says whether reviews count as sent by the apiserver (as over a client
	// certificate with an allowed name): only then may admission write to a cloud at all, so
	// the hostile cases run authenticated, the worst case.
	authenticated atomic.Bool
}

// newHostileEnv starts moto, the counting proxy and the ARM server, creates the seed role (and
// an "admin" role outside the allowlist, so that a bypass would find something to clone), and
// builds the handler. creds, when set, are the webhook's own AWS credentials.
func newHostileEnv(t *testing.T, creds *aws.Credentials) *hostileEnv {
	t.Helper()
	ctx := context.Background()
	m := moto.Start(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := iamproxy.New(m.Endpoint, iamproxy.Options{Quota: 2048, PublicKeys: []crypto.PublicKey{&key.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Start(t)
	direct := moto.ConfigFor(m.Endpoint) // setup goes around the proxy, so it is not counted
	for _, name := range []string{"kubestash-selfhost", "admin"} {
		if _, err := moto.CreateSeedRole(ctx, direct, name, "/", hostileIssuer); err != nil {
			t.Fatal(err)
		}
	}

	// Only 127.0.0.1, and nothing from this machine's AWS configuration.
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL": proxy.URL, "AWS_REGION": moto.Region, "AWS_DEFAULT_REGION": moto.Region,
		"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_SESSION_TOKEN": "",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "", "AWS_ROLE_ARN": "", "AWS_WEB_IDENTITY_TOKEN_FILE": "",
		"AWS_CONFIG_FILE": filepath.Join(dir, "no-config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "no-credentials"),
	} {
		t.Setenv(k, v)
	}
	if creds != nil {
		t.Setenv("AWS_ACCESS_KEY_ID", creds.AccessKeyID)
		t.Setenv("AWS_SECRET_ACCESS_KEY", creds.SecretAccessKey)
		t.Setenv("AWS_SESSION_TOKEN", creds.SessionToken)
	}

	az := arm.Start(t)
	az.PutIdentity(arm.Demo())
	az.PutIdentity(arm.Identity{SubscriptionID: hostileOutsideSub, ResourceGroup: arm.DemoResourceGroup, Name: arm.DemoIdentityName})
	az.PutIdentity(arm.Identity{SubscriptionID: arm.DemoSubscriptionID, ResourceGroup: "other-rg", Name: arm.DemoIdentityName})
	az.SetEnv(t)

	logs := &lockedBuffer{}
	p := providerConfig{
		namespaces:        "demo,backup-*",
		requesters:        hostileOperator,
		awsSeeds:          "arn:aws:iam::123456789012:role/kubestash-*",
		roleCreationLimit: 100,
		azureScopes:       "/subscriptions/" + arm.DemoSubscriptionID + "/resourceGroups/" + arm.DemoResourceGroup,
		azureARMEndpoint:  az.URL,
		azurePositiveTTL:  time.Hour,
		azureNegativeTTL:  time.Second,
	}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := p.build(ctx, deps{log: log, reg: prometheus.NewRegistry(), self: map[string]bool{testSelf: true}})
	if err != nil {
		t.Fatal(err)
	}
	e := &hostileEnv{motoSrv: m, proxy: proxy, arm: az, logs: logs, key: key}
	e.authenticated.Store(true)
	e.h = admission.NewHandler(admission.Options{Routes: w.routes, Log: log,
		Authenticated: func(*http.Request) bool { return e.authenticated.Load() }})
	return e
}

// hostileReview is one AdmissionReview to send.
type hostileReview struct {
	route        string // default /mutate/serviceaccounts
	kind, group  string // default ServiceAccount, ""
	ns, name, op string // defaults demo, sa-hostile, CREATE
	generateName bool   // send no name, as for metadata.generateName
	user         string // default the operator
	groups       []string
	ann, oldAnn  map[string]string
	dryRun       bool
	raw          []byte // the body verbatim, instead of all of the above
}

func (r hostileReview) body(t *testing.T, uid string) []byte {
	t.Helper()
	if r.raw != nil {
		return r.raw
	}
	obj := func(ann map[string]string) map[string]any {
		o := map[string]any{"apiVersion": "v1", "kind": r.kind, "metadata": map[string]any{
			"name": r.name, "namespace": r.ns, "annotations": ann,
			"labels": map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue},
		}}
		if r.group == "batch" {
			o["apiVersion"] = "batch/v1"
		}
		return o
	}
	req := map[string]any{
		"uid":       uid,
		"kind":      map[string]string{"group": r.group, "version": "v1", "kind": r.kind},
		"resource":  map[string]string{"group": r.group, "version": "v1", "resource": strings.ToLower(r.kind) + "s"},
		"namespace": r.ns, "name": r.name, "operation": r.op,
		"userInfo": map[string]any{"username": r.user, "groups": r.groups},
		"object":   obj(r.ann), "dryRun": r.dryRun,
	}
	if r.op == "UPDATE" {
		req["oldObject"] = obj(r.oldAnn)
	}
	b, err := json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostileAnswer is what came back.
type hostileAnswer struct {
	code     int
	body     []byte
	uid      string
	allowed  bool
	patch    []map[string]any
	warnings []string
}

// patched returns the value the patch gives annotation key, if it sets it.
func (a hostileAnswer) patched(key string) (string, bool) {
	ptr := "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(key, "~", "~0"), "/", "~1")
	for _, op := range a.patch {
		switch {
		case op["path"] == ptr && op["op"] != "remove":
			v, _ := op["value"].(string)
			return v, true
		case op["path"] == "/metadata/annotations" && op["op"] == "add":
			if m, ok := op["value"].(map[string]any); ok {
				if v, ok := m[key].(string); ok {
					return v, true
				}
			}
		}
	}
	return "", false
}

func (e *hostileEnv) send(t *testing.T, r hostileReview, timeout string) hostileAnswer {
	t.Helper()
	if r.route == "" {
		r.route = "/mutate/serviceaccounts"
	}
	if r.kind == "" {
		r.kind = "ServiceAccount"
	}
	if r.ns == "" {
		r.ns = "demo"
	}
	if r.op == "" {
		r.op = "CREATE"
	}
	// A name by default: without one the plugins stop early, and a bypass of an earlier check
	// would go unnoticed.
	if r.name == "" && !r.generateName {
		r.name = "sa-hostile"
	}
	if r.user == "" {
		r.user, r.groups = hostileOperator, operatorGroups
	}
	uid := fmt.Sprintf("h-%d", time.Now().UnixNano())
	req := httptest.NewRequest(http.MethodPost, r.route+"?timeout="+url.QueryEscape(timeout), bytes.NewReader(r.body(t, uid)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	a := hostileAnswer{code: rec.Code, body: rec.Body.Bytes()}
	if rec.Code != http.StatusOK {
		return a
	}
	var out struct {
		Response struct {
			UID      string
			Allowed  bool
			Patch    []byte
			Warnings []string
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("answer is not JSON: %v: %.300s", err, rec.Body.Bytes())
	}
	a.uid, a.allowed, a.warnings = out.Response.UID, out.Response.Allowed, out.Response.Warnings
	if len(out.Response.Patch) > 0 {
		if err := json.Unmarshal(out.Response.Patch, &a.patch); err != nil {
			t.Fatalf("patch is not JSON: %v", err)
		}
	}
	if r.raw == nil && a.uid != uid {
		t.Fatalf("answer uid %q, sent %q", a.uid, uid)
	}
	return a
}

// iamWritesSince returns the IAM write actions the proxy saw since the last ResetCalls.
func (e *hostileEnv) iamWritesSince() map[string]int {
	out := map[string]int{}
	for k, n := range e.proxy.Calls() {
		if slices.Contains(iamWrites, k) && n > 0 {
			out[k] = n
		}
	}
	return out
}

// trustSubjects reads a derived role's trust policy straight from moto.
func (e *hostileEnv) trustSubjects(t *testing.T, role string) string {
	t.Helper()
	out, err := iam.NewFromConfig(moto.ConfigFor(e.motoSrv.Endpoint)).GetRole(context.Background(), &iam.GetRoleInput{RoleName: aws.String(role)})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func azureAnn(sub, rg, name string) map[string]string {
	return map[string]string{annotations.AzureSubscriptionID: sub, annotations.AzureRGName: rg, annotations.AzureMIName: name}
}

// TestHostileAnnotations runs the table of hostile requests. The first two cases are controls
// that prove the counters see what a real assignment does; every later case must leave IAM
// unwritten (and, where the decision needs no cloud at all, uncalled) and ARM untouched.
func TestHostileAnnotations(t *testing.T) {
	e := newHostileEnv(t, nil)
	seedAnn := func(v string) map[string]string { return map[string]string{annotations.SeedRole: v} }
	const derived0 = hostileSeed + "-0"
	// Huge but under the route's 512 KiB object limit, so the parsers themselves are exercised; larger
	// objects are refused before any plugin runs (admission TestMaxObjectBytesRefusesBeforePlugins).
	const mib = 400 << 10

	// A review nobody authenticated only plans, even the operator's: the role ARN and the
	// claim come back, IAM is not written (the write follows persistence, in the sweeper).
	e.authenticated.Store(false)
	plan := e.send(t, hostileReview{name: "sample-backup-daemon-demo-session-1778072138", ann: seedAnn(hostileSeed)}, "10s")
	pendingPlan, _ := plan.patched(annotations.Pending)
	if v, _ := plan.patched(annotations.AWSRoleARN); plan.code != 200 || !plan.allowed || v != derived0 || !strings.HasPrefix(pendingPlan, "aws:") {
		t.Fatalf("unauthenticated plan: HTTP %d, patch %v, warnings %q", plan.code, plan.patch, plan.warnings)
	}
	if w := e.iamWritesSince(); len(w) != 0 {
		t.Fatalf("an unauthenticated review wrote to IAM: %v", w)
	}
	e.authenticated.Store(true)

	// Control: the operator's ServiceAccount is assigned, which writes IAM.
	ctl := e.send(t, hostileReview{name: "sample-backup-daemon-demo-session-1778072138", ann: seedAnn(hostileSeed)}, "10s")
	if v, _ := ctl.patched(annotations.AWSRoleARN); ctl.code != 200 || !ctl.allowed || v != derived0 {
		t.Fatalf("control assignment: HTTP %d, patch %v, warnings %q", ctl.code, ctl.patch, ctl.warnings)
	}
	if w := e.iamWritesSince(); w["iam:CreateRole"] != 1 {
		t.Fatalf("control: the proxy counted IAM writes %v, want one CreateRole", w)
	}

	// Control: the operator's in-scope Azure identity is looked up in ARM. Either the lookup
	// succeeds (client ID patched) or it is attempted and deferred (pending marker): in a test
	// binary where TestFixtures ran first, Go already trusts that test's ARM certificate and MSAL
	// serves its cached token, so this server's counters cannot see the attempt. What the
	// hostile cases below must never produce is either outcome.
	before := e.arm.Calls()
	az := e.send(t, hostileReview{name: "app-restore-restore", ann: azureAnn(arm.DemoSubscriptionID, arm.DemoResourceGroup, arm.DemoIdentityName)}, "3s")
	clientID, _ := az.patched(annotations.AzureClientID)
	pending, _ := az.patched(annotations.Pending)
	if !az.allowed || (clientID != arm.DemoClientID && !strings.HasPrefix(pending, "azure:")) {
		t.Fatalf("control: in-scope identity was not looked up: patch %v, warnings %q", az.patch, az.warnings)
	}
	if after := e.arm.Calls(); after.Gets > before.Gets && clientID != arm.DemoClientID {
		t.Fatalf("control: ARM resolved the identity but the patch is %v", az.patch)
	}

	type outcome int
	const (
		noCloud    outcome = iota // decided before any cloud call
		readsOnly                 // IAM reads are fine, writes are not
		badRequest                // a body no apiserver sends: 4xx, nothing called
	)
	cases := []struct {
		name string
		r    hostileReview
		want outcome
		warn string // substring of one warning ("" for none expected)
		code int    // for badRequest
	}{
		{"400 KiB seed annotation", hostileReview{ann: seedAnn(hostileSeed + strings.Repeat("x", mib))}, noCloud, "longer than", 0},
		{"newline after the seed ARN", hostileReview{ann: seedAnn(hostileSeed + "\n")}, noCloud, "whitespace, control or non-ASCII", 0},
		{"newline inside the seed ARN", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/kubestash-\nselfhost")}, noCloud, "whitespace, control or non-ASCII", 0},
		{"Cyrillic а in arn:аws", hostileReview{ann: seedAnn("arn:аws:iam::123456789012:role/kubestash-selfhost")}, noCloud, "non-ASCII", 0},
		{"Cyrillic е in the role name", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/kubestash-sеlfhost")}, noCloud, "non-ASCII", 0},
		{"fullwidth digits in the account", hostileReview{ann: seedAnn("arn:aws:iam::１２３456789012:role/kubestash-selfhost")}, noCloud, "non-ASCII", 0},
		{"zero-width space in the ARN", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/kubestash-\u200bselfhost")}, noCloud, "non-ASCII", 0},
		{"literal * in the seed", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/kubestash-*")}, noCloud, "role name", 0},
		{"aws-cn partition", hostileReview{ann: seedAnn("arn:aws-cn:iam::123456789012:role/kubestash-selfhost")}, noCloud, "is not allowed on this cluster", 0},
		{"another account", hostileReview{ann: seedAnn("arn:aws:iam::999999999999:role/kubestash-selfhost")}, noCloud, "is not allowed on this cluster", 0},
		{"seed outside the allowlist (admin)", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/admin")}, noCloud, "is not allowed on this cluster", 0},
		{"allowlisted prefix as a path: kubestash-x/../admin", hostileReview{ann: seedAnn("arn:aws:iam::123456789012:role/kubestash-x/../admin")}, readsOnly, "seed role not found at its ARN", 0},
		{"requester not allowed", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, ann: seedAnn(hostileSeed)}, noCloud, `requester "mallory" is not allowed`, 0},
		{"cluster admin is not an allowed requester", hostileReview{user: "kubernetes-admin", groups: []string{"system:masters", "system:authenticated"}, ann: seedAnn(hostileSeed)}, noCloud, "is not allowed to request", 0},
		{"operator name with a Cyrillic о", hostileReview{user: strings.Replace(hostileOperator, "operator", "оperator", 1), groups: operatorGroups, ann: seedAnn(hostileSeed)}, noCloud, "is not allowed to request", 0},
		{"operator name with a trailing space", hostileReview{user: hostileOperator + " ", groups: operatorGroups, ann: seedAnn(hostileSeed)}, noCloud, "is not allowed to request", 0},
		{"namespace not allowed", hostileReview{ns: "kube-system", ann: seedAnn(hostileSeed)}, noCloud, `namespace "kube-system" is not allowed`, 0},
		{"wildcard ServiceAccount name (forged review)", hostileReview{name: "*", ann: seedAnn(hostileSeed)}, noCloud, "invalid ServiceAccount subject", 0},
		{"generateName (no name yet)", hostileReview{generateName: true, ann: seedAnn(hostileSeed)}, noCloud, "generateName", 0},
		{"borrow a derived role via eks.amazonaws.com/role-arn", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, name: "borrower",
			ann: map[string]string{annotations.AWSRoleARN: derived0}}, noCloud, "", 0},
		{"borrow with the seed too, on UPDATE", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, name: "borrower", op: "UPDATE",
			ann: map[string]string{annotations.AWSRoleARN: derived0, annotations.SeedRole: hostileSeed}, oldAnn: seedAnn(hostileSeed)}, noCloud, `requester "mallory" is not allowed`, 0},
		{"user switches the operator's ServiceAccount to admin", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, name: "sample-backup-daemon-demo-session-1778072138", op: "UPDATE",
			ann: map[string]string{annotations.SeedRole: "arn:aws:iam::123456789012:role/admin", annotations.AWSRoleARN: derived0}, oldAnn: map[string]string{annotations.SeedRole: hostileSeed, annotations.AWSRoleARN: derived0}}, noCloud, "is not allowed on this cluster", 0},
		{"forged pending marker on CREATE", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, name: "mallory", ann: map[string]string{annotations.Pending: "aws", annotations.SeedRole: hostileSeed}}, noCloud, "annotation credential-webhook.klusters.dev/pending is managed by credential-webhook; it was removed", 0},
		{"forged pending marker changed on UPDATE", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, name: "mallory", op: "UPDATE",
			ann: map[string]string{annotations.Pending: "forged"}, oldAnn: map[string]string{annotations.Pending: "aws"}}, noCloud, "the change was reverted", 0},
		{"forged hold annotations on a Job", hostileReview{route: "/mutate/jobs", kind: "Job", group: "batch", user: "mallory", groups: []string{"system:authenticated"}, name: "backup",
			ann: map[string]string{annotations.HeldSince: "2000-01-01T00:00:00Z", annotations.HoldReason: "forged"}}, noCloud, "annotation credential-webhook.klusters.dev/held-since is managed by credential-webhook", 0},
		{"dry run by the operator", hostileReview{name: "dry-run-sa", dryRun: true, ann: seedAnn(hostileSeed)}, readsOnly, "", 0},
		{"Azure identity in another subscription", hostileReview{ann: azureAnn(hostileOutsideSub, arm.DemoResourceGroup, arm.DemoIdentityName)}, noCloud, "outside the allowed scopes", 0},
		{"Azure identity in another resource group", hostileReview{ann: azureAnn(arm.DemoSubscriptionID, "other-rg", arm.DemoIdentityName)}, noCloud, "outside the allowed scopes", 0},
		{"Azure resource group climbing out: backup-rg/../other-rg", hostileReview{ann: azureAnn(arm.DemoSubscriptionID, arm.DemoResourceGroup+"/../other-rg", arm.DemoIdentityName)}, noCloud, "is invalid", 0},
		{"Azure resource group with a Cyrillic а", hostileReview{ann: azureAnn(arm.DemoSubscriptionID, "bаckup-rg", arm.DemoIdentityName)}, noCloud, "is invalid", 0},
		{"Azure 400 KiB identity name", hostileReview{ann: azureAnn(arm.DemoSubscriptionID, arm.DemoResourceGroup, strings.Repeat("m", mib))}, noCloud, "is invalid", 0},
		{"Azure identity with a newline", hostileReview{ann: azureAnn(arm.DemoSubscriptionID, arm.DemoResourceGroup, arm.DemoIdentityName+"\n")}, noCloud, "is invalid", 0},
		{"Azure identity, requester not allowed", hostileReview{user: "mallory", groups: []string{"system:authenticated"}, ann: azureAnn(arm.DemoSubscriptionID, arm.DemoResourceGroup, arm.DemoIdentityName)}, noCloud, `requester "mallory" is not allowed`, 0},
		{"duplicate annotation keys (JSON smuggling)", hostileReview{raw: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"dup","kind":{"group":"","version":"v1","kind":"ServiceAccount"},"namespace":"demo","name":"dup","operation":"CREATE","userInfo":{"username":"` + hostileOperator + `"},"object":{"metadata":{"name":"dup","annotations":{"` + annotations.SeedRole + `":"` + hostileSeed + `","` + annotations.SeedRole + `":"arn:aws:iam::123456789012:role/admin"}}}}}`)}, badRequest, "", 400},
		{"8 MiB body", hostileReview{ann: map[string]string{"x": strings.Repeat("x", 8<<20)}}, badRequest, "", 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.ResetCalls()
			armBefore := e.arm.Calls()
			ans := e.send(t, tc.r, "10s")
			if tc.want == badRequest {
				if ans.code != tc.code {
					t.Fatalf("HTTP %d, want %d: %.300s", ans.code, tc.code, ans.body)
				}
			} else {
				if ans.code != 200 || !ans.allowed {
					t.Fatalf("not admitted: HTTP %d: %.500s", ans.code, ans.body)
				}
				if tc.warn != "" && !slices.ContainsFunc(ans.warnings, func(w string) bool { return strings.Contains(w, tc.warn) }) {
					t.Errorf("warnings %q lack %q", ans.warnings, tc.warn)
				}
				if tc.warn == "" && tc.want != readsOnly && len(ans.warnings) > 0 {
					t.Errorf("unexpected warnings %q", ans.warnings)
				}
				for _, w := range ans.warnings {
					// A deferred lookup or assignment means a cloud call was attempted.
					if strings.Contains(w, "did not finish") {
						t.Errorf("a cloud call was attempted: %q", w)
					}
					if len(w) > 1024 {
						t.Errorf("a %d-byte warning echoes the input: %.200q", len(w), w)
					}
				}
				for _, key := range []string{annotations.AWSRoleARN, annotations.AzureClientID, annotations.AzureTenantID} {
					if v, ok := ans.patched(key); ok && !tc.r.dryRun {
						t.Errorf("patch sets %s=%q", key, v)
					}
				}
				for _, k := range []string{annotations.Pending, annotations.HeldSince, annotations.HoldReason} {
					if v, ok := ans.patched(k); ok && (tc.r.op != "UPDATE" || v != tc.r.oldAnn[k]) {
						t.Errorf("patch sets our %s=%q for requester %q", k, v, tc.r.user)
					}
				}
			}
			if w := e.iamWritesSince(); len(w) > 0 {
				t.Errorf("IAM writes: %v", w)
			}
			if calls := e.proxy.Calls(); tc.want != readsOnly && len(calls) > 0 {
				t.Errorf("IAM calls where the decision needs none: %v", calls)
			}
			if a := e.arm.Calls(); a.ARM != armBefore.ARM || a.Tokens != armBefore.Tokens {
				t.Errorf("ARM calls %+v → %+v", armBefore, a)
			}
			t.Logf("HTTP %d, warnings %q, IAM calls %v", ans.code, ans.warnings, e.proxy.Calls())
		})
	}

	// Nothing mallory sent made it into a trust policy.
	doc := e.trustSubjects(t, "kubestash-selfhost-0")
	for _, sub := range []string{"demo:borrower", "demo:mallory", "demo:*", "kube-system:"} {
		if strings.Contains(doc, "system:serviceaccount:"+sub) {
			t.Errorf("trust policy of kubestash-selfhost-0 lists %s: %s", sub, doc)
		}
	}
	if !strings.Contains(doc, "system:serviceaccount:demo:sample-backup-daemon-demo-session-1778072138") {
		t.Errorf("the control subject is missing: %s", doc)
	}
}

// jwtRE matches three base64url segments, the shape of any JWT (a ServiceAccount token).
var jwtRE = regexp.MustCompile(`[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}`)

// TestSecretsNeverLogged runs the AWS assignment path (JSON logs at debug level, the webhook
// holding STS session credentials as it does with IRSA) and then the aws-credentials sidecar as
// the binary runs it (run(), its JSON logger, a rejected token first so errors are logged too),
// and asserts no access key id, secret key, session token or JWT appears in any log line.
func TestSecretsNeverLogged(t *testing.T) {
	// The webhook's own credentials: a session from moto's STS (127.0.0.1), so each part is a
	// distinctive string that a leak would show.
	m := moto.Start(t)
	ctx := context.Background()
	out, err := sts.NewFromConfig(moto.ConfigFor(m.Endpoint)).AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/credential-webhook"), RoleSessionName: aws.String("webhook"),
	})
	if err != nil {
		t.Fatal(err)
	}
	own := aws.Credentials{AccessKeyID: aws.ToString(out.Credentials.AccessKeyId), SecretAccessKey: aws.ToString(out.Credentials.SecretAccessKey),
		SessionToken: aws.ToString(out.Credentials.SessionToken)}
	e := newHostileEnv(t, &own)
	secrets := map[string]string{"webhook access key id": own.AccessKeyID, "webhook secret key": own.SecretAccessKey, "webhook session token": own.SessionToken}

	// The assignment path: assign, assign again (steady state), dry run, refused, and deferred
	// after IAM failed until the time budget ran out (the error is logged).
	sa := "sample-backup-daemon-demo-session-1778072138"
	seedAnn := map[string]string{annotations.SeedRole: hostileSeed}
	for _, r := range []hostileReview{
		{name: sa, ann: seedAnn}, {name: sa, ann: seedAnn}, {name: "dry", dryRun: true, ann: seedAnn},
		{name: "x", ann: map[string]string{annotations.SeedRole: "arn:aws:iam::123456789012:role/admin"}},
	} {
		if a := e.send(t, r, "10s"); a.code != 200 {
			t.Fatalf("HTTP %d: %s", a.code, a.body)
		}
	}
	e.proxy.SetFaults(iamproxy.Faults{ServerErrorRate: 1, Actions: []string{"iam:UpdateAssumeRolePolicy"}})
	if a := e.send(t, hostileReview{name: "deferred-sa", ann: seedAnn}, "1s"); !slices.ContainsFunc(a.warnings, func(w string) bool { return strings.Contains(w, "did not finish") }) {
		t.Fatalf("the failure path did not run: %q", a.warnings)
	}
	e.proxy.SetFaults(iamproxy.Faults{})
	webhookLog := e.logs.String()
	for _, msg := range []string{"assigned derived role", "assignment deferred to the sweeper", "seed role not allowed"} {
		if !strings.Contains(webhookLog, msg) {
			t.Fatalf("the webhook log lacks %q; the test did not exercise that path:\n%s", msg, webhookLog)
		}
	}

	// The sidecar path, against the role the webhook just assigned: first a token signed by an
	// unknown key (refused, logged, retried), then the kubelet "rotates" in a good one.
	dir := t.TempDir()
	tokenFile, credFile := filepath.Join(dir, "token"), filepath.Join(dir, "credentials")
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	bad, good := signSAToken(t, other, "demo", sa), signSAToken(t, e.key, "demo", sa)
	secrets["rejected token"], secrets["token"] = bad, good
	writeFileAtomic(t, tokenFile, bad)
	t.Setenv(stscreds.EnvRoleARN, hostileSeed+"-0")
	t.Setenv(stscreds.EnvTokenFile, tokenFile)
	t.Setenv(stscreds.EnvCredentialsFile, credFile)
	t.Setenv(stscreds.EnvPodName, sa+"-x7k2p")
	sidecarLog := &lockedBuffer{}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() { done <- run(runCtx, []string{stscreds.Subcommand}, &lockedBuffer{}, sidecarLog) }()
	waitUntil(t, "a logged retry", func() bool { return strings.Contains(sidecarLog.String(), "retrying") })
	writeFileAtomic(t, tokenFile, good)
	waitUntil(t, "the credentials file", func() bool { return stscreds.Check(credFile) == nil })
	cancel()
	if rc := <-done; rc != 0 {
		t.Fatalf("aws-credentials exited %d:\n%s", rc, sidecarLog.String())
	}
	file, err := os.ReadFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(file), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			secrets["sidecar "+k] = v
		}
	}
	if len(secrets) != 8 {
		t.Fatalf("credentials file has unexpected keys: %v", slices.Sorted(maps.Keys(secrets)))
	}

	for name, logText := range map[string]string{"webhook": webhookLog, "sidecar": sidecarLog.String()} {
		lines := strings.Split(strings.TrimSpace(logText), "\n")
		for _, l := range lines {
			if !json.Valid([]byte(l)) {
				t.Errorf("%s log line is not JSON: %.200s", name, l)
			}
		}
		for what, s := range secrets {
			if s != "" && strings.Contains(logText, s) {
				t.Errorf("%s log contains the %s", name, what)
			}
		}
		for _, marker := range []string{"Signature=", "Credential=", "X-Amz-Security-Token", "aws_secret_access_key"} {
			if strings.Contains(logText, marker) {
				t.Errorf("%s log contains %q", name, marker)
			}
		}
		if m := jwtRE.FindString(logText); m != "" {
			t.Errorf("%s log contains a JWT-shaped string %.40s...", name, m)
		}
		t.Logf("%s: %d JSON log lines checked", name, len(lines))
	}
}

// signSAToken signs a ServiceAccount token like the kube-apiserver's (RS256, audience STS).
func signSAToken(t *testing.T, key *rsa.PrivateKey, ns, name string) string {
	t.Helper()
	now := time.Now()
	seg := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := seg(map[string]any{"alg": "RS256", "kid": "hostile"}) + "." + seg(map[string]any{
		"iss": hostileIssuer, "sub": "system:serviceaccount:" + ns + ":" + name, "aud": []string{"sts.amazonaws.com"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// writeFileAtomic replaces path like the kubelet's atomic writer: readers never see half a file.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond; the bound only keeps a broken test from hanging.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writers of a logger.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
