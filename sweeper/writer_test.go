package sweeper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/markers"
)

// eventuallyWithin is the generous deadline of every wait below: the outcomes are asserted, never
// how long they took.
const eventuallyWithin = 30 * time.Second

// eventually polls cond until it holds, failing the test after eventuallyWithin with cond's
// last description of the state.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(eventuallyWithin)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last seen: %s", what, eventuallyWithin, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writerHarness is one replica's writer over a fake apiserver, reading a real shared
// ServiceAccount informer, without a leader: whatever gets written, the writer wrote.
type writerHarness struct {
	cs       *fake.Clientset
	s        *Sweeper
	recorder *record.FakeRecorder
	clouds   []*testCloud
}

// startWriter starts the informer and RunWriter and returns once the writer demonstrably
// serves events in order: a warm-up ServiceAccount (namespace "warmup") was planned, created and
// finished by it. From then on the writer's handler sees the informer's events in watch order.
func startWriter(t *testing.T, cfg Config, clouds ...*testCloud) *writerHarness {
	t.Helper()
	cs := fake.NewClientset()
	patchTestsAsAPIServer(cs)
	// The fake does not replay from a resourceVersion: an object created between the
	// informer's LIST and its WATCH would be missed. Signal when the watch is established.
	watching := make(chan struct{})
	var once sync.Once
	cs.PrependWatchReactor("serviceaccounts", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := cs.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return false, nil, err
		}
		once.Do(func() { close(watching) })
		return true, w, nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cs, 0)
	informer := factory.Core().V1().ServiceAccounts().Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		cancel()
		t.Fatal("ServiceAccount informer did not sync")
	}
	select {
	case <-watching:
	case <-time.After(eventuallyWithin):
		cancel()
		t.Fatal("ServiceAccount informer did not start watching")
	}

	recorder := record.NewFakeRecorder(100)
	deps := Deps{ServiceAccounts: informer, Recorder: recorder}
	for _, c := range clouds {
		deps.Clouds = append(deps.Clouds, c)
	}
	s := New(kubeadapter.Wrap(cs), cfg, deps, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunWriter(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})

	h := &writerHarness{cs: cs, s: s, recorder: recorder, clouds: clouds}
	c := clouds[0]
	warm := claimSA("writer-ready", "warmup-uid", map[string]string{c.input: "warmup", annotations.Pending: pending(markers.For(c.name, "warmup"))})
	warm.Namespace = "warmup"
	s.Planned(warm.Namespace, warm.Name)
	h.create(t, warm)
	h.waitFinished(t, warm.Namespace, warm.Name)
	eventually(t, "the warm-up's Assigned Event", func() (bool, string) {
		select {
		case e := <-recorder.Events:
			if !strings.Contains(e, "Normal Assigned") {
				t.Fatalf("warm-up Event %q", e)
			}
			return true, ""
		default:
			return false, "no Event"
		}
	})
	return h
}

func (h *writerHarness) create(t *testing.T, sa *corev1.ServiceAccount) {
	t.Helper()
	if _, err := h.cs.CoreV1().ServiceAccounts(sa.Namespace).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating ServiceAccount %s/%s: %v", sa.Namespace, sa.Name, err)
	}
}

// waitFinished waits until namespace/name carries no pending marker and returns it.
func (h *writerHarness) waitFinished(t *testing.T, namespace, name string) *corev1.ServiceAccount {
	t.Helper()
	var sa *corev1.ServiceAccount
	eventually(t, fmt.Sprintf("ServiceAccount %s/%s finished", namespace, name), func() (bool, string) {
		got, err := h.cs.CoreV1().ServiceAccounts(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		_, pending := got.Annotations[annotations.Pending]
		sa = got
		return !pending, fmt.Sprintf("annotations %v", got.Annotations)
	})
	return sa
}

// events returns the Events recorded so far.
func (h *writerHarness) events() []string { return drainEvents(h.recorder) }

// (a) The writer finishes a ServiceAccount it planned as soon as the informer shows it
// persisted: the cloud is written once, the outputs and the granted marker are set, the pending
// marker goes.
func TestWriterFinishesPlannedServiceAccount(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{}, aws)
	const uid types.UID = "5b0f3c1e-0d6a-4e8e-9a55-7f1f2b3c4d5e"
	sa := claimSA("app-backup", uid, map[string]string{
		annotations.SeedRole:   seedA,
		annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/kubestash-selfhost-0", // planned at admission
		annotations.Pending:    pending(awsA),
	})

	h.s.Planned(sa.Namespace, sa.Name) // admission planned it...
	h.create(t, sa)                    // ...and the apiserver persisted it

	eventually(t, "granted, outputs set, pending removed", func() (bool, string) {
		got, err := h.cs.CoreV1().ServiceAccounts(sa.Namespace).Get(context.Background(), sa.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		a := got.Annotations
		_, pending := a[annotations.Pending]
		return !pending && a[annotations.Granted] == granted(uid, awsA) && a[annotations.AWSRoleARN] == seedA+"-0",
			fmt.Sprintf("annotations %v", a)
	})
	if n := aws.callsFor(sa.Namespace, sa.Name); n != 1 {
		t.Errorf("aws Finish called %d times, want 1", n)
	}
	eventually(t, "the Assigned Event", func() (bool, string) {
		select {
		case e := <-h.recorder.Events:
			if !strings.Contains(e, "Normal Assigned credential-webhook granted the aws identity") {
				t.Errorf("Event %q", e)
			}
			return true, ""
		default:
			return false, "no Event"
		}
	})
}

// (b) A ServiceAccount this replica did not plan is not written by its writer (the replica that
// planned it, or the leader after the handoff, does). One worker takes planned ServiceAccounts
// in the order the informer delivered them: once a ServiceAccount created after the unplanned
// one is finished, the writer has seen the unplanned one and passed it by.
func TestWriterSkipsServiceAccountsNotPlannedHere(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{WriterWorkers: 1}, aws)
	other := claimSA("planned-elsewhere", "u-other", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	mine := claimSA("planned-here", "u-mine", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})

	h.s.Planned(mine.Namespace, mine.Name)
	h.create(t, other)
	h.create(t, mine)
	h.waitFinished(t, mine.Namespace, mine.Name)

	if n := aws.callsFor(other.Namespace, other.Name); n != 0 {
		t.Errorf("aws Finish called %d times for a ServiceAccount not planned here, want 0", n)
	}
	got := storedSA(t, h.cs, other.Namespace, other.Name)
	if got.Annotations[annotations.Pending] != pending(awsA) || got.Annotations[annotations.Granted] != "" {
		t.Errorf("ServiceAccount not planned here was written: %v", got.Annotations)
	}
}

// A plan older than plannedTTL (its object never showed up in time) is forgotten: the writer
// leaves the ServiceAccount to the leader.
func TestWriterForgetsExpiredPlans(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{WriterWorkers: 1}, aws)
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	h.s.writer.mu.Lock() // s.now is read under the writer's lock (Planned, take)
	h.s.now = func() time.Time { return *now.Load() }
	h.s.writer.mu.Unlock()

	late := claimSA("planned-long-ago", "u-late", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.s.Planned(late.Namespace, late.Name)
	later := start.Add(plannedTTL + time.Second)
	now.Store(&later)
	h.create(t, late)
	sentinel := claimSA("planned-now", "u-now", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.s.Planned(sentinel.Namespace, sentinel.Name)
	h.create(t, sentinel)
	h.waitFinished(t, sentinel.Namespace, sentinel.Name)

	if n := aws.callsFor(late.Namespace, late.Name); n != 0 {
		t.Errorf("aws Finish called %d times for an expired plan, want 0", n)
	}
	if got := storedSA(t, h.cs, late.Namespace, late.Name).Annotations; got[annotations.Pending] != pending(awsA) {
		t.Errorf("ServiceAccount of an expired plan was written: %v", got)
	}
}

// (c) A claim whose seed changed since admission is dropped: no cloud call for it, its output
// removed, a ClaimDropped Warning; the other cloud's claim, still made, is granted.
func TestWriterDropsClaimWhoseSeedChanged(t *testing.T) {
	aws, azure := awsCloud(), azureCloud()
	h := startWriter(t, Config{}, aws, azure)
	const uid types.UID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
	sa := claimSA("app-backup", uid, map[string]string{
		annotations.SeedRole:    seedB, // admission accepted seedA
		annotations.AWSRoleARN:  "arn:aws:iam::748392615204:role/kubestash-selfhost-0",
		annotations.AzureMIName: miA,
		annotations.Pending:     pending(awsA, azureA),
	})

	h.s.Planned(sa.Namespace, sa.Name)
	h.create(t, sa)
	got := h.waitFinished(t, sa.Namespace, sa.Name).Annotations

	if _, ok := got[annotations.AWSRoleARN]; ok {
		t.Errorf("role ARN of the dropped claim left: %v", got)
	}
	if got[annotations.Granted] != granted(uid, azureA) {
		t.Errorf("granted = %q, want %q", got[annotations.Granted], granted(uid, azureA))
	}
	if got[annotations.AzureClientID] != "client-of-"+miA || got[annotations.AzureTenantID] != tenantID {
		t.Errorf("azure outputs not set: %v", got)
	}
	if got[annotations.SeedRole] != seedB {
		t.Errorf("the input annotation changed: %v", got)
	}
	if n := aws.callsFor(sa.Namespace, sa.Name); n != 0 {
		t.Errorf("aws Finish called %d times for a dropped claim, want 0", n)
	}
	if n := azure.callsFor(sa.Namespace, sa.Name); n != 1 {
		t.Errorf("azure Finish called %d times, want 1", n)
	}
	var events []string
	eventually(t, "the ClaimDropped and Assigned Events", func() (bool, string) {
		events = append(events, h.events()...)
		return len(events) >= 2, fmt.Sprintf("%q", events)
	})
	if len(events) != 2 ||
		!strings.Contains(events[0], "Warning ClaimDropped credential-webhook did not grant the aws identity: the ServiceAccount no longer asks for the aws identity admission accepted") ||
		!strings.Contains(events[1], "Normal Assigned credential-webhook granted the azure identity") {
		t.Errorf("Events %q, want a ClaimDropped Warning for aws, then Assigned for azure", events)
	}
}

// (d) A cloud error: the writer tries once and leaves the ServiceAccount pending for the
// leader. Neither a retry of its own nor a later update of the ServiceAccount makes it try
// again.
func TestWriterLeavesCloudErrorsToTheLeader(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{WriterWorkers: 1}, aws)
	failing := claimSA("app-backup", "u-failing", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	aws.failFor(failing.Name, errors.New("operation error IAM: UpdateAssumeRolePolicy, api error Throttling: Rate exceeded"))

	h.s.Planned(failing.Namespace, failing.Name)
	h.create(t, failing)
	eventually(t, "the writer's failed attempt", func() (bool, string) {
		n := testutil.ToFloat64(h.s.m.finishes.WithLabelValues("writer_error"))
		return n == 1, fmt.Sprintf("finishes{result=writer_error} = %v", n)
	})

	// An update the informer delivers after the failure: no second attempt.
	cur := storedSA(t, h.cs, failing.Namespace, failing.Name)
	cur.Labels = map[string]string{"kubestash.com/app": "demo"}
	if _, err := h.cs.CoreV1().ServiceAccounts(cur.Namespace).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// With one worker, a ServiceAccount planned and created after that update is taken after
	// anything the update queued.
	sentinel := claimSA("app-restore", "u-sentinel", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.s.Planned(sentinel.Namespace, sentinel.Name)
	h.create(t, sentinel)
	h.waitFinished(t, sentinel.Namespace, sentinel.Name)

	if n := aws.callsFor(failing.Namespace, failing.Name); n != 1 {
		t.Errorf("aws Finish called %d times for the failing ServiceAccount, want 1", n)
	}
	got := storedSA(t, h.cs, failing.Namespace, failing.Name).Annotations
	if got[annotations.Pending] != pending(awsA) {
		t.Errorf("pending marker = %q, want it left for the leader (%q)", got[annotations.Pending], pending(awsA))
	}
	if _, ok := got[annotations.Granted]; ok {
		t.Errorf("granted written after a failure: %v", got)
	}
	if _, ok := got[annotations.AWSRoleARN]; ok {
		t.Errorf("role ARN written after a failure: %v", got)
	}
	if n := testutil.ToFloat64(h.s.m.finishes.WithLabelValues("writer_error")); n != 1 {
		t.Errorf("finishes{result=writer_error} = %v, want 1", n)
	}
	for _, e := range h.events() {
		if strings.Contains(e, "Warning") {
			t.Errorf("the writer recorded a Warning Event for a failure it leaves to the leader: %q", e)
		}
	}
}

// Which replica's writer writes: the leader every pending ServiceAccount; a replica where a
// sweeper campaigns but another leads, none (two writers would take the seed's Lease in turns and
// reload after each other's writes); without a sweeper, what this replica planned.
func TestWriterWritesOnOneReplica(t *testing.T) {
	for _, tc := range []struct {
		leading, campaigning, planned, want bool
	}{
		{leading: true, campaigning: true, planned: false, want: true},
		{leading: true, campaigning: true, planned: true, want: true},
		{leading: false, campaigning: true, planned: true, want: false},
		{leading: false, campaigning: true, planned: false, want: false},
		{leading: false, campaigning: false, planned: true, want: true},
		{leading: false, campaigning: false, planned: false, want: false},
	} {
		if got := writes(tc.leading, tc.campaigning, tc.planned); got != tc.want {
			t.Errorf("writes(leading=%v, campaigning=%v, planned=%v) = %v, want %v", tc.leading, tc.campaigning, tc.planned, got, tc.want)
		}
	}
}

// lead makes h's replica the leader as Run does when its term starts.
func (h *writerHarness) lead() {
	h.s.campaigning.Store(true)
	h.s.leading.Store(true)
	h.s.writer.leadingStarted()
}

// The leader's writer writes a ServiceAccount no admission on this replica planned, at once (not
// after the finisher's handoff: no finisher runs here).
func TestLeaderWriterWritesUnplannedServiceAccounts(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{}, aws)
	h.lead()
	sa := claimSA("planned-elsewhere", "u-elsewhere", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.create(t, sa)
	got := h.waitFinished(t, sa.Namespace, sa.Name)
	if got.Annotations[annotations.Granted] != granted("u-elsewhere", awsA) {
		t.Errorf("annotations %v, want it granted", got.Annotations)
	}
	if n := aws.callsFor(sa.Namespace, sa.Name); n != 1 {
		t.Errorf("aws Finish called %d times, want 1", n)
	}
}

// A replica that starts leading writes what was pending before (its writer left those to the
// leader of the time); Planned on a campaigning replica records nothing.
func TestLeaderWriterTakesWhatWasPendingBefore(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{}, aws)
	h.s.campaigning.Store(true) // another replica leads
	sa := claimSA("pending-before", "u-before", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.s.Planned(sa.Namespace, sa.Name)
	if h.s.writer.has(key(sa.Namespace, sa.Name)) {
		t.Fatal("a campaigning replica recorded a plan: the leader writes every pending ServiceAccount")
	}
	h.create(t, sa)
	eventually(t, "the informer holds it", func() (bool, string) {
		_, ok, _ := h.s.deps.ServiceAccounts.GetStore().GetByKey(key(sa.Namespace, sa.Name))
		return ok, "not in the informer's store"
	})
	h.lead()
	h.waitFinished(t, sa.Namespace, sa.Name)
	if n := aws.callsFor(sa.Namespace, sa.Name); n != 1 {
		t.Errorf("aws Finish called %d times, want 1", n)
	}
}

// The leader's writer tries a failing ServiceAccount once: an update that does not plan it anew
// (a label) does not retry it at once, outside the finisher's backoff.
func TestLeaderWriterDoesNotRetryOnEveryUpdate(t *testing.T) {
	aws := awsCloud()
	h := startWriter(t, Config{WriterWorkers: 1}, aws)
	h.lead()
	failing := claimSA("app-backup", "u-failing", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	aws.failFor(failing.Name, errors.New("operation error IAM: UpdateAssumeRolePolicy, api error Throttling: Rate exceeded"))
	h.create(t, failing)
	eventually(t, "the writer's failed attempt", func() (bool, string) {
		n := testutil.ToFloat64(h.s.m.finishes.WithLabelValues("writer_error"))
		return n == 1, fmt.Sprintf("finishes{result=writer_error} = %v", n)
	})
	for i := range 3 {
		cur := storedSA(t, h.cs, failing.Namespace, failing.Name)
		cur.Labels = map[string]string{"attempt": fmt.Sprint(i)}
		if _, err := h.cs.CoreV1().ServiceAccounts(cur.Namespace).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// One worker: a ServiceAccount created after the updates is taken after anything they queued.
	sentinel := claimSA("app-restore", "u-sentinel", map[string]string{annotations.SeedRole: seedA, annotations.Pending: pending(awsA)})
	h.create(t, sentinel)
	h.waitFinished(t, sentinel.Namespace, sentinel.Name)
	if n := aws.callsFor(failing.Namespace, failing.Name); n != 1 {
		t.Errorf("aws Finish called %d times for the failing ServiceAccount, want 1", n)
	}
}
