package sweeper

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

var gaugeNow = time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)

// gaugeJob is a KubeStash Job, held since heldSince when that is not empty.
func gaugeJob(name, heldSince string, kubestash bool) *batchv1.Job {
	j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Labels: map[string]string{}, Annotations: map[string]string{},
		CreationTimestamp: metav1.NewTime(gaugeNow.Add(-time.Hour))}}
	if kubestash {
		j.Labels[annotations.ManagedByLabel] = annotations.ManagedByValue
	}
	if heldSince != "" {
		j.Annotations[annotations.HeldSince] = heldSince
	}
	return j
}

func TestHeldJobStats(t *testing.T) {
	at := func(d time.Duration) string { return gaugeNow.Add(-d).Format(time.RFC3339) }
	for _, tc := range []struct {
		name   string
		jobs   []*batchv1.Job
		held   int
		oldest time.Duration
	}{
		{"none", nil, 0, 0},
		{"not held", []*batchv1.Job{gaugeJob("a", "", true)}, 0, 0},
		{"held, oldest wins", []*batchv1.Job{gaugeJob("a", at(2*time.Minute), true), gaugeJob("b", at(9*time.Minute), true), gaugeJob("c", at(time.Second), true)}, 3, 9 * time.Minute},
		{"our annotation on a Job that is not KubeStash's", []*batchv1.Job{gaugeJob("a", at(time.Hour), false)}, 0, 0},
		{"unreadable held-since: the creation time", []*batchv1.Job{gaugeJob("a", "yesterday", true)}, 1, time.Hour},
		{"held-since in the future: age 0", []*batchv1.Job{gaugeJob("a", gaugeNow.Add(time.Minute).Format(time.RFC3339), true)}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			held, oldest := HeldJobStats(tc.jobs, gaugeNow)
			if held != tc.held || oldest != tc.oldest {
				t.Errorf("HeldJobStats = %d, %s; want %d, %s", held, oldest, tc.held, tc.oldest)
			}
		})
	}
}

func gaugeSA(name, pending string, deleting bool) *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name}}
	if pending != "" {
		sa.Annotations = map[string]string{annotations.Pending: pending}
	}
	if deleting {
		now := metav1.NewTime(gaugeNow)
		sa.DeletionTimestamp = &now
	}
	return sa
}

func TestPendingByCloud(t *testing.T) {
	aws, az := markers.For(markers.AWS, "arn:aws:iam::1:role/s"), markers.For(markers.Azure, "/subscriptions/x")
	both := markers.FormatPending(markers.Claims{aws, az})
	for _, tc := range []struct {
		name     string
		sas      []*corev1.ServiceAccount
		aws, azu int
	}{
		{"none: both clouds at 0", nil, 0, 0},
		{"not pending", []*corev1.ServiceAccount{gaugeSA("a", "", false)}, 0, 0},
		{"by cloud", []*corev1.ServiceAccount{gaugeSA("a", aws.String(), false), gaugeSA("b", az.String(), false), gaugeSA("c", both, false)}, 2, 2},
		{"being deleted: not counted", []*corev1.ServiceAccount{gaugeSA("a", aws.String(), true)}, 0, 0},
		{"malformed: every cloud", []*corev1.ServiceAccount{gaugeSA("a", "gcp:zz", false)}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PendingByCloud(tc.sas)
			if len(got) != 2 || got[markers.AWS] != tc.aws || got[markers.Azure] != tc.azu {
				t.Errorf("PendingByCloud = %v; want aws %d azure %d (and no other key)", got, tc.aws, tc.azu)
			}
		})
	}
}

func TestBoundSeeds(t *testing.T) {
	s := func(names ...string) []SeedUsage {
		var out []SeedUsage
		for _, n := range names {
			out = append(out, SeedUsage{Seed: n, Roles: len(n)})
		}
		return out
	}
	seeds := func(us []SeedUsage) string {
		var out []string
		for _, u := range us {
			out = append(out, u.Seed)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name    string
		in      []SeedUsage
		limit   int
		want    string
		omitted int
	}{
		{"none", nil, 2, "", 0},
		{"under the cap, sorted", s("c", "a", "b"), 3, "a,b,c", 0},
		{"over the cap: the first by name, the rest counted", s("d", "b", "a", "c"), 2, "a,b", 2},
		{"a seed twice counts once", s("a", "a", "b"), 2, "a,b", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, omitted := BoundSeeds(tc.in, tc.limit)
			if seeds(got) != tc.want || omitted != tc.omitted {
				t.Errorf("BoundSeeds = %s, %d; want %s, %d", seeds(got), omitted, tc.want, tc.omitted)
			}
		})
	}
}

type staticUsage struct {
	seeds []SeedUsage
	limit int
}

func (u staticUsage) SeedUsage() ([]SeedUsage, int) { return u.seeds, u.limit }

// The collector exports the gauges only while a term lends it its caches, and renders the pure
// functions' answers.
func TestStateCollector(t *testing.T) {
	var seeds []SeedUsage
	for i := range MaxSeedSeries + 3 {
		seeds = append(seeds, SeedUsage{Seed: "arn:aws:iam::123456789012:role/s" + string(rune('A'+i/26)) + string(rune('a'+i%26)), Roles: 9, Subjects: 180, Fill: 0.93})
	}
	c := newStateCollector(staticUsage{seeds: seeds, limit: 10})
	c.now = func() time.Time { return gaugeNow }
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("not leading: %d series, %v; want none", n, err)
	}
	c.set(&stateSource{
		heldJobs: func(now time.Time) (int, time.Duration) {
			return HeldJobStats([]*batchv1.Job{gaugeJob("a", gaugeNow.Add(-7*time.Minute).Format(time.RFC3339), true), gaugeJob("b", "", true)}, now)
		},
		sas: func() []*corev1.ServiceAccount {
			return []*corev1.ServiceAccount{gaugeSA("a", markers.For(markers.Azure, "x").String(), false)}
		},
	})
	want := `
# HELP credential_webhook_held_job_oldest_age_seconds Age of the Job held longest (since our held-since annotation), 0 when none is held; exported by the sweeper leader only.
# TYPE credential_webhook_held_job_oldest_age_seconds gauge
credential_webhook_held_job_oldest_age_seconds 420
# HELP credential_webhook_pending_serviceaccounts ServiceAccounts whose cloud identity was planned at admission but not written yet (our pending marker), by cloud; exported by the sweeper leader only.
# TYPE credential_webhook_pending_serviceaccounts gauge
credential_webhook_pending_serviceaccounts{cloud="aws"} 0
credential_webhook_pending_serviceaccounts{cloud="azure"} 1
# HELP credential_webhook_role_creation_limit Derived roles a seed may have at most (--role-creation-limit).
# TYPE credential_webhook_role_creation_limit gauge
credential_webhook_role_creation_limit 10
# HELP credential_webhook_derived_role_seeds_omitted Seeds left out of the per-seed gauges because more than 50 are cached.
# TYPE credential_webhook_derived_role_seeds_omitted gauge
credential_webhook_derived_role_seeds_omitted 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"credential_webhook_held_job_oldest_age_seconds", "credential_webhook_pending_serviceaccounts",
		"credential_webhook_role_creation_limit", "credential_webhook_derived_role_seeds_omitted"); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"credential_webhook_derived_roles", "credential_webhook_derived_role_subjects", "credential_webhook_derived_role_fill_ratio"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != MaxSeedSeries {
			t.Errorf("%s: %d series, %v; want %d (capped)", name, n, err, MaxSeedSeries)
		}
	}
	// The series are the first seeds by name, with the reporter's values.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := BoundSeeds(seeds, MaxSeedSeries)
	for _, mf := range mfs {
		if mf.GetName() != "credential_webhook_derived_role_fill_ratio" {
			continue
		}
		for i, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "seed" || l[0].GetValue() != kept[i].Seed || m.GetGauge().GetValue() != 0.93 {
				t.Errorf("fill series %d: %v = %v; want seed %s = 0.93", i, l, m.GetGauge().GetValue(), kept[i].Seed)
			}
		}
	}
	c.set(nil)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("after the term: %d series, %v; want none", n, err)
	}
}

// A term lends the collector its own caches: the gauges follow the Jobs and ServiceAccounts the
// term's listers hold.
func TestTermCacheSource(t *testing.T) {
	heldSince := gaugeNow.Add(-12 * time.Minute)
	job := newHeldJob(func(j *batchv1.Job) { j.Annotations[annotations.HeldSince] = heldSince.Format(time.RFC3339) })
	sa := gaugeSA("app-backup", markers.For(markers.AWS, "arn:aws:iam::1:role/s").String(), false)
	_, s, tm, _ := maxHoldTerm(t, job, sa, &refusingChecker{}, time.Hour)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.m.state)
	s.m.state.now = func() time.Time { return gaugeNow }
	s.m.state.set(tm.cacheSource())
	want := `
# HELP credential_webhook_held_job_oldest_age_seconds Age of the Job held longest (since our held-since annotation), 0 when none is held; exported by the sweeper leader only.
# TYPE credential_webhook_held_job_oldest_age_seconds gauge
credential_webhook_held_job_oldest_age_seconds 720
# HELP credential_webhook_pending_serviceaccounts ServiceAccounts whose cloud identity was planned at admission but not written yet (our pending marker), by cloud; exported by the sweeper leader only.
# TYPE credential_webhook_pending_serviceaccounts gauge
credential_webhook_pending_serviceaccounts{cloud="aws"} 1
credential_webhook_pending_serviceaccounts{cloud="azure"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err) // no usage reporter: no per-seed gauges either
	}
}
