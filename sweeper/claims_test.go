package sweeper

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// Fixtures shared by the claim, finish and writer tests.

const (
	seedA    = "arn:aws:iam::748392615204:role/kubestash-selfhost"
	seedB    = "arn:aws:iam::748392615204:role/kubestash-other"
	miA      = "backup-identity"
	miB      = "other-identity"
	tenantID = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
)

var (
	awsA   = markers.For(markers.AWS, seedA)
	awsB   = markers.For(markers.AWS, seedB)
	azureA = markers.For(markers.Azure, miA)
	azureB = markers.For(markers.Azure, miB)
)

// testCloud is a Cloud double: the claim is the digest of one input annotation (the seed role,
// the managed identity name), Finish records who it was called for and returns outputs derived
// from that input, or the error errs holds for the ServiceAccount's name.
type testCloud struct {
	name    string
	input   string
	outputs []string

	mu    sync.Mutex
	errs  map[string]error
	calls map[string]int // "namespace/name" -> Finish calls
}

// awsCloud claims the seed role and sets the role ARN.
func awsCloud() *testCloud {
	return &testCloud{name: markers.AWS, input: annotations.SeedRole, outputs: []string{annotations.AWSRoleARN}}
}

// azureCloud claims the managed identity and sets client and tenant IDs.
func azureCloud() *testCloud {
	return &testCloud{name: markers.Azure, input: annotations.AzureMIName, outputs: []string{annotations.AzureClientID, annotations.AzureTenantID}}
}

func (c *testCloud) Name() string { return c.name }

func (c *testCloud) Claim(ann map[string]string) (markers.Claim, bool) {
	v := ann[c.input]
	if v == "" {
		return markers.Claim{}, false
	}
	return markers.For(c.name, v), true
}

func (c *testCloud) Outputs() []string { return c.outputs }

func (c *testCloud) Finish(_ context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[key(sa.Namespace, sa.Name)]++
	if err := c.errs[sa.Name]; err != nil {
		return nil, err
	}
	return c.out(sa.Annotations[c.input]), nil
}

// out is what Finish sets for input.
func (c *testCloud) out(input string) map[string]string {
	out := map[string]string{}
	for _, k := range c.outputs {
		switch k {
		case annotations.AWSRoleARN:
			out[k] = input + "-0"
		case annotations.AzureTenantID:
			out[k] = tenantID
		default:
			out[k] = "client-of-" + input
		}
	}
	return out
}

func (c *testCloud) failFor(name string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.errs == nil {
		c.errs = map[string]error{}
	}
	c.errs[name] = err
}

func (c *testCloud) callsFor(namespace, name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[key(namespace, name)]
}

func cloudMap(cs ...Cloud) map[string]Cloud {
	m := map[string]Cloud{}
	for _, c := range cs {
		m[c.Name()] = c
	}
	return m
}

func claims(cs ...markers.Claim) markers.Claims {
	var out markers.Claims
	for _, c := range cs {
		out = out.With(c)
	}
	return out
}

func pending(cs ...markers.Claim) string { return markers.FormatPending(claims(cs...)) }

func granted(uid types.UID, cs ...markers.Claim) string {
	return markers.FormatGranted(uid, claims(cs...))
}

// claimSA is a ServiceAccount as stored, with the given UID and annotations.
func claimSA(name string, uid types.UID, ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: uid, Annotations: ann},
	}
}

func TestTriage(t *testing.T) {
	both := cloudMap(awsCloud(), azureCloud())
	for _, tc := range []struct {
		name      string
		ann       map[string]string
		clouds    map[string]Cloud
		nsAllowed bool
		work      []markers.Claim
		drops     map[markers.Claim]string // claim -> part of the reason
	}{
		{
			name:      "claim matches",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)},
			clouds:    both,
			nsAllowed: true,
			work:      []markers.Claim{awsA},
		},
		{
			name:      "both clouds match",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA, annotations.Pending: pending(awsA, azureA)},
			clouds:    both,
			nsAllowed: true,
			work:      []markers.Claim{awsA, azureA},
		},
		{
			name:      "seed changed since admission",
			ann:       map[string]string{annotations.SeedRole: seedB, annotations.Pending: pending(awsA)},
			clouds:    both,
			nsAllowed: true,
			drops:     map[markers.Claim]string{awsA: "no longer asks for the aws identity"},
		},
		{
			name:      "seed annotation removed since admission",
			ann:       map[string]string{annotations.Pending: pending(awsA)},
			clouds:    both,
			nsAllowed: true,
			drops:     map[markers.Claim]string{awsA: "no longer asks for the aws identity"},
		},
		{
			name:      "one claim still made, the other changed",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miB, annotations.Pending: pending(awsA, azureA)},
			clouds:    both,
			nsAllowed: true,
			work:      []markers.Claim{awsA},
			drops:     map[markers.Claim]string{azureA: "no longer asks for the azure identity"},
		},
		{
			name:      "cloud not enabled",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA, annotations.Pending: pending(awsA, azureA)},
			clouds:    cloudMap(awsCloud()),
			nsAllowed: true,
			work:      []markers.Claim{awsA},
			drops:     map[markers.Claim]string{azureA: "azure is not enabled"},
		},
		{
			name:      "namespace no longer allowed",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA, annotations.Pending: pending(awsA, azureA)},
			clouds:    both,
			nsAllowed: false,
			drops: map[markers.Claim]string{
				awsA:   `namespace "demo" is no longer allowed`,
				azureA: `namespace "demo" is no longer allowed`,
			},
		},
		{
			name:      "empty pending marker: nothing to do",
			ann:       map[string]string{annotations.SeedRole: seedA, annotations.Pending: ""},
			clouds:    both,
			nsAllowed: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			work, drops, err := Triage(claimSA("app-backup", "u1", tc.ann), tc.clouds, tc.nsAllowed)
			if err != nil {
				t.Fatalf("Triage: %v", err)
			}
			if !slices.Equal(work, tc.work) {
				t.Errorf("work = %v, want %v", work, tc.work)
			}
			if len(drops) != len(tc.drops) {
				t.Errorf("drops = %v, want %v", drops, tc.drops)
			}
			for _, d := range drops {
				want, ok := tc.drops[d.Claim]
				if !ok {
					t.Errorf("unexpected drop %v (%s)", d.Claim, d.Reason)
					continue
				}
				if !strings.Contains(d.Reason, want) {
					t.Errorf("drop of %v: reason %q does not say %q", d.Claim, d.Reason, want)
				}
			}
		})
	}

	for _, v := range []string{
		"iam: throttled",       // an older version's reason
		"aws:0123",             // short digest
		"gcp:0123456789abcdef", // unknown cloud
		"aws:0123456789abcdef aws:0123456789abcdee", // two claims on one cloud
	} {
		t.Run("malformed "+v, func(t *testing.T) {
			work, drops, err := Triage(claimSA("app-backup", "u1", map[string]string{annotations.SeedRole: seedA, annotations.Pending: v}), both, true)
			if !errors.Is(err, markers.ErrMalformed) {
				t.Errorf("Triage error = %v, want ErrMalformed", err)
			}
			if len(work) != 0 || len(drops) != 0 {
				t.Errorf("Triage of a malformed marker returned work %v, drops %v", work, drops)
			}
		})
	}
}

// annotationsOf returns the annotations of a patched object (applyJSON's result).
func annotationsOf(t *testing.T, m map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	raw, _ := m["metadata"].(map[string]any)["annotations"].(map[string]any)
	for k, v := range raw {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("annotation %s = %v (%T), want a string", k, v, v)
		}
		out[k] = s
	}
	return out
}

func TestFinishPatch(t *testing.T) {
	const uid, otherUID types.UID = "5b0f3c1e-0d6a-4e8e-9a55-7f1f2b3c4d5e", "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
	const foreign = "kubestash.com/backup-session"
	roleA, roleB := seedA+"-0", seedB+"-0"
	for _, tc := range []struct {
		name string
		ann  map[string]string // before; foreign is added to every case
		f    Finished
		want map[string]string // after; foreign is expected in every case
	}{
		{
			name: "outputs set, granted written with the UID, pending removed",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "planned output replaced by the written one",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/planned", annotations.Pending: pending(awsA)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "earlier grant to the same UID on the other cloud kept",
			ann: map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA, annotations.AzureClientID: "client-of-" + miA,
				annotations.Granted: granted(uid, azureA), annotations.Pending: pending(awsA)},
			f: Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA, annotations.AzureClientID: "client-of-" + miA,
				annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA, azureA)},
		},
		{
			name: "earlier grant to the same UID on the same cloud replaced",
			ann:  map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA), annotations.Pending: pending(awsB)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleB}, Granted: claims(awsB)},
			want: map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: roleB, annotations.Granted: granted(uid, awsB)},
		},
		{
			name: "grant to a different UID (a re-created name) replaced, not merged",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Granted: granted(otherUID, awsB, azureA), annotations.Pending: pending(awsA)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "unreadable earlier grant replaced",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Granted: "aws:0123456789abcdef", annotations.Pending: pending(awsA)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "dropped cloud: outputs cleared and removed from granted, the other cloud's grant kept",
			ann: map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: roleA, annotations.AzureMIName: miA,
				annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID,
				annotations.Granted: granted(uid, awsA, azureA), annotations.Pending: pending(awsA)},
			f: Finished{Dropped: []string{markers.AWS}, Clear: []string{annotations.AWSRoleARN}},
			want: map[string]string{annotations.SeedRole: seedB, annotations.AzureMIName: miA,
				annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID, annotations.Granted: granted(uid, azureA)},
		},
		{
			name: "the only grant dropped: granted marker removed",
			ann:  map[string]string{annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA), annotations.Pending: pending(awsA)},
			f:    Finished{Dropped: []string{markers.AWS}, Clear: []string{annotations.AWSRoleARN}},
			want: map[string]string{},
		},
		{
			name: "nothing granted ever: no granted marker written",
			ann:  map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: roleA, annotations.Pending: pending(awsA)},
			f:    Finished{Dropped: []string{markers.AWS}, Clear: []string{annotations.AWSRoleARN}},
			want: map[string]string{annotations.SeedRole: seedB},
		},
		{
			name: "one cloud granted, the other dropped, in one finish",
			ann: map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: roleA, annotations.AzureMIName: miA,
				annotations.Pending: pending(awsA, azureA)},
			f: Finished{Set: map[string]string{annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID},
				Granted: claims(azureA), Dropped: []string{markers.AWS}, Clear: []string{annotations.AWSRoleARN}},
			want: map[string]string{annotations.SeedRole: seedB, annotations.AzureMIName: miA,
				annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID, annotations.Granted: granted(uid, azureA)},
		},
		{
			name: "an output both set and cleared stays set",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)},
			f:    Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA), Clear: []string{annotations.AWSRoleARN}},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "our own keys among the outputs are not written",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)},
			f: Finished{Set: map[string]string{annotations.AWSRoleARN: roleA, annotations.Pending: "must not be written back",
				annotations.Granted: "forged aws:0123456789abcdef"}, Granted: claims(awsA)},
			want: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: roleA, annotations.Granted: granted(uid, awsA)},
		},
		{
			name: "empty pending marker: only removed",
			ann:  map[string]string{annotations.SeedRole: seedA, annotations.Pending: ""},
			f:    Finished{Set: map[string]string{}},
			want: map[string]string{annotations.SeedRole: seedA},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ann := maps.Clone(tc.ann)
			ann[foreign] = "demo-session"
			sa := claimSA("app-backup", uid, ann)
			patch, err := FinishPatch(sa, tc.f)
			if err != nil {
				t.Fatal(err)
			}

			var ops []struct {
				Op    string `json:"op"`
				Path  string `json:"path"`
				Value any    `json:"value"`
			}
			if err := json.Unmarshal(patch, &ops); err != nil {
				t.Fatal(err)
			}
			if len(ops) < 2 || ops[0].Op != "test" || ops[0].Path != "/metadata/uid" || ops[0].Value != string(uid) ||
				ops[1].Op != "test" || ops[1].Path != "/metadata/annotations/credential-webhook.klusters.dev~1pending" || ops[1].Value != ann[annotations.Pending] {
				t.Errorf("patch does not start by testing the UID and the pending value read: %s", patch)
			}

			m, err := applyJSON(t, sa, patch)
			if err != nil {
				t.Fatalf("apply %s: %v", patch, err)
			}
			want := maps.Clone(tc.want)
			want[foreign] = "demo-session"
			if got := annotationsOf(t, m); !maps.Equal(got, want) {
				t.Errorf("annotations after the patch:\n got %v\nwant %v", got, want)
			}
			if got := m["metadata"].(map[string]any)["uid"]; got != string(uid) {
				t.Errorf("uid after the patch = %v", got)
			}
		})
	}

	// The patch is built from what was read; it must not apply to anything else.
	sa := claimSA("app-backup", uid, map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	patch, err := FinishPatch(sa, Finished{Set: map[string]string{annotations.AWSRoleARN: roleA}, Granted: claims(awsA)})
	if err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*corev1.ServiceAccount){
		"pending value changed (admission re-planned)": func(s *corev1.ServiceAccount) {
			s.Annotations[annotations.SeedRole] = seedB
			s.Annotations[annotations.Pending] = pending(awsB)
		},
		"pending claim added (admission planned the other cloud)": func(s *corev1.ServiceAccount) {
			s.Annotations[annotations.AzureMIName] = miA
			s.Annotations[annotations.Pending] = pending(awsA, azureA)
		},
		"pending removed (finished by someone else)": func(s *corev1.ServiceAccount) {
			delete(s.Annotations, annotations.Pending)
		},
		"UID differs (deleted and re-created under the same name)": func(s *corev1.ServiceAccount) {
			s.UID = otherUID
		},
	} {
		t.Run("fails: "+name, func(t *testing.T) {
			now := sa.DeepCopy()
			mut(now)
			if m, err := applyJSON(t, now, patch); err == nil {
				t.Errorf("finish patch applied: annotations now %v", annotationsOf(t, m))
			}
		})
	}

	t.Run("no pending marker", func(t *testing.T) {
		for _, ann := range []map[string]string{nil, {annotations.SeedRole: seedA}} {
			if _, err := FinishPatch(claimSA("app-backup", uid, ann), Finished{Granted: claims(awsA)}); err == nil {
				t.Errorf("FinishPatch without a pending marker (annotations %v) did not fail", ann)
			}
		}
	})
	t.Run("no UID", func(t *testing.T) {
		if _, err := FinishPatch(claimSA("app-backup", "", map[string]string{annotations.Pending: pending(awsA)}), Finished{Granted: claims(awsA)}); err == nil {
			t.Error("FinishPatch without a UID did not fail")
		}
	})
}
