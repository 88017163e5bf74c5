package aws

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

// A call whose first attempt hangs (IAM may have applied it) and whose retries are then
// throttled until the attempts run out must not look like a certain failure: the Assigner would
// keep a cache that misses the write. A call that was only ever throttled is certain.
func TestAttemptTimeoutOutcomes(t *testing.T) {
	const throttled = `<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>r1</RequestId></ErrorResponse>`
	for _, tc := range []struct {
		name          string
		hangFirst     bool
		wantAmbiguous bool
	}{
		{"first attempt abandoned, then throttled", true, true},
		{"throttled every time", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Read the body: only then does the server notice the client hanging up.
				_, _ = io.Copy(io.Discard, r.Body)
				if requests.Add(1) == 1 && tc.hangFirst {
					<-r.Context().Done() // never answers: the client abandons the attempt
					return
				}
				w.Header().Set("Content-Type", "text/xml")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(throttled))
			}))
			t.Cleanup(srv.Close)
			client := NewIAMClient(moto.ConfigFor(srv.URL), WithAttemptTimeout(200*time.Millisecond), func(o *iam.Options) {
				o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
					so.MaxAttempts = 3
					so.MaxBackoff = 10 * time.Millisecond
				})
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := client.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String("r"), PolicyDocument: aws.String("{}")})
			if err == nil {
				t.Fatal("the call succeeded against a server that only throttles")
			}
			if got := requests.Load(); got != 3 {
				t.Errorf("%d attempts reached the server, want 3 (an abandoned attempt is retried)", got)
			}
			if code := apiErrorCode(err); code != "Throttling" {
				t.Errorf("error code %q, want the last answer's Throttling: %v", code, err)
			}
			var ambiguous *ambiguousError
			if errors.As(err, &ambiguous) != tc.wantAmbiguous || isDefinite(err) == tc.wantAmbiguous {
				t.Errorf("ambiguous %v, definite %v; want ambiguous %v: %v", errors.As(err, &ambiguous), isDefinite(err), tc.wantAmbiguous, err)
			}
		})
	}
}
