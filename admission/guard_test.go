package admission

import (
	"context"
	"testing"

	"go.klusters.dev/credential-webhook/patches"
)

func TestOwnAnnotationsGuard(t *testing.T) {
	const self = "system:serviceaccount:credential-webhook:credential-webhook"
	g := OwnAnnotationsGuard{Self: map[string]bool{self: true}}
	cases := []struct {
		name, user, op, obj, old string
		wantOps                  int
		wantWarn                 bool
	}{
		{"user adds our marker", "alice", "CREATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev/pending":"x","other":"1"}}}`, "", 1, true},
		{"self adds our marker", self, "CREATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev/pending":"x"}}}`, "", 0, false},
		{"user keeps our marker unchanged", "alice", "UPDATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev/pending":"x"}}}`, `{"metadata":{"annotations":{"credential-webhook.klusters.dev/pending":"x"}}}`, 0, false},
		{"user alters our marker", "alice", "UPDATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev/held-since":"2000"}}}`, `{"metadata":{"annotations":{"credential-webhook.klusters.dev/held-since":"1999"}}}`, 1, true},
		{"user removes our marker is fine", "alice", "UPDATE", `{"metadata":{}}`, `{"metadata":{"annotations":{"credential-webhook.klusters.dev/pending":"x"}}}`, 0, false},
		{"no annotations", "alice", "CREATE", `{"metadata":{}}`, "", 0, false},
		{"look-alike prefix is not ours", "alice", "CREATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev.evil/x":"1"}}}`, "", 0, false},
		// The restic sidecar opt-in grants nothing and is the user's to set (issue 17).
		{"user sets the restic opt-in", "alice", "CREATE", `{"metadata":{"annotations":{"go.klusters.dev/restic-credentials":"true"}}}`, "", 0, false},
		{"the former restic key is ours: stripped", "alice", "CREATE", `{"metadata":{"annotations":{"credential-webhook.klusters.dev/restic-credentials":"true"}}}`, "", 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := &Request{Operation: "CREATE", Object: []byte(tc.obj), OldObject: []byte(tc.old)}
			req.Operation = opOf(tc.op)
			req.UserInfo.Username = tc.user
			resp := &Response{Patch: patches.NewBuilder()}
			if err := g.Admit(context.Background(), req, resp); err != nil {
				t.Fatal(err)
			}
			if resp.Patch.Len() != tc.wantOps || (len(resp.Warnings) > 0) != tc.wantWarn {
				t.Fatalf("ops %+v warnings %v", resp.Patch.Ops(), resp.Warnings)
			}
		})
	}
	// Malformed object: a clear denial, not a panic.
	req := &Request{Operation: "CREATE", Object: []byte(`{"metadata":[ "credential-webhook.klusters.dev/x"`)}
	req.UserInfo.Username = "alice"
	err := g.Admit(context.Background(), req, &Response{Patch: patches.NewBuilder()})
	if _, ok := IsDenied(err); !ok {
		t.Fatalf("malformed object: %v", err)
	}
}

func TestMayCarryOurs(t *testing.T) {
	for raw, want := range map[string]bool{
		`{"metadata":{"annotations":{"a":"b"}}}`:                                 false,
		`{"metadata":{"annotations":{"credential-webhook.klusters.dev/x":"b"}}}`: true,
		// An escaped spelling of our prefix must not slip past the pre-check.
		`{"metadata":{"annotations":{"\u0063redential-webhook.klusters.dev/x":"b"}}}`: true,
		`{"metadata":{"annotations":{"credential-webhook.klusters.dev\/x":"b"}}}`:     true,
		``: false,
	} {
		if got := mayCarryOurs([]byte(raw)); got != want {
			t.Errorf("mayCarryOurs(%s) = %v, want %v", raw, got, want)
		}
	}
}

func TestMayCarryOursIgnoresHarmlessEscapes(t *testing.T) {
	if mayCarryOurs([]byte(`{"spec":{"args":["sh","-c","echo \"hi\"\n"]}}`)) {
		t.Error(`\" and \n escapes forced a decode`)
	}
}
