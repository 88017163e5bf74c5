package bench

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// IAMEnv is moto behind an iamproxy that enforces the trust-policy quota and counts calls. The
// Assigners under test talk to IAM through the proxy, exactly as the webhook would; setup goes
// straight to moto and is never counted.
type IAMEnv struct {
	Proxy  *iamproxy.Proxy
	API    awsp.IAMAPI // through the proxy
	Direct aws.Config  // straight to moto
	Quota  int
	Log    *slog.Logger
}

// IAMScenario is one row of the IAM-calls table.
type IAMScenario struct {
	Name        string         `json:"name"`
	What        string         `json:"what"`
	Assignments int            `json:"assignments"`
	Calls       map[string]int `json:"calls"` // "iam:UpdateAssumeRolePolicy" -> calls, all assignments together
	Total       int            `json:"total"`
	Created     int            `json:"rolesCreated"`
	Wall        time.Duration  `json:"wallNs"`
	P50         time.Duration  `json:"p50Ns,omitempty"` // per assignment, for bursts
	P99         time.Duration  `json:"p99Ns,omitempty"`
}

// PerAssignment is the mean number of IAM calls per assignment.
func (s IAMScenario) PerAssignment() float64 {
	if s.Assignments == 0 {
		return 0
	}
	return float64(s.Total) / float64(s.Assignments)
}

// seed creates a KubeStash-like seed role under its own path, so ListRoles in one scenario never
// sees another scenario's derived roles.
func (e *IAMEnv) seed(ctx context.Context, name string) (awsp.RoleARN, error) {
	arn, err := moto.CreateSeedRole(ctx, e.Direct, name, "/"+name+"/", Issuer)
	if err != nil {
		return awsp.RoleARN{}, fmt.Errorf("creating seed %s: %w", name, err)
	}
	return awsp.ParseRoleARN(arn)
}

func (e *IAMEnv) assigner(locker awsp.Locker) *awsp.Assigner {
	seeds, _ := awsp.ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/*")
	return awsp.NewAssigner(e.API, locker, awsp.Config{Seeds: seeds}, e.Log)
}

// measure runs f with the proxy's counters reset and fills in calls and wall time.
func (e *IAMEnv) measure(s *IAMScenario, f func() error) error {
	e.Proxy.ResetCalls()
	start := time.Now()
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	s.Wall = time.Since(start)
	s.Calls = map[string]int{}
	for k, v := range e.Proxy.Calls() {
		if v > 0 {
			s.Calls[k] = v
			s.Total += v
		}
	}
	return nil
}

func assign(ctx context.Context, a *awsp.Assigner, seed awsp.RoleARN, subject string) (awsp.Assignment, error) {
	ns, name, err := awsp.ParseSubject(subject)
	if err != nil {
		return awsp.Assignment{}, err
	}
	return a.Assign(ctx, seed, ns, name)
}

// RunIAMScenarios measures IAM calls per assignment: the first one in a cold process, steady
// state, an already-listed subject, the assignment that creates a new derived role, a restarted
// process, two replicas sharing one locker, and bursts of burst assignments (one replica, then
// two) from 16 concurrent callers.
func RunIAMScenarios(ctx context.Context, e *IAMEnv, burst, replicaBurst int) ([]IAMScenario, error) {
	var out []IAMScenario
	subjects := BackupSubjects(max(burst, 200))

	seed, err := e.seed(ctx, "kubestash-single")
	if err != nil {
		return nil, err
	}
	locker := awsp.NewLocalLocker()
	a := e.assigner(locker)

	first := IAMScenario{Name: "first assignment", What: "cold process, no derived role yet: quota, seed and role creation", Assignments: 1}
	if err := e.measure(&first, func() error {
		r, err := assign(ctx, a, seed, subjects[0])
		if r.Created {
			first.Created++
		}
		return err
	}); err != nil {
		return nil, err
	}
	out = append(out, first)

	steady := IAMScenario{Name: "steady state", What: "warm cache, room in role 0, no other writer since", Assignments: 10}
	if err := e.measure(&steady, func() error {
		for _, s := range subjects[1:11] {
			if r, err := assign(ctx, a, seed, s); err != nil {
				return err
			} else if r.Created || r.AlreadyListed {
				return fmt.Errorf("steady-state assignment of %s: %+v, want a write into an existing role", s, r)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out = append(out, steady)

	listed := IAMScenario{Name: "already listed", What: "the same ServiceAccount again (re-created, or the sweeper re-checking)", Assignments: 10}
	if err := e.measure(&listed, func() error {
		for _, s := range subjects[:10] {
			if r, err := assign(ctx, a, seed, s); err != nil {
				return err
			} else if !r.AlreadyListed {
				return fmt.Errorf("re-assigning %s: %+v, want already listed", s, r)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out = append(out, listed)

	// Fill role 0, then measure the assignment that spills into a new role.
	next := 11
	var created IAMScenario
	for ; next < len(subjects); next++ {
		created = IAMScenario{Name: "new derived role", What: "role 0 full (quota " + fmt.Sprint(e.Quota) + "): CreateRole with the subject, then the seed's policies", Assignments: 1}
		var r awsp.Assignment
		if err := e.measure(&created, func() error {
			var err error
			r, err = assign(ctx, a, seed, subjects[next])
			return err
		}); err != nil {
			return nil, err
		}
		if r.Created {
			created.Created = 1
			next++
			break
		}
	}
	if created.Created != 1 {
		return nil, fmt.Errorf("no assignment created a second role")
	}
	out = append(out, created)

	restart := IAMScenario{Name: "restarted process", What: "new process (cold cache), 2 derived roles exist", Assignments: 1}
	if err := e.measure(&restart, func() error {
		_, err := assign(ctx, e.assigner(awsp.NewLocalLocker()), seed, subjects[next])
		return err
	}); err != nil {
		return nil, err
	}
	out = append(out, restart)

	// Two replicas sharing one locker: each write bumps the generation, so the other replica's
	// cache is stale at its next assignment and it reloads (ListRoles) before writing.
	seed2, err := e.seed(ctx, "kubestash-replicas")
	if err != nil {
		return nil, err
	}
	shared := awsp.NewLocalLocker()
	ra, rb := e.assigner(shared), e.assigner(shared)
	for i, r := range []*awsp.Assigner{ra, rb} { // warm both (quota, seed, role 0)
		if _, err := assign(ctx, r, seed2, subjects[i]); err != nil {
			return nil, err
		}
	}
	alt := IAMScenario{Name: "two replicas, alternating", What: "replicas A and B share a locker (Lease) and take turns: A, B, A, B, ...", Assignments: 10}
	if err := e.measure(&alt, func() error {
		for i, s := range subjects[2:12] {
			r := ra
			if i%2 == 1 {
				r = rb
			}
			res, err := assign(ctx, r, seed2, s)
			if res.Created {
				alt.Created++
			}
			if err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out = append(out, alt)

	b1, err := e.burst(ctx, "kubestash-burst", "burst, one replica", burst, 1, subjects)
	if err != nil {
		return nil, err
	}
	out = append(out, b1)
	if replicaBurst > 0 {
		b2, err := e.burst(ctx, "kubestash-burst2", "burst, two replicas", replicaBurst, 2, subjects)
		if err != nil {
			return nil, err
		}
		out = append(out, b2)
	}
	return out, nil
}

// burst assigns n new subjects from 16 concurrent callers spread over replicas Assigners that
// share one locker, starting from cold processes and no derived role.
func (e *IAMEnv) burst(ctx context.Context, seedName, name string, n, replicas int, subjects []string) (IAMScenario, error) {
	seed, err := e.seed(ctx, seedName)
	if err != nil {
		return IAMScenario{}, err
	}
	locker := awsp.NewLocalLocker()
	as := make([]*awsp.Assigner, replicas)
	for i := range as {
		as[i] = e.assigner(locker)
	}
	const callers = 16
	s := IAMScenario{Name: fmt.Sprintf("%s (%d)", name, n),
		What:        fmt.Sprintf("%d new ServiceAccounts, %d concurrent callers over %d replica(s), cold start, quota %d", n, callers, replicas, e.Quota),
		Assignments: n}
	lat := make([]time.Duration, n)
	var mu sync.Mutex
	var firstErr error
	err = e.measure(&s, func() error {
		work := make(chan int)
		var wg sync.WaitGroup
		for c := range callers {
			wg.Go(func() {
				a := as[c%replicas]
				for i := range work {
					t0 := time.Now()
					r, err := assign(ctx, a, seed, subjects[i])
					lat[i] = time.Since(t0)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if r.Created {
						s.Created++
					}
					mu.Unlock()
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		return firstErr
	})
	if err != nil {
		return s, err
	}
	slices.Sort(lat)
	s.P50, s.P99 = Percentile(lat, 50), Percentile(lat, 99)
	return s, nil
}

// FormatCalls renders a call map as "UpdateAssumeRolePolicy 10, ListRoles 1" (largest first,
// then by name), dropping the "iam:" prefix.
func FormatCalls(calls map[string]int) string {
	keys := slices.Collect(maps.Keys(calls))
	slices.SortFunc(keys, func(a, b string) int {
		if calls[a] != calls[b] {
			return calls[b] - calls[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "iam:"), calls[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
