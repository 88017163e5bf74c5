package iamproxy

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

// BenchmarkGetRole compares an IAM call straight to moto with the same call
// through the proxy (counting and fault checks on, no faults configured).
func BenchmarkGetRole(b *testing.B) {
	srv := moto.Start(b)
	p, err := New(srv.Endpoint, Options{Quota: 2048})
	if err != nil {
		b.Fatal(err)
	}
	p.Start(b)
	direct := iam.NewFromConfig(moto.ConfigFor(srv.Endpoint))
	if _, err := direct.CreateRole(b.Context(), &iam.CreateRoleInput{
		RoleName: aws.String("r"), AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[]}`),
	}); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		client *iam.Client
	}{
		{"direct", direct},
		{"proxied", iam.NewFromConfig(moto.ConfigFor(p.URL))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := bc.client.GetRole(b.Context(), &iam.GetRoleInput{RoleName: aws.String("r")}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
