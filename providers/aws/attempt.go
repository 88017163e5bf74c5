package aws

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go/middleware"
)

// DefaultAttemptTimeout bounds one HTTP attempt of an IAM call. IAM answers in well under a
// second; an attempt that hangs longer is abandoned and retried by the SDK's retryer, so one stuck
// connection does not hold a seed's lock session (and every ServiceAccount queued behind it) until
// the admission budget runs out. Retrying is safe: every write the Assigner makes sets a whole
// document or is recognised when repeated (EntityAlreadyExists, NoSuchEntity).
const DefaultAttemptTimeout = 4 * time.Second

// WithAttemptTimeout bounds every attempt of every call of the client by d (0 disables).
func WithAttemptTimeout(d time.Duration) func(*iam.Options) {
	return func(o *iam.Options) {
		if d <= 0 {
			return
		}
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			// After "Retry", so it runs inside the retry loop: once per attempt.
			return s.Finalize.Insert(attemptTimeout{d: d}, "Retry", middleware.After)
		})
	}
}

type attemptTimeout struct{ d time.Duration }

func (attemptTimeout) ID() string { return "credential-webhook-attempt-timeout" }

func (m attemptTimeout) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	actx, cancel := context.WithTimeoutCause(ctx, m.d, errAttemptTimeout)
	defer cancel()
	out, md, err := next.HandleFinalize(actx, in)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errAttemptTimeout) {
		// The SDK reports a cancelled attempt as smithy.CanceledError, which its retryer never
		// retries; the caller's ctx is still alive, so this is a slow connection, not a caller
		// that gave up.
		return out, md, &attemptTimeoutError{after: m.d, msg: err.Error()}
	}
	return out, md, err
}

var errAttemptTimeout = errors.New("IAM attempt timed out")

// attemptTimeoutError is retryable as a connection error. It deliberately does not unwrap to the
// SDK's CanceledError, which the retryer would treat as final.
type attemptTimeoutError struct {
	after time.Duration
	msg   string
}

func (e *attemptTimeoutError) Error() string {
	return fmt.Sprintf("no answer within %s (attempt abandoned, retried): %s", e.after, e.msg)
}

// ConnectionError marks the error retryable for the SDK's standard retryer.
func (e *attemptTimeoutError) ConnectionError() bool { return true }
