package azure

import (
	"context"
	"testing"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
)

// The admission path per ServiceAccount/Job review: parse, scope check, cached lookup, decide.
func BenchmarkAdmissionPathCached(b *testing.B) {
	f := newFakeARM()
	r, err := NewResolver(&azfake.TokenCredential{}, testOptions(f), ResolverConfig{})
	if err != nil {
		b.Fatal(err)
	}
	scopes, err := ParseScopes("/subscriptions/*/resourceGroups/kubestash-*")
	if err != nil {
		b.Fatal(err)
	}
	ann := azAnn(testSub, testRG, testMI)
	ctx := context.Background()
	if _, err := r.Lookup(ctx, testIdentity); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		id, ok, err := ParseIdentity(ann)
		if !ok || err != nil || !scopes.Allows(id) {
			b.Fatal("parse/scope")
		}
		res, err := r.Lookup(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		_ = DecideServiceAccount(ann, res)
		_ = DecideJobTemplate(nil, nil)
	}
}
