package awscheck

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/prometheus/client_golang/prometheus"

	"go.klusters.dev/credential-webhook/annotations"
)

// The bucket proof. STS accepting a token says the trust policy has reached STS, not that the
// role's S3 permissions have reached S3: IAM propagates both separately, and a role created
// moments ago may be assumable before it may write. The KubeStash managers' own
// aws-bucket-access-test init container wrote, read and deleted a test object in each bucket
// before the backup ran; the check does the same with the credentials STS just issued, so a
// released Job finds its buckets usable.

// BucketCheck is what the readiness check proves on each bucket the ServiceAccount names
// (annotations.BucketNames).
type BucketCheck string

const (
	// BucketCheckOff proves nothing on the buckets: STS alone decides.
	BucketCheckOff BucketCheck = "off"
	// BucketCheckHead calls s3:HeadBucket (permission s3:ListBucket): the bucket exists and the
	// role's S3 permissions have reached it. It writes nothing.
	BucketCheckHead BucketCheck = "head"
	// BucketCheckWrite puts, reads back and deletes a small object under ReadinessPrefix
	// (s3:PutObject, s3:GetObject, s3:DeleteObject), what the upstream init container did and
	// what restic does to a repository.
	BucketCheckWrite BucketCheck = "write"
)

// DefaultBucketCheck is write. It mirrors the aws-bucket-access-test init container that this
// server replaces, so a KubeStash user loses no check by switching; and it proves what the backup
// needs (restic writes, reads and deletes, and a role allowed s3:ListBucket but not yet
// s3:PutObject fails the backup just the same). Its costs: three requests per bucket and Job,
// an object that lives for milliseconds under ReadinessPrefix (a noncurrent version in a
// versioned bucket when the role may not delete versions), and a role whose policy is limited to
// the repository's prefix is never proven (--aws-bucket-check=head or off for those).
const DefaultBucketCheck = BucketCheckWrite

// ParseBucketCheck parses a --aws-bucket-check value.
func ParseBucketCheck(s string) (BucketCheck, error) {
	switch m := BucketCheck(s); m {
	case BucketCheckOff, BucketCheckHead, BucketCheckWrite:
		return m, nil
	}
	return "", fmt.Errorf("bucket check %q: want off, head or write", s)
}

// ReadinessPrefix is the key prefix of the write check's test objects, reserved for it: every
// object is named <prefix><ServiceAccount UID> and deleted by the same check.
const ReadinessPrefix = ".credential-webhook/readiness/"

// MaxBuckets is the most buckets one ServiceAccount may name. KubeStash names the buckets of
// one backup's storages, a handful; more means a broken or hostile annotation, and each bucket
// costs up to three S3 requests per check.
const MaxBuckets = 16

// maxBucketAnnotation bounds the annotation before it is split: MaxBuckets names of 63
// characters, commas and some blanks.
const maxBucketAnnotation = 2048

// deleteTimeout bounds the deletion of a test object, which runs even when the check's own
// context has ended (max hold reached, leadership lost): it must not stay behind.
const deleteTimeout = 15 * time.Second

// maxMessage bounds what an S3 error message contributes to a reason (Events, annotations).
const maxMessage = 200

// BucketNames parses the value of annotations.BucketNames: names separated by commas, blanks
// around them ignored, empty entries and repeats dropped. The annotation is the KubeStash
// operator's to write but is treated as hostile: problem is non-empty (and names nil) when it
// is too long, names too many buckets or any name is not a valid bucket name, so that no odd
// request is ever sent.
func BucketNames(value string) (names []string, problem string) {
	if len(value) > maxBucketAnnotation {
		return nil, fmt.Sprintf("%s is %d bytes long, more than %d", annotations.BucketNames, len(value), maxBucketAnnotation)
	}
	seen := map[string]bool{}
	for _, n := range strings.Split(value, ",") {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		if why := BucketNameProblem(n); why != "" {
			return nil, fmt.Sprintf("%s names %q, which is not a bucket name: %s", annotations.BucketNames, truncate(n, 70), why)
		}
		seen[n] = true
		names = append(names, n)
	}
	if len(names) > MaxBuckets {
		return nil, fmt.Sprintf("%s names %d buckets, more than %d", annotations.BucketNames, len(names), MaxBuckets)
	}
	return names, ""
}

var ipv4Like = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$`)

// BucketNameProblem says why name is not a valid S3 general purpose bucket name ("" when it is):
// 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or
// digit, no two dots in a row, not an IPv4 address, none of the prefixes S3 reserves. The
// name becomes part of a host name or path: these rules also keep it from naming anything else
// (no ARN, no slash, no port, no user info). Names legal only before 2018 in us-east-1
// (uppercase, underscores) are refused: such a bucket is not proven, and its Jobs wait for
// --max-hold.
func BucketNameProblem(name string) string {
	if len(name) < 3 || len(name) > 63 {
		return "not 3 to 63 characters"
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return "only lowercase letters, digits, dots and hyphens are allowed"
		}
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return "must start and end with a letter or digit"
	}
	if strings.Contains(name, "..") {
		return "two dots in a row"
	}
	if ipv4Like.MatchString(name) {
		return "formatted as an IP address"
	}
	for _, p := range []string{"xn--", "sthree-", "amzn-s3-demo-"} {
		if strings.HasPrefix(name, p) {
			return "the prefix " + p + " is reserved"
		}
	}
	return ""
}

func alnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// S3API is the part of the S3 client the bucket proof calls (*s3.Client implements it). Every
// call gets the assumed role's credentials as an option; the client's own are never meant to
// be used (NewS3Client gives it none).
type S3API interface {
	HeadBucket(ctx context.Context, in *s3.HeadBucketInput, optFns ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
	PutObject(ctx context.Context, in *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	DeleteObject(ctx context.Context, in *s3.DeleteObjectInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

// NewS3Client returns the S3 client of the bucket proof: the region and endpoint of cfg (so
// AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, apply) and no credentials (anonymous), so that a
// request without the assumed role's credentials is never signed as this server. With an
// endpoint override (tests, S3-compatible gateways) requests are path-style: a bucket name
// cannot become a host name there; on AWS itself the SDK picks the addressing.
func NewS3Client(cfg aws.Config, optFns ...func(*s3.Options)) *s3.Client {
	cfg = cfg.Copy()
	cfg.Credentials = aws.AnonymousCredentials{}
	return s3.NewFromConfig(cfg, append([]func(*s3.Options){func(o *s3.Options) {
		o.UsePathStyle = o.BaseEndpoint != nil
		// The test object is compared byte for byte; the SDK's note that an answer carried no
		// checksum would go to stderr, outside the server's JSON log.
		o.DisableLogOutputChecksumValidationSkipped = true
	}}, optFns...)...)
}

// Bucket check results, the values of the result label of credential_webhook_bucket_checks_total.
const (
	BucketProven  = "proven"
	BucketRefused = "refused"
	BucketInvalid = "invalid"
	BucketError   = "error"
)

// BucketMetrics counts bucket checks. A nil *BucketMetrics counts nothing.
type BucketMetrics struct {
	checks *prometheus.CounterVec
}

// NewBucketMetrics registers credential_webhook_bucket_checks_total with reg (nil: unregistered).
func NewBucketMetrics(reg prometheus.Registerer) *BucketMetrics {
	m := &BucketMetrics{checks: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credential_webhook_bucket_checks_total",
		Help: "Buckets the AWS readiness check tried to prove, by mode (head, write) and result (proven; refused by S3; invalid: the ServiceAccount's bucket-names annotation was refused, counted once per check; error: throttling, 5xx, network).",
	}, []string{"mode", "result"})}
	for _, mode := range []BucketCheck{BucketCheckHead, BucketCheckWrite} {
		for _, r := range []string{BucketProven, BucketRefused, BucketInvalid, BucketError} {
			m.checks.WithLabelValues(string(mode), r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.checks)
	}
	return m
}

func (m *BucketMetrics) inc(mode BucketCheck, result string) {
	if m != nil {
		m.checks.WithLabelValues(string(mode), result).Inc()
	}
}

// proveBuckets proves access to names (valid bucket names, see BucketNames) with creds, in
// c.BucketCheck mode, one bucket after the other; uid (the ServiceAccount's) names the test
// objects. It answers like Check: ready, or a reason naming the bucket, or an error of the check.
func (c *Checker) proveBuckets(ctx context.Context, uid string, names []string, creds aws.Credentials) (bool, string, error) {
	mode := c.BucketCheck
	if c.S3 == nil {
		return false, "", errors.New("bucket check " + string(mode) + " configured without an S3 client")
	}
	provider := credentials.StaticCredentialsProvider{Value: creds}
	for _, b := range names {
		p := &bucketProbe{api: c.S3, bucket: b, creds: provider}
		var refused string
		var err error
		if mode == BucketCheckHead {
			refused, err = p.head(ctx)
		} else {
			refused, err = p.write(ctx, uid)
		}
		switch {
		case err != nil:
			c.BucketMetrics.inc(mode, BucketError)
			return false, "", fmt.Errorf("bucket %s: %w", b, err)
		case refused != "":
			c.BucketMetrics.inc(mode, BucketRefused)
			return false, fmt.Sprintf("bucket %s not usable yet with the credentials of the role: %s", b, refused), nil
		}
		c.BucketMetrics.inc(mode, BucketProven)
	}
	what := "s3:HeadBucket"
	if mode == BucketCheckWrite {
		what = "a test object under " + ReadinessPrefix + " written, read back and deleted"
	}
	return true, fmt.Sprintf("bucket access proven with the role's credentials on %s (%s)", strings.Join(names, ", "), what), nil
}

// bucketProbe makes the requests of one bucket's proof. region is the bucket's region once S3
// said it is not the configured one.
type bucketProbe struct {
	api        S3API
	bucket     string
	creds      aws.CredentialsProvider
	region     string
	redirected bool
}

func (p *bucketProbe) opts(o *s3.Options) {
	o.Credentials = p.creds
	if p.region != "" {
		o.Region = p.region
	}
	// One attempt: a throttled or failed request is an error of the check, which the sweeper
	// retries with backoff; the SDK's retries would only lengthen a check that runs against
	// the Job's max hold.
	o.RetryMaxAttempts = 1
}

// call runs one request; when S3 answers that the bucket lives in another region (and says
// which), it switches the probe to that region and runs the request once more.
func (p *bucketProbe) call(f func(opt func(*s3.Options)) error) error {
	err := f(p.opts)
	if r := redirectRegion(err); r != "" && !p.redirected {
		p.redirected, p.region = true, r
		err = f(p.opts)
	}
	return err
}

// head proves the bucket with s3:HeadBucket. refused is a reason when S3 refused.
func (p *bucketProbe) head(ctx context.Context) (refused string, err error) {
	err = p.call(func(opt func(*s3.Options)) error {
		_, err := p.api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(p.bucket)}, opt)
		return err
	})
	return p.verdict("s3:HeadBucket", err)
}

// write puts a test object, reads it back and deletes it. The object is deleted whatever
// happened after the put, unless S3 refused the put itself (then nothing was written).
func (p *bucketProbe) write(ctx context.Context, uid string) (refused string, err error) {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	// One key per ServiceAccount: when a delete is refused, or Object Lock keeps versions, every
	// retry until --max-hold overwrites the same object instead of leaving one more. The nonce in
	// the body still proves the read-back saw this write.
	key := ReadinessPrefix + uid
	body := []byte("credential-webhook readiness check " + hex.EncodeToString(nonce) + "\n")

	var version *string
	err = p.call(func(opt func(*s3.Options)) error {
		out, err := p.api.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(p.bucket), Key: aws.String(key),
			Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))), ContentType: aws.String("text/plain"),
		}, opt)
		if err == nil {
			version = out.VersionId
		}
		return err
	})
	if refused, err := p.verdict("s3:PutObject", err); refused != "" || err != nil {
		if err != nil {
			// Not refused: the object may have been written (an answer lost on the way back).
			if r, derr := p.delete(ctx, key, nil); r != "" || derr != nil {
				err = fmt.Errorf("%w; the test object %s may be left behind: %s%s", err, key, r, errOrEmpty(derr))
			}
		}
		return refused, err
	}

	refused, err = p.verdict("s3:GetObject", p.call(func(opt func(*s3.Options)) error {
		out, err := p.api.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(p.bucket), Key: aws.String(key)}, opt)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		got, err := io.ReadAll(io.LimitReader(out.Body, int64(len(body))+1))
		if err != nil {
			return fmt.Errorf("reading the test object back: %w", err)
		}
		if !bytes.Equal(got, body) {
			return errReadBack
		}
		return nil
	}))
	if errors.Is(err, errReadBack) {
		refused, err = "s3:GetObject returned other content than was written", nil
	}

	delRefused, delErr := p.delete(ctx, key, version)
	switch {
	case refused != "" || err != nil:
		// The read's verdict comes first; say if the object stayed behind too.
		if delRefused != "" || delErr != nil {
			left := fmt.Sprintf("; the test object %s may be left behind: %s%s", key, delRefused, errOrEmpty(delErr))
			if err != nil {
				err = fmt.Errorf("%w%s", err, left)
			} else {
				refused += left
			}
		}
		return refused, err
	case delRefused != "":
		return delRefused + " (the test object " + key + " is left behind)", nil
	case delErr != nil:
		return "", fmt.Errorf("%w (the test object %s may be left behind)", delErr, key)
	}
	return "", nil
}

var errReadBack = errors.New("read back other content")

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// delete removes the test object, on a context of its own: it runs even when the check's
// context has ended. In a versioned bucket it first deletes the version written
// (s3:DeleteObjectVersion), which leaves nothing behind; a role without that permission deletes
// the object (s3:DeleteObject, what restic needs), which leaves a delete marker and the
// version, for the bucket's lifecycle rules.
func (p *bucketProbe) delete(ctx context.Context, key string, version *string) (refused string, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	del := func(version *string) error {
		return p.call(func(opt func(*s3.Options)) error {
			_, err := p.api.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(p.bucket), Key: aws.String(key), VersionId: version}, opt)
			return err
		})
	}
	if version != nil {
		if err := del(version); err == nil {
			return "", nil
		}
	}
	return p.verdict("s3:DeleteObject", del(nil))
}

// verdict turns the outcome of one request into a refusal reason (not ready) or an error of
// the check.
func (p *bucketProbe) verdict(action string, err error) (refused string, _ error) {
	if err == nil {
		return "", nil
	}
	if code, msg, ok := s3Refusal(err); ok {
		return fmt.Sprintf("%s refused: %s: %s", action, code, truncate(msg, maxMessage)), nil
	}
	return "", fmt.Errorf("%s: %w", action, err)
}

// s3Refusal reports whether S3 answered that these credentials may not (yet) use the bucket:
// denied (403, which is also how S3 answers while a new role's permissions propagate), no such
// bucket (404), or the bucket is in a region it cannot be reached from. HEAD answers carry no
// body, so their code is the status text ("Forbidden", "NotFound", "MovedPermanently").
// Throttling, 5xx, timeouts, clock skew and network failures are failures of the check itself,
// retried by the sweeper.
func s3Refusal(err error) (code, message string, refused bool) {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return "", "", false
	}
	code, message = ae.ErrorCode(), ae.ErrorMessage()
	switch code {
	case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
		"InternalError", "ServiceUnavailable", "InternalServerError":
		return "", "", false
	case "AccessDenied", "Forbidden", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
		"InvalidToken", "ExpiredToken", "TokenRefreshRequired", "SignatureDoesNotMatch",
		"NoSuchBucket", "NotFound", "NoSuchKey",
		"PermanentRedirect", "MovedPermanently", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
		"InvalidObjectState", "InvalidBucketState", "KMS.DisabledException", "KMS.NotFoundException", "KMS.AccessDeniedException":
		return code, message, true
	}
	switch status := httpStatus(err); status {
	case http.StatusForbidden, http.StatusNotFound, http.StatusMovedPermanently:
		return code, message, true
	}
	return "", "", false
}

func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		return re.HTTPStatusCode()
	}
	return 0
}

var regionName = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)

// redirectRegion is the bucket's region when S3 answered that it is in another one (301, or
// 400 AuthorizationHeaderMalformed, with x-amz-bucket-region), else "".
func redirectRegion(err error) string {
	var re *smithyhttp.ResponseError
	if err == nil || !errors.As(err, &re) || re.Response == nil {
		return ""
	}
	if s := re.HTTPStatusCode(); s != http.StatusMovedPermanently && s != http.StatusBadRequest {
		return ""
	}
	if r := re.Response.Header.Get("X-Amz-Bucket-Region"); regionName.MatchString(r) {
		return r
	}
	return ""
}

// truncate cuts s to n bytes (no rune split) for a reason.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
