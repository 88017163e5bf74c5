package election

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const ns = "credential-webhook"

func elector(cs *fake.Clientset, id string) *Elector {
	return &Elector{
		Leases: cs.CoordinationV1().Leases(ns), Name: "sweeper", Identity: id,
		Labels:        map[string]string{"managed": "true"},
		LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond,
	}
}

// The budget is RenewDeadline, except that it ends a margin before the Lease expires as the
// other replicas count it: the whole seconds the Lease records.
func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		lease, deadline, retry time.Duration
		want                   time.Duration
	}{
		{"defaults", 15 * time.Second, 10 * time.Second, 2 * time.Second, 10 * time.Second},
		{"shortest flag value", 3 * time.Second, 2 * time.Second, 400 * time.Millisecond, 2 * time.Second},
		{"fractional lease is written as whole seconds", 1500 * time.Millisecond, time.Second, 200 * time.Millisecond, 950 * time.Millisecond},
		{"deadline close to the lease keeps a margin", 3 * time.Second, 2950 * time.Millisecond, 2 * time.Second, 2750 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Elector{LeaseDuration: tc.lease, RenewDeadline: tc.deadline, RetryPeriod: tc.retry}
			if got := e.Budget(); got != tc.want {
				t.Errorf("Budget = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	cs := fake.NewClientset()
	for _, tc := range []struct {
		name string
		edit func(*Elector)
		ok   bool
	}{
		{"valid", func(*Elector) {}, true},
		{"no identity", func(e *Elector) { e.Identity = "" }, false},
		{"no retry period", func(e *Elector) { e.RetryPeriod = 0 }, false},
		{"deadline within a jittered retry", func(e *Elector) { e.RenewDeadline = 110 * time.Millisecond }, false},
		{"lease not longer than the deadline", func(e *Elector) { e.LeaseDuration = e.RenewDeadline }, false},
		{"sub-second lease (recorded as 0 s: expired for everyone)", func(e *Elector) {
			e.LeaseDuration, e.RenewDeadline, e.RetryPeriod = 900*time.Millisecond, 500*time.Millisecond, 100*time.Millisecond
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := elector(cs, "a")
			tc.edit(e)
			if err := e.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate = %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				if err := e.Run(context.Background(), func(context.Context) { t.Error("led with an invalid configuration") }); err == nil {
					t.Error("Run accepted an invalid configuration")
				}
			}
		})
	}
}

// A renewal counts from the moment it was sent (the other replicas start counting the Lease
// when they see the write, which is later), only when it succeeded, and a release is none.
func TestRenewalCountsFromWhenItWasSent(t *testing.T) {
	cs := fake.NewClientset()
	var mu sync.Mutex
	var served time.Time
	fail := false
	cs.PrependReactor("*", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		time.Sleep(20 * time.Millisecond) // a slow apiserver
		mu.Lock()
		defer mu.Unlock()
		served = time.Now()
		if fail {
			return true, nil, errors.New("connection reset by peer")
		}
		return false, nil, nil
	})
	servedAt := func() time.Time { mu.Lock(); defer mu.Unlock(); return served }
	e := elector(cs, "a")
	ctx := context.Background()
	if !e.LastRenewal().IsZero() {
		t.Fatal("a renewal before any write")
	}
	if ok, lost := e.tryAcquireOrRenew(ctx); !ok || lost {
		t.Fatalf("acquiring a missing Lease: ok %v lost %v", ok, lost)
	}
	created := e.LastRenewal()
	if created.IsZero() || !created.Before(servedAt().Add(-10*time.Millisecond)) {
		t.Fatalf("acquisition recorded at %s, not when it was sent (served at %s)", created, servedAt())
	}
	l, err := cs.CoordinationV1().Leases(ns).Get(ctx, "sweeper", metav1.GetOptions{})
	if err != nil || *l.Spec.HolderIdentity != "a" || *l.Spec.LeaseDurationSeconds != 2 || *l.Spec.LeaseTransitions != 0 || l.Labels["managed"] != "true" {
		t.Fatalf("created Lease %+v, %v", l, err)
	}

	mu.Lock()
	fail = true
	mu.Unlock()
	if ok, _ := e.tryAcquireOrRenew(ctx); ok {
		t.Fatal("renewed through a failing apiserver")
	}
	if got := e.LastRenewal(); !got.Equal(created) {
		t.Errorf("a failed renewal moved the last renewal from %s to %s", created, got)
	}

	mu.Lock()
	fail = false
	mu.Unlock()
	if ok, _ := e.tryAcquireOrRenew(ctx); !ok {
		t.Fatal("renewal failed")
	}
	renewed := e.LastRenewal()
	if !renewed.After(created) || !renewed.Before(servedAt()) {
		t.Errorf("renewal recorded at %s; want after %s and before it was served at %s", renewed, created, servedAt())
	}

	e.release()
	if got := e.LastRenewal(); !got.Equal(renewed) {
		t.Errorf("releasing the Lease counted as a renewal (%s, was %s)", got, renewed)
	}
	l, _ = cs.CoordinationV1().Leases(ns).Get(ctx, "sweeper", metav1.GetOptions{})
	if *l.Spec.HolderIdentity != "" || *l.Spec.LeaseDurationSeconds != 1 {
		t.Errorf("released Lease %+v", l.Spec)
	}
}

// A Lease another replica holds is taken over only once it has not changed for its duration, as
// this replica's clock measures it (the holder's clock may be off), with one more transition.
func TestTakesOverOnlyAnExpiredLease(t *testing.T) {
	old := metav1.NewMicroTime(time.Now().Add(-time.Hour)) // a skewed clock: ignored
	cs := fake.NewClientset(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "sweeper", Namespace: ns},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: new("dead"), LeaseDurationSeconds: new(int32(1)),
			AcquireTime: &old, RenewTime: &old, LeaseTransitions: new(int32(4))},
	})
	e := elector(cs, "a")
	var leaders []string
	e.OnLeader = func(id string) { leaders = append(leaders, id) }
	ctx := context.Background()
	first := time.Now()
	if ok, lost := e.tryAcquireOrRenew(ctx); ok || !lost {
		t.Fatalf("took over a Lease seen for the first time: ok %v lost %v", ok, lost)
	}
	for {
		ok, _ := e.tryAcquireOrRenew(ctx)
		if ok {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if waited := time.Since(first); waited < time.Second {
		t.Errorf("took over after %s, before the holder's one-second Lease had been seen unchanged that long", waited)
	}
	l, _ := cs.CoordinationV1().Leases(ns).Get(ctx, "sweeper", metav1.GetOptions{})
	if *l.Spec.HolderIdentity != "a" || *l.Spec.LeaseTransitions != 5 || !l.Spec.AcquireTime.After(old.Time) {
		t.Errorf("Lease after takeover %+v", l.Spec)
	}
	if len(leaders) != 2 || leaders[0] != "dead" || leaders[1] != "a" {
		t.Errorf("observed leaders %v, want [dead a]", leaders)
	}
}

// Two replicas: never both leading; when the leader stops, its workers stop before it releases
// the Lease and the other replica leads next; when another replica writes itself into the Lease,
// the leader's term ends.
func TestOneLeaderAtATime(t *testing.T) {
	cs := fake.NewClientset()
	var leading atomic.Int32
	var mu sync.Mutex
	var events []string
	record := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	started := make(chan string, 4)
	run := func(id string) (cancel func(), done chan struct{}) {
		ctx, cancel := context.WithCancel(context.Background())
		done = make(chan struct{})
		e := elector(cs, id)
		go func() {
			defer close(done)
			_ = e.Run(ctx, func(ctx context.Context) {
				if n := leading.Add(1); n != 1 {
					t.Errorf("%d replicas leading", n)
				}
				record(id + " leads")
				started <- id
				<-ctx.Done()
				time.Sleep(30 * time.Millisecond) // workers wind down
				record(id + " stopped")
				leading.Add(-1)
			})
			record(id + " returned")
		}()
		return cancel, done
	}
	cancelA, doneA := run("a")
	if got := <-started; got != "a" {
		t.Fatalf("%s leads first", got)
	}
	cancelB, doneB := run("b")
	defer func() { cancelB(); <-doneB }()
	time.Sleep(500 * time.Millisecond) // five retry periods: b must not lead meanwhile
	select {
	case id := <-started:
		t.Fatalf("%s leads while a renews", id)
	default:
	}

	cancelA()
	select {
	case id := <-started:
		if id != "b" {
			t.Fatalf("%s leads after a stopped", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not lead after a released the Lease")
	}
	<-doneA
	mu.Lock()
	if len(events) < 2 || events[0] != "a leads" || events[1] != "a stopped" {
		t.Errorf("events %v: a's workers must stop before anything else happens", events)
	}
	mu.Unlock()

	// Someone else writes itself into the Lease (a replica whose clock ran ahead): b's term ends.
	ctx := context.Background()
	l, err := cs.CoordinationV1().Leases(ns).Get(ctx, "sweeper", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity = new("c")
	if _, err := cs.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for leading.Load() != 0 {
		select {
		case <-deadline:
			t.Fatal("b kept leading after c took the Lease")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
