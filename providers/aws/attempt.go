package aws

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

// DefaultAttemptTimeout bounds one HTTP attempt of an IAM call. IAM answers in well under a
// second; an attempt that hangs longer is abandoned and retried by the SDK's retryer, so one stuck
// connection does not hold a seed's lock session (and every ServiceAccount queued behind it) until
// the admission budget runs out. Retrying is safe: every write the Assigner makes sets a whole
// document or is recognised when repeated (EntityAlreadyExists, NoSuchEntity). Residual risk: an
// abandoned write that reaches IAM only after a later write to the same role would overwrite it;
// that needs a request stuck on its way in for seconds, and the sweeper's re-assignment of
// annotated ServiceAccounts repairs a subject lost that way.
const DefaultAttemptTimeout = 4 * time.Second

// WithAttemptTimeout bounds every attempt of every call of the client by d (0 disables). A call
// that fails after one of its attempts was abandoned returns an error that isDefinite never
// takes as certain: the abandoned attempt may have been applied.
func WithAttemptTimeout(d time.Duration) func(*iam.Options) {
	return func(o *iam.Options) {
		if d <= 0 {
			return
		}
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			// Around the retry loop: one flag per call, set by any abandoned attempt.
			if err := s.Finalize.Insert(abandonedMarker{}, "Retry", middleware.Before); err != nil {
				return err
			}
			// Inside the retry loop: once per attempt.
			return s.Finalize.Insert(attemptTimeout{d: d}, "Retry", middleware.After)
		})
	}
}

type abandonedKey struct{}

// abandonedMarker gives each call a flag that attemptTimeout sets, and marks the call's final
// error ambiguous when it is set.
type abandonedMarker struct{}

func (abandonedMarker) ID() string { return "credential-webhook-abandoned-attempts" }

func (abandonedMarker) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	var abandoned atomic.Bool
	out, md, err := next.HandleFinalize(context.WithValue(ctx, abandonedKey{}, &abandoned), in)
	if err != nil && abandoned.Load() {
		err = &ambiguousError{err: err}
	}
	return out, md, err
}

type attemptTimeout struct{ d time.Duration }

func (attemptTimeout) ID() string { return "credential-webhook-attempt-timeout" }

func (m attemptTimeout) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	actx, cancel := context.WithTimeoutCause(ctx, m.d, errAttemptTimeout)
	defer cancel()
	out, md, err := next.HandleFinalize(actx, in)
	var canceled *smithy.CanceledError
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errAttemptTimeout) &&
		(errors.As(err, &canceled) || errors.Is(err, context.DeadlineExceeded)) {
		// The SDK reports a cancelled attempt as smithy.CanceledError, which its retryer never
		// retries; the caller's ctx is still alive, so this is a slow connection, not a caller
		// that gave up. (An answer that arrived just as the timer fired is kept as it is.)
		if flag, ok := ctx.Value(abandonedKey{}).(*atomic.Bool); ok {
			flag.Store(true)
		}
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

// ambiguousError is the final error of a call one of whose attempts was abandoned: whatever the
// last attempt answered (say Throttling), the abandoned one may have been applied.
type ambiguousError struct{ err error }

func (e *ambiguousError) Error() string {
	return e.err.Error() + " (an earlier attempt was abandoned unanswered and may have been applied)"
}

func (e *ambiguousError) Unwrap() error { return e.err }
