package iamproxy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// signJWT makes a compact JWS with the stdlib only: RS256 for RSA keys,
// ES256 for P-256 keys.
func signJWT(t testing.TB, key crypto.Signer, claims map[string]any) string {
	t.Helper()
	alg := "RS256"
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		alg = "ES256"
	}
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": alg, "typ": "JWT", "kid": "test"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(signed))
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		s, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = s
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPolicySize(t *testing.T) {
	pretty := "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [ ]\n}"
	for _, tc := range []struct {
		name string
		doc  string
		want int
	}{
		{"compact", `{"a":"b"}`, 9},
		{"whitespace between tokens is free", pretty, len(`{"Version":"2012-10-17","Statement":[]}`)},
		{"whitespace inside strings counts", `{"a": "b c"}`, len(`{"a":"b c"}`)},
		{"not JSON: all whitespace dropped", "{ not json", len("{notjson")},
		{"characters, not bytes", `{"ä":"ö"}`, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := policySize(tc.doc); got != tc.want {
				t.Errorf("policySize(%q) = %d, want %d", tc.doc, got, tc.want)
			}
		})
	}
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"abc", "abc", true},
		{"abc", "abd", false},
		{"*", "", true},
		{"*", "anything", true},
		{"system:serviceaccount:ns:*", "system:serviceaccount:ns:sa", true},
		{"system:serviceaccount:ns:*", "system:serviceaccount:other:sa", false},
		{"system:serviceaccount:*:backup-*", "system:serviceaccount:x:backup-1", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"*a", "bab", false},
		{"**", "x", true},
		{"ä?", "äö", true},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestTrustDecision(t *testing.T) {
	const iss = "oidc.example/id/A"
	const fed = `"Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.example/id/A"}`
	const act = `"Action":"sts:AssumeRoleWithWebIdentity"`
	stmt := func(effect, cond string) string {
		return `{"Effect":"` + effect + `",` + fed + `,` + act + `,"Condition":` + cond + `}`
	}
	id := webIdentity{Issuer: iss, Sub: "system:serviceaccount:ns:sa", Aud: []string{"sts.amazonaws.com"}}
	for _, tc := range []struct {
		name    string
		doc     string
		id      webIdentity
		allowed bool
		reason  string // substring of the denial reason
	}{
		{"sub listed", `{"Statement":[` + stmt("Allow", `{"StringEquals":{"oidc.example/id/A:aud":"sts.amazonaws.com"},"StringLike":{"oidc.example/id/A:sub":["x","system:serviceaccount:ns:sa"]}}`) + `]}`, id, true, ""},
		{"sub by glob", `{"Statement":` + stmt("Allow", `{"StringLike":{"oidc.example/id/A:sub":"system:serviceaccount:ns:*"}}`) + `}`, id, true, ""},
		{"sub under StringEquals", `{"Statement":[` + stmt("Allow", `{"StringEquals":{"oidc.example/id/A:sub":"system:serviceaccount:ns:sa"}}`) + `]}`, id, true, ""},
		{"condition key case-insensitive", `{"Statement":[` + stmt("Allow", `{"StringEquals":{"OIDC.example/id/A:SUB":"system:serviceaccount:ns:sa"}}`) + `]}`, id, true, ""},
		{"sub not listed", `{"Statement":[` + stmt("Allow", `{"StringLike":{"oidc.example/id/A:sub":["system:serviceaccount:ns:other"]}}`) + `]}`, id, false, "does not match"},
		{"aud mismatch", `{"Statement":[` + stmt("Allow", `{"StringEquals":{"oidc.example/id/A:aud":"other"},"StringLike":{"oidc.example/id/A:sub":"*"}}`) + `]}`, id, false, ":aud"},
		{"other issuer", `{"Statement":[` + stmt("Allow", `{"StringLike":{"oidc.example/id/A:sub":"*"}}`) + `]}`, webIdentity{Issuer: "evil.example", Sub: id.Sub, Aud: id.Aud}, false, "principal"},
		{"wrong action", `{"Statement":[{"Effect":"Allow",` + fed + `,"Action":"sts:AssumeRole"}]}`, id, false, "action"},
		{"action list and case", `{"Statement":[{"Effect":"Allow",` + fed + `,"Action":["s3:GetObject","STS:AssumeRoleWithWebIdentity"]}]}`, id, true, ""},
		{"explicit deny wins", `{"Statement":[` + stmt("Allow", `{"StringLike":{"oidc.example/id/A:sub":"*"}}`) + `,` + stmt("Deny", `{"StringEquals":{"oidc.example/id/A:sub":"system:serviceaccount:ns:sa"}}`) + `]}`, id, false, "explicitly denies"},
		{"StringNotEquals", `{"Statement":[` + stmt("Allow", `{"StringNotEquals":{"oidc.example/id/A:sub":"system:serviceaccount:ns:sa"}}`) + `]}`, id, false, "does not match"},
		{"unknown condition key", `{"Statement":[` + stmt("Allow", `{"StringEquals":{"aws:SourceIp":"1.2.3.4"}}`) + `]}`, id, false, "not available"},
		{"unsupported operator", `{"Statement":[` + stmt("Allow", `{"IpAddress":{"oidc.example/id/A:sub":"x"}}`) + `]}`, id, false, "not supported"},
		{"principal star", `{"Statement":[{"Effect":"Allow","Principal":"*",` + act + `}]}`, id, true, ""},
		{"empty", `{"Version":"2012-10-17","Statement":[]}`, id, false, "no Allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allowed, reason, err := trustDecision(tc.doc, tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if allowed != tc.allowed || !strings.Contains(reason, tc.reason) {
				t.Errorf("trustDecision = %v %q, want %v containing %q", allowed, reason, tc.allowed, tc.reason)
			}
		})
	}
	if _, _, err := trustDecision("{", id); err == nil {
		t.Error("malformed policy: want error")
	}
}

func TestVerifyToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	rk := rsaKey(t)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other := rsaKey(t)
	keys := []crypto.PublicKey{ek.Public(), rk.Public()}
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{"iss": "https://oidc.example", "sub": "system:serviceaccount:ns:sa", "aud": []string{"sts.amazonaws.com"}, "exp": now.Add(time.Hour).Unix(), "nbf": now.Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	valid := signJWT(t, rk, claims(nil))
	parts := strings.Split(valid, ".")
	for _, tc := range []struct {
		name  string
		token string
		keys  []crypto.PublicKey
		err   string // "" = valid
	}{
		{"RS256", valid, keys, ""},
		{"ES256", signJWT(t, ek, claims(nil)), keys, ""},
		{"aud as string", signJWT(t, rk, claims(func(c map[string]any) { c["aud"] = "sts.amazonaws.com" })), keys, ""},
		{"signed by another key", signJWT(t, other, claims(nil)), keys, "does not verify"},
		{"payload swapped", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x","iss":"i","exp":9999999999}`)) + "." + parts[2], keys, "does not verify"},
		{"alg none", base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".", keys, "not supported"},
		{"expired", signJWT(t, rk, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Second).Unix() })), keys, "expired"},
		{"no exp", signJWT(t, rk, claims(func(c map[string]any) { delete(c, "exp") })), keys, "no exp"},
		{"not yet valid", signJWT(t, rk, claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })), keys, "not valid before"},
		{"no sub", signJWT(t, rk, claims(func(c map[string]any) { delete(c, "sub") })), keys, "no sub"},
		{"no keys", valid, nil, "no token verification keys"},
		{"not a JWT", "garbage", keys, "compact JWS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := verifyToken(tc.token, tc.keys, now)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("verifyToken: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("verifyToken err = %v, want %q", err, tc.err)
			case tc.err == "" && (c.Sub != "system:serviceaccount:ns:sa" || len(c.Aud) != 1 || c.Iss != "https://oidc.example"):
				t.Fatalf("claims = %+v", c)
			}
		})
	}
}

func TestParsePublicKeys(t *testing.T) {
	rk := rsaKey(t)
	ek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block := func(typ string, der []byte, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	pkix, perr := x509.MarshalPKIXPublicKey(rk.Public())
	pkcs8, p8err := x509.MarshalPKCS8PrivateKey(rk)
	ecder, eerr := x509.MarshalECPrivateKey(ek)
	for _, tc := range []struct {
		name string
		pem  string
		want int // keys; -1 = error
	}{
		{"PKIX public", block("PUBLIC KEY", pkix, perr), 1},
		{"PKCS1 public", block("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rk.PublicKey), nil), 1},
		{"PKCS1 private", block("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk), nil), 1},
		{"PKCS8 private", block("PRIVATE KEY", pkcs8, p8err), 1},
		{"EC private plus params block", block("EC PARAMETERS", []byte{6, 5, 43, 129, 4, 0, 34}, nil) + block("EC PRIVATE KEY", ecder, eerr), 1},
		{"two keys", block("PUBLIC KEY", pkix, perr) + block("EC PRIVATE KEY", ecder, eerr), 2},
		{"empty", "", -1},
		{"corrupt key", block("PUBLIC KEY", []byte("nope"), nil), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParsePublicKeys([]byte(tc.pem))
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("want error, got %d keys", len(keys))
				}
				return
			}
			if err != nil || len(keys) != tc.want {
				t.Fatalf("ParsePublicKeys = %d keys, %v; want %d", len(keys), err, tc.want)
			}
		})
	}
	// A private key file must yield the public key that verifies its tokens.
	keys, err := ParsePublicKeys([]byte(block("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk), nil)))
	if err != nil {
		t.Fatal(err)
	}
	tok := signJWT(t, rk, map[string]any{"iss": "i", "sub": "s", "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := verifyToken(tok, keys, time.Now()); err != nil {
		t.Fatalf("token signed by the key file's private key: %v", err)
	}
}

func TestServiceOf(t *testing.T) {
	for _, tc := range []struct {
		name, auth, query, action, want string
	}{
		{"sigv4 iam", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=ab", "", "GetRole", "iam"},
		{"sigv4 sts", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=ab", "", "GetCallerIdentity", "sts"},
		{"sigv4a", "AWS4-ECDSA-P256-SHA256 Credential=test/20260101/iam/aws4_request, SignedHeaders=host", "", "GetRole", "iam"},
		{"presigned", "", "X-Amz-Credential=test%2F20260101%2Fus-east-1%2Fsts%2Faws4_request", "GetCallerIdentity", "sts"},
		{"unsigned web identity", "", "", "AssumeRoleWithWebIdentity", "sts"},
		{"unsigned other", "", "", "GetRole", "unknown"},
		{"garbage auth", "Bearer x", "", "GetRole", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/?"+tc.query, nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			if got := serviceOf(r, tc.action); got != tc.want {
				t.Errorf("serviceOf = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSetSummaryEntry(t *testing.T) {
	const head = `<GetAccountSummaryResponse><GetAccountSummaryResult><SummaryMap>`
	const tail = `</SummaryMap></GetAccountSummaryResult></GetAccountSummaryResponse>`
	const other = `<entry><key>RolesQuota</key><value>1000</value></entry>`
	for _, tc := range []struct{ name, in, want string }{
		{"replace", head + other + "<entry><key>AssumeRolePolicySizeQuota</key><value>2048</value></entry>" + tail,
			head + other + "<entry><key>AssumeRolePolicySizeQuota</key><value>4096</value></entry>" + tail},
		{"replace with whitespace", head + "<entry>\n <key>AssumeRolePolicySizeQuota</key>\n <value>2048</value>\n</entry>" + other + tail,
			head + "<entry><key>AssumeRolePolicySizeQuota</key><value>4096</value></entry>" + other + tail},
		{"add when missing", head + other + tail,
			head + other + "<entry><key>AssumeRolePolicySizeQuota</key><value>4096</value></entry>" + tail},
		{"not a summary", "<x/>", "<x/>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(setSummaryEntry([]byte(tc.in), "AssumeRolePolicySizeQuota", 4096)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestReadFormRestoresBody(t *testing.T) {
	small := "Action=CreateRole&RoleName=r&AssumeRolePolicyDocument=%7B%22a%22%3A1%7D&Version=2010-05-08"
	big := strings.Repeat("x", maxFormBytes+10)
	for _, tc := range []struct {
		name, method, ctype, body, action string
	}{
		{"query form", http.MethodPost, "application/x-www-form-urlencoded; charset=utf-8", small, "CreateRole"},
		{"not a form", http.MethodPost, "application/xml", small, ""},
		{"PUT with form type (S3 object)", http.MethodPut, "application/x-www-form-urlencoded", small, ""},
		{"oversized form passes unread", http.MethodPost, "application/x-www-form-urlencoded", big, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "/?Version=x", strings.NewReader(tc.body))
			r.Header.Set("Content-Type", tc.ctype)
			form, err := readForm(r)
			if err != nil {
				t.Fatal(err)
			}
			if got := form.Get("Action"); got != tc.action {
				t.Errorf("Action = %q, want %q", got, tc.action)
			}
			if form.Get("Version") == "" {
				t.Error("URL query parameters lost")
			}
			rest, err := io.ReadAll(r.Body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rest, []byte(tc.body)) {
				t.Errorf("body after readForm differs: %d bytes, want %d", len(rest), len(tc.body))
			}
		})
	}
}

func TestFaultsApply(t *testing.T) {
	on := Faults{ThrottleRate: 0.5}
	for _, tc := range []struct {
		name string
		f    Faults
		key  string
		want bool
	}{
		{"all actions", on, "iam:GetRole", true},
		{"nothing configured", Faults{Actions: []string{"iam:GetRole"}}, "iam:GetRole", false},
		{"full name", Faults{ThrottleRate: 1, Actions: []string{"iam:GetRole"}}, "iam:GetRole", true},
		{"bare action", Faults{ServerErrorRate: 1, Actions: []string{"GetRole"}}, "iam:GetRole", true},
		{"service glob", Faults{Latency: 1, Actions: []string{"sts:*"}}, "iam:GetRole", false},
		{"service glob hit", Faults{Latency: 1, Actions: []string{"sts:*"}}, "sts:AssumeRoleWithWebIdentity", true},
		{"other action", Faults{ThrottleRate: 1, Actions: []string{"iam:UpdateAssumeRolePolicy"}}, "iam:GetRole", false},
		// S3 only when named: the IAM and STS faults of other tests leave the bucket proof alone.
		{"S3 not in all actions", on, "s3:PutObject", false},
		{"S3 not in a bare action", Faults{ThrottleRate: 1, Actions: []string{"PutObject"}}, "s3:PutObject", false},
		{"S3 not in *", Faults{ThrottleRate: 1, Actions: []string{"*"}}, "s3:PutObject", false},
		{"S3 named", Faults{ThrottleRate: 1, Actions: []string{"s3:GetObject"}}, "s3:GetObject", true},
		{"S3 glob", Faults{ServerErrorRate: 1, Actions: []string{"s3:*"}}, "s3:DeleteObject", true},
		{"S3 other action", Faults{ServerErrorRate: 1, Actions: []string{"s3:GetObject"}}, "s3:PutObject", false},
	} {
		if got := tc.f.applies(tc.key); got != tc.want {
			t.Errorf("%s: applies(%q) = %v, want %v", tc.name, tc.key, got, tc.want)
		}
	}
}

func TestDrawFaultDeterministicBySeed(t *testing.T) {
	run := func(seed int64) []faultKind {
		p, err := New("http://127.0.0.1:1", Options{Faults: Faults{ThrottleRate: 0.3, ServerErrorRate: 0.3, Seed: seed}})
		if err != nil {
			t.Fatal(err)
		}
		var out []faultKind
		for range 64 {
			_, k, _ := p.drawFault("iam:GetRole")
			out = append(out, k)
		}
		return out
	}
	a, b, c := run(7), run(7), run(8)
	if !slices.Equal(a, b) {
		t.Fatal("same seed gave different fault sequences")
	}
	if slices.Equal(a, c) {
		t.Fatal("different seeds gave the same 64 draws")
	}
	seen := map[faultKind]int{}
	for _, k := range a {
		seen[k]++
	}
	if seen[faultNone] == 0 || seen[faultThrottle] == 0 || seen[faultServerError] == 0 {
		t.Fatalf("64 draws at 0.3/0.3 should hit every outcome: %v", seen)
	}
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upstream string
		opts     Options
	}{
		{"no scheme", "127.0.0.1:5000", Options{}},
		{"rates over 1", "http://127.0.0.1:1", Options{Faults: Faults{ThrottleRate: 0.7, ServerErrorRate: 0.7}}},
		{"negative rate", "http://127.0.0.1:1", Options{Faults: Faults{ThrottleRate: -1}}},
		{"missing key file", "http://127.0.0.1:1", Options{TokenKeyFile: "/nonexistent/sa.pub"}},
	} {
		if _, err := New(tc.upstream, tc.opts); err == nil {
			t.Errorf("%s: New succeeded, want error", tc.name)
		}
	}
}

func TestS3Action(t *testing.T) {
	for _, tc := range []struct{ method, target, want string }{
		{http.MethodPut, "/b/k?x-id=PutObject", "PutObject"},
		{http.MethodGet, "/b/.credential-webhook/readiness/x?x-id=GetObject", "GetObject"},
		{http.MethodHead, "/b", "HeadBucket"},
		{http.MethodHead, "/b/", "HeadBucket"},
		{http.MethodHead, "/b/k/with/slashes", "HeadObject"},
		{http.MethodPut, "/b", "PUT"},
	} {
		r := httptest.NewRequest(tc.method, "http://127.0.0.1"+tc.target, nil)
		if got := s3Action(r); got != tc.want {
			t.Errorf("s3Action(%s %s) = %q, want %q", tc.method, tc.target, got, tc.want)
		}
	}
}

func TestAccessKeyID(t *testing.T) {
	for auth, want := range map[string]string{
		"AWS4-HMAC-SHA256 Credential=ASIAXYZ/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00": "ASIAXYZ",
		"AWS4-ECDSA-P256-SHA256 Credential=ASIAXYZ/20260101/s3/aws4_request, SignedHeaders=host":                   "ASIAXYZ",
		"":                                    "",
		"AWS4-HMAC-SHA256 SignedHeaders=host": "",
	} {
		if got := accessKeyID(auth); got != want {
			t.Errorf("accessKeyID(%q) = %q, want %q", auth, got, want)
		}
	}
}
