package awscheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

func TestParseBucketCheck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want BucketCheck
		err  bool
	}{
		{"off", BucketCheckOff, false},
		{"head", BucketCheckHead, false},
		{"write", BucketCheckWrite, false},
		{"", "", true},
		{"Write", "", true},
		{"read", "", true},
		{" head", "", true},
	} {
		got, err := ParseBucketCheck(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ParseBucketCheck(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	if _, err := ParseBucketCheck(string(DefaultBucketCheck)); err != nil {
		t.Errorf("the default %q does not parse: %v", DefaultBucketCheck, err)
	}
}

func TestBucketNameProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"b1b", true},
		{"my-backups.eu-west-1", true},
		{"0123456789", true},
		{strings.Repeat("a", 63), true},
		{"docexamplebucket1-s3alias", true}, // an access point alias works as a bucket name
		{"ab", false},
		{strings.Repeat("a", 64), false},
		{"My-Bucket", false},
		{"under_score", false},
		{"-leading", false},
		{"trailing-", false},
		{".dot", false},
		{"dot.", false},
		{"two..dots", false},
		{"192.168.5.4", false},
		{"xn--bucket", false},
		{"sthree-bucket", false},
		{"amzn-s3-demo-bucket", false},
		{"arn:aws:s3:eu-west-1:123456789012:accesspoint/ap", false},
		{"bucket/key", false},
		{"evil.com:443", false},
		{"user@host", false},
		{"spa ce", false},
		{"bucket\x00", false},
		{"bücket", false},
		{"", false},
	} {
		if why := BucketNameProblem(tc.name); (why == "") != tc.ok {
			t.Errorf("BucketNameProblem(%q) = %q; want valid %v", tc.name, why, tc.ok)
		}
	}
}

func TestBucketNames(t *testing.T) {
	many := make([]string, MaxBuckets+1)
	for i := range many {
		many[i] = fmt.Sprintf("bucket-%02d", i)
	}
	for _, tc := range []struct {
		name, value string
		want        []string
		problem     string // substring; "" when the value is accepted
	}{
		{"absent", "", nil, ""},
		{"one", "b1b", []string{"b1b"}, ""},
		{"KubeStash list", "b1b,b2b", []string{"b1b", "b2b"}, ""},
		{"blanks and empty entries", " b1b , ,b2b,, ", []string{"b1b", "b2b"}, ""},
		{"repeats dropped", "b1b,b2b,b1b", []string{"b1b", "b2b"}, ""},
		{"only separators", " , ,", nil, ""},
		{"exactly the cap", strings.Join(many[:MaxBuckets], ","), many[:MaxBuckets], ""},
		{"over the cap", strings.Join(many, ","), nil, fmt.Sprintf("names %d buckets, more than %d", MaxBuckets+1, MaxBuckets)},
		{"repeats do not count towards the cap", strings.Join(append(many[:MaxBuckets:MaxBuckets], many[0], many[1]), ","), many[:MaxBuckets], ""},
		{"one bad name refuses all", "b1b,Bad_Name", nil, `names "Bad_Name", which is not a bucket name`},
		{"ARN", "arn:aws:s3:::b1b", nil, "not a bucket name"},
		{"semicolons are not separators", "b1b;b2b", nil, "not a bucket name"},
		{"too long before splitting", strings.Repeat(",", maxBucketAnnotation+1), nil, "bytes long"},
		{"long bad name is cut in the reason", strings.Repeat("X", 1000), nil, "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, problem := BucketNames(tc.value)
			if tc.problem == "" && problem != "" || tc.problem != "" && !strings.Contains(problem, tc.problem) {
				t.Fatalf("problem = %q, want %q", problem, tc.problem)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("names = %q, want %q", got, tc.want)
			}
			if problem != "" && (got != nil || len(problem) > 300) {
				t.Errorf("refused value gave names %q and a %d-byte reason", got, len(problem))
			}
		})
	}
}

// responseError is what the SDK returns for an HTTP answer: the API error inside a response error.
func responseError(status int, code string, header http.Header) error {
	var apiErr error = &smithy.GenericAPIError{Code: code, Message: "msg " + code}
	return &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status, Header: header}},
		Err:      apiErr,
	}
}

func TestS3Refusal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		refused bool
	}{
		{"denied", responseError(403, "AccessDenied", nil), true},
		{"HEAD denied (no body)", responseError(403, "Forbidden", nil), true},
		{"no such bucket", responseError(404, "NoSuchBucket", nil), true},
		{"HEAD missing bucket", responseError(404, "NotFound", nil), true},
		{"wrong region", responseError(301, "PermanentRedirect", nil), true},
		{"HEAD wrong region", responseError(301, "MovedPermanently", nil), true},
		{"wrong region in the signature", responseError(400, "AuthorizationHeaderMalformed", nil), true},
		{"session not yet valid", responseError(403, "InvalidAccessKeyId", nil), true},
		{"KMS key denied", responseError(400, "KMS.AccessDeniedException", nil), true},
		{"unknown 403 code", responseError(403, "SomethingNew", nil), true},
		{"throttled", responseError(503, "SlowDown", nil), false},
		{"internal error", responseError(500, "InternalError", nil), false},
		{"HEAD 503", responseError(503, "ServiceUnavailable", nil), false},
		{"clock skew is the check's problem", responseError(403, "RequestTimeTooSkewed", nil), false},
		{"request timeout", responseError(400, "RequestTimeout", nil), false},
		{"unknown 400 code", responseError(400, "InvalidArgument", nil), false},
		{"temporary redirect", responseError(307, "TemporaryRedirect", nil), false},
		{"network", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{"deadline", context.DeadlineExceeded, false},
		{"wrapped denial", fmt.Errorf("operation error S3: PutObject: %w", responseError(403, "AccessDenied", nil)), true},
	} {
		code, msg, refused := s3Refusal(tc.err)
		if refused != tc.refused {
			t.Errorf("%s: refused = %v (%s: %s), want %v", tc.name, refused, code, msg, tc.refused)
		}
	}
}

func TestRedirectRegion(t *testing.T) {
	h := func(region string) http.Header { return http.Header{"X-Amz-Bucket-Region": {region}} }
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"permanent redirect", responseError(301, "PermanentRedirect", h("eu-west-1")), "eu-west-1"},
		{"signed for the wrong region", responseError(400, "AuthorizationHeaderMalformed", h("ap-southeast-2")), "ap-southeast-2"},
		{"GovCloud", responseError(301, "MovedPermanently", h("us-gov-west-1")), "us-gov-west-1"},
		{"no header", responseError(301, "PermanentRedirect", nil), ""},
		{"denied, with a header", responseError(403, "AccessDenied", h("eu-west-1")), ""},
		{"header that is no region", responseError(301, "PermanentRedirect", h("evil.example.com")), ""},
		{"header with a path", responseError(301, "PermanentRedirect", h("eu-west-1/../x")), ""},
		{"nil", nil, ""},
		{"network", errors.New("connection refused"), ""},
	} {
		if got := redirectRegion(tc.err); got != tc.want {
			t.Errorf("%s: redirectRegion = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// bucketEnv is newEnv with buckets in moto and a checker that proves them.
type bucketEnv struct {
	*env
	cfg     aws.Config
	direct  *s3.Client // straight to moto
	metrics *BucketMetrics
}

func newBucketEnv(t *testing.T) *bucketEnv {
	e := newEnv(t)
	ctx := t.Context()
	cfg, err := config.LoadDefaultConfig(ctx) // through the proxy (AWS_ENDPOINT_URL)
	if err != nil {
		t.Fatal(err)
	}
	motoCfg := moto.ConfigFor(e.motoURL)
	for _, b := range []string{"backups-a", "backups-b"} {
		if err := moto.CreateBucket(ctx, motoCfg, b, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := moto.CreateBucket(ctx, motoCfg, "backups-versioned", true); err != nil {
		t.Fatal(err)
	}
	return &bucketEnv{env: e, cfg: cfg, direct: moto.S3Client(motoCfg), metrics: NewBucketMetrics(prometheus.NewRegistry())}
}

func (e *bucketEnv) checker(mode BucketCheck, s3c S3API) *Checker {
	c := New(IAMRoleLister{IAM: e.iam}, e.tokens, e.sts, 1)
	c.BucketCheck, c.S3, c.BucketMetrics = mode, s3c, e.metrics
	return c
}

// leftovers lists every object version and delete marker under ReadinessPrefix in bucket.
func (e *bucketEnv) leftovers(t *testing.T, bucket string) []string {
	t.Helper()
	out, err := e.direct.ListObjectVersions(t.Context(), &s3.ListObjectVersionsInput{Bucket: aws.String(bucket), Prefix: aws.String(ReadinessPrefix)})
	if err != nil {
		t.Fatalf("list %s: %v", bucket, err)
	}
	var left []string
	for _, v := range out.Versions {
		left = append(left, aws.ToString(v.Key)+"@"+aws.ToString(v.VersionId))
	}
	for _, m := range out.DeleteMarkers {
		left = append(left, "delete marker "+aws.ToString(m.Key))
	}
	return left
}

func (e *bucketEnv) sa(t *testing.T, role, buckets string) *corev1.ServiceAccount {
	ann := map[string]string{annotations.SeedRole: e.seedARN, annotations.AWSRoleARN: role}
	if buckets != "-" {
		ann[annotations.BucketNames] = buckets
	}
	sa := sessionSA("sample-backup-daemon-demo-session-1778072138", ann)
	sa.UID = types.UID("0b6a4a5e-5d52-4c8e-9d35-3f3ab2a4c001")
	return sa
}

// The bucket proof against moto's S3 behind the iamproxy, with the credentials moto's STS
// issued for the role. moto does not evaluate IAM policies on S3 requests (it authorizes
// nothing unless started with INITIAL_NO_AUTH_ACTION_COUNT, which would refuse the test
// fixtures' own "test" keys too), so S3's refusals here are a missing bucket (moto's own
// answer) and AccessDenied while a role's permissions propagate (the iamproxy's).
func TestBucketProofAgainstS3(t *testing.T) {
	e := newBucketEnv(t)
	ctx := t.Context()
	role := e.derivedRole(t, "0", true, "system:serviceaccount:demo:sample-backup-daemon-demo-session-1778072138")
	client := NewS3Client(e.cfg)

	for _, tc := range []struct {
		name    string
		mode    BucketCheck
		buckets string // "-": no annotation
		ready   bool
		reason  []string // substrings
		s3      map[string]int
	}{
		{"write proves each bucket", BucketCheckWrite, "backups-a,backups-b", true,
			[]string{"bucket access proven with the role's credentials on backups-a, backups-b", "written, read back and deleted", "accepted a token"},
			map[string]int{"s3:PutObject": 2, "s3:GetObject": 2, "s3:DeleteObject": 2}},
		{"head proves without writing", BucketCheckHead, "backups-a", true,
			[]string{"on backups-a (s3:HeadBucket)"}, map[string]int{"s3:HeadBucket": 1}},
		{"versioned bucket: the version written is deleted", BucketCheckWrite, "backups-versioned", true,
			[]string{"on backups-versioned"}, map[string]int{"s3:PutObject": 1, "s3:GetObject": 1, "s3:DeleteObject": 1}},
		{"missing bucket, write", BucketCheckWrite, "backups-a,no-such-bucket-here", false,
			[]string{"bucket no-such-bucket-here not usable yet", "s3:PutObject refused: NoSuchBucket"},
			// backups-a proven first; nothing to delete where the put was refused.
			map[string]int{"s3:PutObject": 2, "s3:GetObject": 1, "s3:DeleteObject": 1}},
		{"missing bucket, head", BucketCheckHead, "no-such-bucket-here", false,
			[]string{"bucket no-such-bucket-here not usable yet", "s3:HeadBucket refused: NotFound"}, map[string]int{"s3:HeadBucket": 1}},
		{"no annotation: STS decides", BucketCheckWrite, "-", true, []string{"1 times in a row"}, map[string]int{}},
		{"empty list: STS decides", BucketCheckWrite, " , ", true, []string{"1 times in a row"}, map[string]int{}},
		{"bad name: nothing is asked of S3", BucketCheckWrite, "backups-a,Backups_B", false,
			[]string{`names "Backups_B", which is not a bucket name`}, map[string]int{}},
		{"off: buckets not looked at", BucketCheckOff, "no-such-bucket-here", true, []string{"1 times in a row"}, map[string]int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.ResetCalls()
			ready, reason, err := e.checker(tc.mode, client).Check(ctx, e.sa(t, role, tc.buckets))
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if ready != tc.ready {
				t.Errorf("ready = %v (%s), want %v", ready, reason, tc.ready)
			}
			for _, want := range tc.reason {
				if !strings.Contains(reason, want) {
					t.Errorf("reason %q does not say %q", reason, want)
				}
			}
			if got := e.proxy.S3Calls(); !mapsEqual(got, tc.s3) {
				t.Errorf("S3 calls = %v, want %v", got, tc.s3)
			}
			for _, b := range []string{"backups-a", "backups-b", "backups-versioned"} {
				if left := e.leftovers(t, b); len(left) != 0 {
					t.Errorf("bucket %s keeps %v under %s", b, left, ReadinessPrefix)
				}
			}
		})
	}

	// A refused annotation costs no token and no STS call.
	t.Run("bad name: no token minted", func(t *testing.T) {
		e.proxy.ResetCalls()
		minted := e.tokens.calls
		if ready, _, _ := e.checker(BucketCheckWrite, client).Check(ctx, e.sa(t, role, "ab")); ready || e.tokens.calls != minted || e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"] != 0 {
			t.Errorf("ready %v, tokens minted %d, STS calls %d; want not ready, none, none", ready, e.tokens.calls-minted, e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"])
		}
	})

	// A role created moments ago is assumable (STS has its trust policy) before S3 has its
	// permissions: the bucket proof keeps the Job held until they arrive.
	t.Run("S3 propagation delay", func(t *testing.T) {
		fresh := e.derivedRole(t, "1", true, "system:serviceaccount:demo:sample-backup-daemon-demo-session-1778072138")
		e.proxy.SetS3PropagationDelay(time.Hour)
		defer e.proxy.SetS3PropagationDelay(0)
		e.proxy.ResetCalls()
		c := e.checker(BucketCheckWrite, client)
		ready, reason, err := c.Check(ctx, e.sa(t, fresh, "backups-a"))
		if err != nil || ready || !strings.Contains(reason, "bucket backups-a not usable yet") || !strings.Contains(reason, "s3:PutObject refused: AccessDenied") {
			t.Fatalf("during propagation: Check = %v %q %v; want not ready, AccessDenied on backups-a", ready, reason, err)
		}
		if got := e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"]; got != 1 {
			t.Errorf("STS calls = %d, want 1 (STS accepted, S3 refused)", got)
		}
		// The proxy resolved the signing key to the role's session: the requests were signed
		// with the assumed role's credentials, not the environment's "test" keys.
		rej := e.proxy.Rejections()
		if len(rej) != 1 || rej[0].Action != "s3:PutObject" || rej[0].Role != "kubestash-selfhost-1" {
			t.Errorf("rejections = %+v; want one s3:PutObject of role kubestash-selfhost-1", rej)
		}
		e.proxy.SetS3PropagationDelay(0)
		if ready, reason, err := c.Check(ctx, e.sa(t, fresh, "backups-a")); err != nil || !ready {
			t.Fatalf("after propagation: Check = %v %q %v; want ready", ready, reason, err)
		}
		if left := e.leftovers(t, "backups-a"); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	// Throttling and 5xx are failures of the check, retried by the sweeper, not a verdict; the
	// test object is deleted whatever failed after it was written.
	for _, tc := range []struct {
		name   string
		faults iamproxy.Faults
		want   string
		s3     map[string]int
	}{
		{"read fails, object deleted", iamproxy.Faults{ServerErrorRate: 1, Actions: []string{"s3:GetObject"}}, "s3:GetObject",
			map[string]int{"s3:PutObject": 1, "s3:GetObject": 1, "s3:DeleteObject": 1}},
		{"put throttled, delete tried anyway", iamproxy.Faults{ThrottleRate: 1, Actions: []string{"s3:PutObject"}}, "SlowDown",
			map[string]int{"s3:PutObject": 1, "s3:DeleteObject": 1}},
		{"delete fails: an error, not ready", iamproxy.Faults{ServerErrorRate: 1, Actions: []string{"s3:DeleteObject"}}, "s3:DeleteObject",
			map[string]int{"s3:PutObject": 1, "s3:GetObject": 1, "s3:DeleteObject": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.SetFaults(tc.faults)
			defer e.proxy.SetFaults(iamproxy.Faults{})
			e.proxy.ResetCalls()
			ready, _, err := e.checker(BucketCheckWrite, client).Check(ctx, e.sa(t, role, "backups-a"))
			if ready || err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bucket backups-a") {
				t.Errorf("Check = %v, %v; want an error naming backups-a and %s", ready, err, tc.want)
			}
			if got := e.proxy.S3Calls(); !mapsEqual(got, tc.s3) {
				t.Errorf("S3 calls = %v, want %v", got, tc.s3)
			}
			if tc.want == "s3:DeleteObject" {
				// The one case where the object stays: the error says so, and it is cleaned here.
				left := e.leftovers(t, "backups-a")
				if len(left) != 1 || !strings.Contains(err.Error(), "may be left behind") {
					t.Fatalf("after a failed delete: %v under the prefix, error %v; want the one object, named", left, err)
				}
				key, _, _ := strings.Cut(left[0], "@")
				if _, err := e.direct.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("backups-a"), Key: aws.String(key)}); err != nil {
					t.Fatal(err)
				}
			}
			if left := e.leftovers(t, "backups-a"); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}

	// AWS_ENDPOINT_URL_S3 moves S3 alone (STS stays on AWS_ENDPOINT_URL); a network failure is
	// an error of the check.
	t.Run("S3 unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := "http://" + l.Addr().String()
		_ = l.Close()
		t.Setenv("AWS_ENDPOINT_URL_S3", closed)
		cfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		e.proxy.ResetCalls()
		ready, _, err := e.checker(BucketCheckHead, NewS3Client(cfg)).Check(ctx, e.sa(t, role, "backups-a"))
		if ready || err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(closed, "http://")) {
			t.Errorf("Check = %v, %v; want an error naming %s", ready, err, closed)
		}
		if e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"] != 1 || len(e.proxy.S3Calls()) != 0 {
			t.Errorf("calls through the proxy: %v, S3 %v; want STS only", e.proxy.Calls(), e.proxy.S3Calls())
		}
	})

	for _, tc := range []struct {
		mode, result string
		min          float64
	}{
		{"write", BucketProven, 5}, {"write", BucketRefused, 2}, {"write", BucketInvalid, 2}, {"write", BucketError, 3},
		{"head", BucketProven, 1}, {"head", BucketRefused, 1}, {"head", BucketError, 1},
	} {
		if got := testutil.ToFloat64(e.metrics.checks.WithLabelValues(tc.mode, tc.result)); got < tc.min {
			t.Errorf("bucket_checks_total{mode=%s,result=%s} = %v, want at least %v", tc.mode, tc.result, got, tc.min)
		}
	}
}

// The S3 client has no credentials of its own: a request made without the assumed role's is
// anonymous, never signed as the server (that the proof's requests are signed with the role's
// session is shown by the propagation case above: the proxy resolved their key to the role).
func TestS3ClientHasNoCredentialsOfItsOwn(t *testing.T) {
	cfg := moto.ConfigFor("http://127.0.0.1:1")
	client := NewS3Client(cfg)
	if c := client.Options().Credentials; c != nil {
		t.Errorf("S3 client credentials %T; want none (anonymous)", c)
	}
	if !client.Options().UsePathStyle {
		t.Error("an endpoint override must be addressed path-style")
	}
	cfg.BaseEndpoint = nil
	if NewS3Client(cfg).Options().UsePathStyle {
		t.Error("without an endpoint override the SDK picks the addressing")
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
