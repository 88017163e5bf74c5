package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// The bucket proof through the real binary (--aws-bucket-check at its default, write): STS
// accepting the token is not enough, the sweeper releases a KubeStash Job only once the role's
// credentials wrote, read back and deleted a test object in every bucket its ServiceAccount
// names. The IAM proxy refuses S3 requests of a role for a while after the role was created
// (S3 propagation); moto serves the buckets (harness.Buckets).

// bucketServiceAccount is w.serviceAccount naming buckets.
func (w *flowWorld) bucketServiceAccount(t *testing.T, buckets string) *corev1.ServiceAccount {
	t.Helper()
	w.seq++
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:        fmt.Sprintf("sample-backup-daemon-demo-session-%d", time.Now().Unix()+int64(w.seq)),
		Namespace:   w.ns,
		Annotations: map[string]string{annotations.SeedRole: w.seed, annotations.BucketNames: buckets},
	}}
	created, err := w.op.CoreV1().ServiceAccounts(w.ns).Create(context.Background(), sa, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator: create ServiceAccount %s: %v", sa.Name, err)
	}
	return created
}

// bucketLeftovers lists what is under the readiness prefix of bucket, straight from moto.
func bucketLeftovers(t *testing.T, bucket string) []string {
	t.Helper()
	out, err := moto.S3Client(cluster.AWSConfig()).ListObjectVersions(context.Background(), &s3.ListObjectVersionsInput{
		Bucket: aws.String(bucket), Prefix: aws.String(awscheck.ReadinessPrefix)})
	if err != nil {
		t.Fatalf("list %s: %v", bucket, err)
	}
	var left []string
	for _, v := range out.Versions {
		left = append(left, aws.ToString(v.Key))
	}
	for _, m := range out.DeleteMarkers {
		left = append(left, "delete marker "+aws.ToString(m.Key))
	}
	return left
}

// A Job whose new role STS already accepts but S3 still refuses stays held; it is released,
// reason ready, once the buckets are proven, and the Released Event says so.
func TestFlowBucketProofHoldsUntilS3Accepts(t *testing.T) {
	const propagation = 8 * time.Second
	w := flowSetup(t, "kubestash-bucket")
	wh := w.replica(t, "a")
	flowWaitLeader(t, wh.Name)
	cluster.IAM.SetS3PropagationDelay(propagation)
	t.Cleanup(func() { cluster.IAM.SetS3PropagationDelay(0) })

	sa := w.bucketServiceAccount(t, harness.BucketNames)
	role := sa.Annotations[annotations.AWSRoleARN]
	job, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(job) {
		t.Fatalf("Job not held at creation: suspend %v annotations %v", ptr.Deref(job.Spec.Suspend, false), job.Annotations)
	}
	flowPoll(t, 90*time.Second, "the Job released by the sweeper", func() (bool, error) {
		_, reason, ok := flowReleaseTime(wh, w.ns, job.Name)
		if ok && reason != sweeper.ReleaseReady {
			return false, fmt.Errorf("released with reason %q, want %q", reason, sweeper.ReleaseReady)
		}
		return ok && flowReleased(flowGetJob(t, w.ns, job.Name)), nil
	})

	// The check met S3's refusal (the role's session, resolved from the signing key) before
	// it released: STS alone would have released earlier. The role is this test's alone.
	var refused int
	for _, r := range cluster.IAM.Rejections() {
		if r.Action == "s3:PutObject" && r.Code == "AccessDenied" && strings.HasSuffix(role, "/"+r.Role) {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("no s3:PutObject of role %s was refused during the S3 propagation delay: the bucket proof did not run or did not wait", role)
	}
	ev := flowWaitEvent(t, w.ns, "Job", job.Name, "Normal/Released")
	for _, want := range []string{"accepted a token", "bucket access proven with the role's credentials on " + strings.Join(harness.Buckets, ", "), "written, read back and deleted"} {
		if !strings.Contains(ev, want) {
			t.Errorf("Released event %q does not say %q", ev, want)
		}
	}
	for _, b := range harness.Buckets {
		if left := bucketLeftovers(t, b); len(left) != 0 {
			t.Errorf("bucket %s keeps %v", b, left)
		}
	}
	proven := flowMetric(t, wh, "credential_webhook_bucket_checks_total", map[string]string{"mode": "write", "result": awscheck.BucketProven})
	refusedMetric := flowMetric(t, wh, "credential_webhook_bucket_checks_total", map[string]string{"mode": "write", "result": awscheck.BucketRefused})
	if proven < 2 || refusedMetric < 1 {
		t.Errorf("bucket_checks_total proven %v, refused %v; want at least 2 and 1", proven, refusedMetric)
	}
	t.Logf("figures: S3 propagation %s; %d refused s3:PutObject before release; bucket checks proven %v, refused %v", propagation, refused, proven, refusedMetric)
}

// A bucket that does not exist is never proven: the Job stays held and is released at
// --max-hold, with a Warning Event naming the bucket.
func TestFlowMissingBucketHoldsUntilMaxHold(t *testing.T) {
	const maxHold = 10 * time.Second
	w := flowSetup(t, "kubestash-nobucket")
	wh := w.replica(t, "a", "--max-hold="+maxHold.String())
	flowWaitLeader(t, wh.Name)
	missing := "no-such-bucket-" + w.suffix

	sa := w.bucketServiceAccount(t, harness.Buckets[0]+","+missing)
	job, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(job) {
		t.Fatalf("Job not held at creation: suspend %v annotations %v", ptr.Deref(job.Spec.Suspend, false), job.Annotations)
	}
	flowPoll(t, 90*time.Second, "the Job released after max hold", func() (bool, error) {
		_, reason, ok := flowReleaseTime(wh, w.ns, job.Name)
		if ok && reason != sweeper.ReleaseMaxHold {
			return false, fmt.Errorf("released with reason %q, want %q", reason, sweeper.ReleaseMaxHold)
		}
		return ok && flowReleased(flowGetJob(t, w.ns, job.Name)), nil
	})
	ev := flowWaitEvent(t, w.ns, "Job", job.Name, "Warning/ReleasedWithoutCredentials")
	for _, want := range []string{"bucket " + missing + " not usable yet", "s3:PutObject refused: NoSuchBucket"} {
		if !strings.Contains(ev, want) {
			t.Errorf("warning %q does not say %q", ev, want)
		}
	}
	if left := bucketLeftovers(t, harness.Buckets[0]); len(left) != 0 {
		t.Errorf("bucket %s keeps %v", harness.Buckets[0], left)
	}
	t.Logf("figures: max hold %s; warning: %s", maxHold, ev)
}
