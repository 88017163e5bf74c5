package sweeper

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// leaseAPI sits in front of the fake clientset's Leases and plays the apiserver becoming
// unreachable for the sweeper: requests fail at once, or hang until restored (and then go
// through, as a request stuck in a slow apiserver would). It records when writes naming the
// holder, and releases, reached the store.
type leaseAPI struct {
	mu       sync.Mutex
	fault    string // "", "fail" or "hang"
	unblock  chan struct{}
	renewals []time.Time
	released time.Time
}

func newLeaseAPI() *leaseAPI { return &leaseAPI{unblock: make(chan struct{})} }

func (a *leaseAPI) setFault(f string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fault = f
}

// restore ends the fault and lets hung requests through. Idempotent.
func (a *leaseAPI) restore() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fault == "hang" {
		close(a.unblock)
		a.unblock = make(chan struct{})
	}
	a.fault = ""
}

func (a *leaseAPI) react(action k8stesting.Action) (bool, runtime.Object, error) {
	a.mu.Lock()
	fault, unblock := a.fault, a.unblock
	a.mu.Unlock()
	switch fault {
	case "fail":
		return true, nil, errors.New("read tcp 10.0.0.7:41822->10.96.0.1:443: read: connection reset by peer")
	case "hang":
		<-unblock
	}
	if w, ok := action.(interface{ GetObject() runtime.Object }); ok {
		if l, ok := w.GetObject().(*coordinationv1.Lease); ok {
			a.mu.Lock()
			if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				a.renewals = append(a.renewals, time.Now())
			} else {
				a.released = time.Now()
			}
			a.mu.Unlock()
		}
	}
	return false, nil, nil // on to the fake's object tracker
}

// lastRenewalBefore is the last write naming the holder that reached the store before t.
func (a *leaseAPI) lastRenewalBefore(t time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var last time.Time
	for _, r := range a.renewals {
		if r.Before(t) {
			last = r
		}
	}
	return last
}

func (a *leaseAPI) renewalCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.renewals)
}

func (a *leaseAPI) releasedAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.released
}

// syncBuffer is a log sink written by several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func receive(t *testing.T, ch <-chan time.Time, within time.Duration, what string) time.Time {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("timed out after %s waiting for %s", within, what)
		return time.Time{}
	}
}

// A leader whose Lease renewals stop succeeding (apiserver unreachable: requests reset or hang)
// stops its term before the Lease can expire for the other replicas, instead of when client-go
// gives up (after a failed renewal and a failed release, up to twice RenewDeadline); it leads
// again once renewals work; and on a clean shutdown the term's workers stop before the Lease is
// released.
func TestLeaderStopsWorkWhenRenewalsStop(t *testing.T) {
	for _, fault := range []string{"fail", "hang"} {
		t.Run("requests "+fault, func(t *testing.T) {
			api := newLeaseAPI()
			cs := fake.NewClientset()
			cs.PrependReactor("*", "leases", api.react)
			cfg := Config{Namespace: "credential-webhook", Identity: "credential-webhook-7d9f-a",
				LeaseDuration: 1500 * time.Millisecond, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}
			logs := &syncBuffer{}
			s := New(kubeadapter.Wrap(cs), cfg, Deps{Recorder: record.NewFakeRecorder(100)}, slog.New(slog.NewTextHandler(logs, nil)))
			started, ended := make(chan time.Time, 4), make(chan time.Time, 4)
			s.work = func(ctx context.Context) {
				started <- time.Now()
				<-ctx.Done()
				time.Sleep(50 * time.Millisecond) // workers take a moment to wind down
				ended <- time.Now()
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { s.Run(ctx); close(done) }()
			t.Cleanup(func() { cancel(); api.restore(); <-done })

			receive(t, started, 5*time.Second, "the first term")
			for n := api.renewalCount(); api.renewalCount() < n+3; {
				time.Sleep(20 * time.Millisecond)
			}
			select {
			case <-ended:
				t.Fatal("the term ended while its Lease was being renewed")
			default:
			}

			api.setFault(fault)
			faultAt := time.Now()
			end := receive(t, ended, 5*time.Second, "the term to stop after renewals stopped")
			last := api.lastRenewalBefore(end)
			if !last.Before(faultAt) {
				t.Fatalf("a renewal reached the store at %s, after the fault at %s", last, faultAt)
			}
			// The safety property: the last renewal another replica can have seen is `last`;
			// it may take the Lease over LeaseDuration after that. The term must be over by then.
			if !end.Before(last.Add(cfg.LeaseDuration)) {
				t.Errorf("term stopped %s after the last renewal, not before the Lease duration %s", end.Sub(last), cfg.LeaseDuration)
			}
			t.Logf("term stopped %s after the last successful renewal (renew deadline %s, lease %s)",
				end.Sub(last).Round(time.Millisecond), cfg.RenewDeadline, cfg.LeaseDuration)
			if !strings.Contains(logs.String(), "stopping work before it expires") {
				t.Errorf("no warning logged; logs:\n%s", logs)
			}

			api.restore()
			restoredAt := time.Now()
			again := receive(t, started, 10*time.Second, "leading again after renewals work again")
			if !again.After(restoredAt) {
				t.Errorf("a new term started at %s, before the Lease could be renewed (%s)", again, restoredAt)
			}

			// Clean shutdown: workers first, then the Lease.
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after its context ended")
			}
			end2 := receive(t, ended, time.Second, "the second term to stop")
			if rel := api.releasedAt(); !rel.After(end2) {
				t.Errorf("Lease released at %s, not after the term's workers stopped at %s", rel, end2)
			}
		})
	}
}
