package aws

import (
	"context"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// CallMetrics counts IAM API calls by action and result, one count per logical call (retries
// included in the one call), so operators can see what an assignment costs and when IAM throttles.
func CallMetrics(reg prometheus.Registerer) func(*iam.Options) {
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credential_webhook_iam_calls_total",
		Help: "IAM API calls by action and result (ok, or the AWS error code).",
	}, []string{"action", "result"})
	reg.MustRegister(calls)
	mw := middleware.InitializeMiddlewareFunc("credential-webhook-call-metrics",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			out, md, err := next.HandleInitialize(ctx, in)
			result := "ok"
			if err != nil {
				if code := apiErrorCode(err); code != "" {
					result = code
				} else {
					result = "error"
				}
			}
			calls.WithLabelValues(awsmiddleware.GetOperationName(ctx), result).Inc()
			return out, md, err
		})
	return func(o *iam.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Initialize.Add(mw, middleware.After)
		})
	}
}
