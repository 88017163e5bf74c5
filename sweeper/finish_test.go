package sweeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/markers"
)

// patchTestsAsAPIServer makes the fake clientset answer a JSON patch whose test operation fails
// as the apiserver does, 422 Unprocessable Entity (reason Invalid), instead of with a plain
// error: the finisher tells a stale read from a failure by it. Patches that apply go on to the
// fake's object tracker.
func patchTestsAsAPIServer(cs *fake.Clientset) {
	cs.PrependReactor("patch", "serviceaccounts", func(action k8stesting.Action) (bool, runtime.Object, error) {
		pa, ok := action.(k8stesting.PatchAction)
		if !ok || pa.GetPatchType() != types.JSONPatchType {
			return false, nil, nil
		}
		obj, err := cs.Tracker().Get(pa.GetResource(), pa.GetNamespace(), pa.GetName())
		if err != nil {
			return true, nil, err
		}
		raw, err := json.Marshal(obj)
		if err != nil {
			return true, nil, err
		}
		p, err := jsonpatchapply.DecodePatch(pa.GetPatch())
		if err == nil {
			_, err = p.Apply(raw)
		}
		if err != nil {
			return true, nil, apierrors.NewGenericServerResponse(http.StatusUnprocessableEntity, "patch",
				corev1.Resource("serviceaccounts"), pa.GetName(), err.Error(), 0, false)
		}
		return false, nil, nil
	})
}

// drainEvents returns the Events recorded so far.
func drainEvents(r *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-r.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func storedSA(t *testing.T, cs *fake.Clientset, namespace, name string) *corev1.ServiceAccount {
	t.Helper()
	sa, err := cs.CoreV1().ServiceAccounts(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading ServiceAccount %s/%s: %v", namespace, name, err)
	}
	return sa
}

// Finishing one pending ServiceAccount read from the cache, against a fake apiserver.
func TestFinish(t *testing.T) {
	const uid, otherUID types.UID = "5b0f3c1e-0d6a-4e8e-9a55-7f1f2b3c4d5e", "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
	const name = "sample-backup-daemon-demo-session-1778072138"
	throttled := errors.New("operation error IAM: UpdateAssumeRolePolicy, https response error StatusCode: 400, api error Throttling: Rate exceeded")
	refused := fmt.Errorf("%w: seed role %s is not allowed (--allowed-seed-roles)", markers.ErrRefused, seedA)
	plannedRole := "arn:aws:iam::748392615204:role/kubestash-selfhost-0"
	type want struct {
		outcome   outcome
		err       bool
		ann       map[string]string // stored annotations after; nil: unchanged
		awsCalls  int
		azurCalls int
		events    []string // substrings, one per Event, in order
	}
	for _, tc := range []struct {
		name      string
		stored    *corev1.ServiceAccount       // nil: deleted
		read      func(*corev1.ServiceAccount) // what the cache had, from stored; nil: the same
		awsOnly   bool
		awsErr    error
		azureErr  error
		nsAllowed bool
		want      want
	}{
		{
			name: "both clouds granted",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole,
				annotations.AzureMIName: miA, annotations.Pending: pending(awsA, azureA)}),
			nsAllowed: true,
			want: want{outcome: finished, awsCalls: 1, azurCalls: 1,
				ann: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: seedA + "-0", annotations.AzureMIName: miA,
					annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID, annotations.Granted: granted(uid, awsA, azureA)},
				events: []string{"Normal Assigned credential-webhook granted the aws and azure identity"}},
		},
		{
			name:      "refused by the cloud: dropped with a Warning, outputs cleared",
			stored:    claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole, annotations.Pending: pending(awsA)}),
			awsErr:    refused,
			nsAllowed: true,
			want: want{outcome: finished, awsCalls: 1,
				ann:    map[string]string{annotations.SeedRole: seedA},
				events: []string{"Warning ClaimDropped credential-webhook did not grant the aws identity: refused: seed role " + seedA + " is not allowed"}},
		},
		{
			name: "refused on one cloud, granted on the other",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole,
				annotations.AzureMIName: miA, annotations.Pending: pending(awsA, azureA)}),
			awsErr:    refused,
			nsAllowed: true,
			want: want{outcome: finished, awsCalls: 1, azurCalls: 1,
				ann: map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA,
					annotations.AzureClientID: "client-of-" + miA, annotations.AzureTenantID: tenantID, annotations.Granted: granted(uid, azureA)},
				events: []string{"Warning ClaimDropped credential-webhook did not grant the aws identity", "Normal Assigned credential-webhook granted the azure identity"}},
		},
		{
			name: "seed changed since admission: dropped without a cloud call, earlier grant withdrawn",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedB, annotations.AWSRoleARN: plannedRole,
				annotations.Granted: granted(uid, awsA), annotations.Pending: pending(awsA)}),
			nsAllowed: true,
			want: want{outcome: finished,
				ann:    map[string]string{annotations.SeedRole: seedB},
				events: []string{"Warning ClaimDropped credential-webhook did not grant the aws identity: the ServiceAccount no longer asks for the aws identity admission accepted"}},
		},
		{
			name: "namespace no longer allowed: every claim dropped without a cloud call",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole,
				annotations.AzureMIName: miA, annotations.AzureClientID: "client-of-" + miA, annotations.Pending: pending(awsA, azureA)}),
			nsAllowed: false,
			want: want{outcome: finished,
				ann: map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA},
				events: []string{`Warning ClaimDropped credential-webhook did not grant the aws identity: namespace "demo" is no longer allowed`,
					`Warning ClaimDropped credential-webhook did not grant the azure identity: namespace "demo" is no longer allowed`}},
		},
		{
			name: "cloud not enabled: its claim dropped, the other granted",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA,
				annotations.Granted: granted(uid, azureB), annotations.Pending: pending(awsA, azureA)}),
			awsOnly:   true,
			nsAllowed: true,
			want: want{outcome: finished, awsCalls: 1,
				ann: map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: seedA + "-0", annotations.AzureMIName: miA,
					annotations.Granted: granted(uid, awsA)},
				events: []string{"Warning ClaimDropped credential-webhook did not grant the azure identity: azure is not enabled", "Normal Assigned"}},
		},
		{
			name:      "unreadable pending marker: dropped whole",
			stored:    claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole, annotations.Pending: "iam: throttled"}),
			awsOnly:   true,
			nsAllowed: true,
			want: want{outcome: finished,
				ann:    map[string]string{annotations.SeedRole: seedA},
				events: []string{"Warning ClaimDropped credential-webhook did not grant the aws identity: pending marker unreadable"}},
		},
		{
			name:      "cloud error: nothing recorded, to be retried",
			stored:    claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AWSRoleARN: plannedRole, annotations.Pending: pending(awsA)}),
			awsErr:    throttled,
			nsAllowed: true,
			want:      want{err: true, awsCalls: 1},
		},
		{
			name: "one cloud fails: nothing recorded for the other either",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.AzureMIName: miA,
				annotations.Pending: pending(awsA, azureA)}),
			azureErr:  throttled,
			nsAllowed: true,
			want:      want{err: true, awsCalls: 1, azurCalls: 1},
		},
		{
			name:      "re-created under the same name since read: stale",
			stored:    claimSA(name, otherUID, map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)}),
			read:      func(sa *corev1.ServiceAccount) { sa.UID = uid },
			nsAllowed: true,
			want:      want{outcome: stale, awsCalls: 1},
		},
		{
			name:   "admission re-planned since read: stale",
			stored: claimSA(name, uid, map[string]string{annotations.SeedRole: seedB, annotations.Pending: pending(awsB)}),
			read: func(sa *corev1.ServiceAccount) {
				sa.Annotations[annotations.SeedRole] = seedA
				sa.Annotations[annotations.Pending] = pending(awsA)
			},
			nsAllowed: true,
			want:      want{outcome: stale, awsCalls: 1},
		},
		{
			name:      "deleted since read: gone",
			read:      func(*corev1.ServiceAccount) {},
			nsAllowed: true,
			want:      want{outcome: gone, awsCalls: 1},
		},
		{
			name:      "no pending marker: gone, no cloud call",
			stored:    claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.Granted: granted(uid, awsA)}),
			nsAllowed: true,
			want:      want{outcome: gone},
		},
		{
			name:      "being deleted: gone, no cloud call",
			stored:    claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)}),
			read:      func(sa *corev1.ServiceAccount) { sa.DeletionTimestamp = &metav1.Time{Time: time.Now()} },
			nsAllowed: true,
			want:      want{outcome: gone},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			if tc.stored != nil {
				objs = append(objs, tc.stored.DeepCopy())
			}
			cs := fake.NewClientset(objs...)
			patchTestsAsAPIServer(cs)
			aws, azure := awsCloud(), azureCloud()
			aws.failFor(name, tc.awsErr)
			azure.failFor(name, tc.azureErr)
			clouds := []Cloud{aws, azure}
			if tc.awsOnly {
				clouds = clouds[:1]
			}
			recorder := record.NewFakeRecorder(10)
			s := New(kubeadapter.Wrap(cs), Config{}, Deps{Clouds: clouds, Recorder: recorder,
				Namespaces: func(ns string) bool { return ns == "demo" && tc.nsAllowed }}, nil)

			var read *corev1.ServiceAccount
			if tc.stored != nil {
				read = storedSA(t, cs, "demo", name)
			} else {
				read = claimSA(name, uid, map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
			}
			if tc.read != nil {
				tc.read(read)
			}
			out, err := s.finish(context.Background(), read)
			if (err != nil) != tc.want.err || out != tc.want.outcome {
				t.Errorf("finish = %q, %v; want %q, error %v", out, err, tc.want.outcome, tc.want.err)
			}
			if got := aws.callsFor("demo", name); got != tc.want.awsCalls {
				t.Errorf("aws Finish called %d times, want %d", got, tc.want.awsCalls)
			}
			if got := azure.callsFor("demo", name); got != tc.want.azurCalls {
				t.Errorf("azure Finish called %d times, want %d", got, tc.want.azurCalls)
			}
			if tc.stored != nil {
				wantAnn := tc.want.ann
				if wantAnn == nil {
					wantAnn = tc.stored.Annotations
				}
				got := storedSA(t, cs, "demo", name)
				if !maps.Equal(got.Annotations, wantAnn) {
					t.Errorf("stored annotations:\n got %v\nwant %v", got.Annotations, wantAnn)
				}
				if got.UID != tc.stored.UID {
					t.Errorf("stored UID %q, want %q", got.UID, tc.stored.UID)
				}
			}
			events := drainEvents(recorder)
			if len(events) != len(tc.want.events) {
				t.Fatalf("Events %q, want %d like %q", events, len(tc.want.events), tc.want.events)
			}
			for i, e := range events {
				if !strings.Contains(e, tc.want.events[i]) {
					t.Errorf("Event %q does not say %q", e, tc.want.events[i])
				}
			}
		})
	}
}

// What the writer left (a cloud error) the leader retries, with backoff and a Warning Event,
// until it is written.
func TestLeaderRetriesWhatTheWriterLeft(t *testing.T) {
	const name = "app-backup"
	sa := claimSA(name, "u1", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	cs := fake.NewClientset(sa.DeepCopy())
	patchTestsAsAPIServer(cs)
	aws := awsCloud()
	aws.failFor(name, errors.New("api error ServiceUnavailable"))
	recorder := record.NewFakeRecorder(10)
	// A long backoff: the retry is driven by hand here, not by the queue.
	s := New(kubeadapter.Wrap(cs), Config{FinishBackoffInitial: time.Hour, FinishBackoffMax: time.Hour}, Deps{Clouds: []Cloud{aws}, Recorder: recorder}, nil)
	tm := newTerm(s)
	t.Cleanup(func() { tm.jobQ.ShutDown(); tm.finishQ.ShutDown() })
	sas := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := sas.Add(sa); err != nil {
		t.Fatal(err)
	}
	tm.saLister = corelisters.NewServiceAccountLister(sas)
	k := key("demo", name)

	tm.processPending(context.Background(), k)
	if got := storedSA(t, cs, "demo", name).Annotations; got[annotations.Pending] != pending(awsA) || got[annotations.Granted] != "" {
		t.Fatalf("after a failed finish the ServiceAccount is no longer pending: %v", got)
	}
	if events := drainEvents(recorder); len(events) != 1 || !strings.Contains(events[0], "Warning AssignmentFailed") || !strings.Contains(events[0], "ServiceUnavailable") {
		t.Errorf("Events %q, want one AssignmentFailed Warning", events)
	}
	tm.mu.Lock()
	attempts := tm.finishAttempts[k]
	tm.mu.Unlock()
	if attempts != 1 {
		t.Errorf("finish attempts = %d, want 1", attempts)
	}
	if got := testutil.ToFloat64(s.m.finishes.WithLabelValues("error")); got != 1 {
		t.Errorf("finishes{result=error} = %v, want 1", got)
	}

	aws.failFor(name, nil)
	tm.processPending(context.Background(), k)
	got := storedSA(t, cs, "demo", name).Annotations
	if _, ok := got[annotations.Pending]; ok || got[annotations.Granted] != granted("u1", awsA) || got[annotations.AWSRoleARN] != seedA+"-0" {
		t.Errorf("after the retry: annotations %v", got)
	}
	if n := aws.callsFor("demo", name); n != 2 {
		t.Errorf("aws Finish called %d times, want 2", n)
	}
	tm.mu.Lock()
	_, tracked := tm.finishAttempts[k]
	tm.mu.Unlock()
	if tracked {
		t.Error("attempts still tracked after the finish")
	}
}
