package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
)

// The thirty-day simulation (issue 18): KubeStash BackupConfigurations on a fixed schedule, each
// session with its own ServiceAccount that is deleted when the session ends, run through the
// production Assigner (placement, lock sessions, trust writes) and the production garbage
// collection (Collector.CollectScope, MaintainScope: removal, drift sync, empty-role expiry) on
// a simulated clock. The cloud is an IAMAPI: bench/iammodel for the month, moto for the short
// run that checks the model (sim_test.go). What is simulated is only the Kubernetes side: which
// ServiceAccounts exist, and when the sweeper would run a collection.

// SimConfig describes one simulation. Zero fields take the defaults of DefaultSimConfig.
type SimConfig struct {
	BackupConfigs int           // BackupConfigurations, each with its own schedule slot
	Schedule      time.Duration // every BackupConfiguration runs a session this often (cron */5)
	Duration      time.Duration // simulated time
	// Spread: the operator creates a tick's sessions over this long after the tick (its
	// reconcile loop, not all at once). SessionMin..SessionMax: how long a session lives before
	// its ServiceAccount is deleted (per BackupConfiguration, fixed for the run).
	Spread, SessionMin, SessionMax time.Duration
	// Leak is the share of sessions whose ServiceAccount is never deleted (a session that
	// outlives its schedule for good): 0 in the healthy month; > 0 finds the day the seed's
	// ceiling is hit.
	Leak float64
	// RetireShare of the BackupConfigurations (the highest numbered) are deleted at RetireAt
	// (0: never): the load shrinks, roles empty for good and garbage collection expires them.
	RetireAt    time.Duration
	RetireShare float64
	// StopAtLimit ends the run at the first ServiceAccount refused for the role limit.
	StopAtLimit bool
	// Sequential assigns one ServiceAccount at a time instead of concurrently (the moto check:
	// concurrent callers are batched by timing, so only sequential runs give equal call counts).
	Sequential bool

	Quota, RoleCreationLimit int
	// The sweeper's garbage collection, as serve's flags set it.
	GCInterval, GCGrace, GCScopeInterval, EmptyRoleGrace time.Duration
	GCScopeBurst                                         int
	// Step is the simulation's resolution: every Step the ServiceAccounts created in it are
	// assigned, those deleted are recorded and a due collection runs.
	Step time.Duration
	Seed uint64 // random seed of the session lengths
}

// DefaultSimConfig is the month the issue asks for, with serve's defaults.
func DefaultSimConfig() SimConfig {
	return SimConfig{
		BackupConfigs: 1000, Schedule: 5 * time.Minute, Duration: 30 * 24 * time.Hour,
		Spread: 30 * time.Second, SessionMin: time.Minute, SessionMax: 4 * time.Minute,
		Quota: awsp.DefaultQuota, RoleCreationLimit: awsp.DefaultRoleCreationLimit,
		GCInterval: sweeper.DefaultGCInterval, GCGrace: sweeper.DefaultGCGrace,
		GCScopeInterval: sweeper.DefaultGCScopeInterval, GCScopeBurst: sweeper.DefaultGCScopeBurst,
		EmptyRoleGrace: awsp.DefaultEmptyRoleGrace, Step: 10 * time.Second, Seed: 1,
	}
}

func (c SimConfig) withDefaults() SimConfig {
	d := DefaultSimConfig()
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setI := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setI(&c.BackupConfigs, d.BackupConfigs)
	setD(&c.Schedule, d.Schedule)
	setD(&c.Duration, d.Duration)
	setD(&c.Spread, d.Spread)
	setD(&c.SessionMin, d.SessionMin)
	setD(&c.SessionMax, d.SessionMax)
	setI(&c.Quota, d.Quota)
	setI(&c.RoleCreationLimit, d.RoleCreationLimit)
	setD(&c.GCInterval, d.GCInterval)
	setD(&c.GCGrace, d.GCGrace)
	setD(&c.GCScopeInterval, d.GCScopeInterval)
	setI(&c.GCScopeBurst, d.GCScopeBurst)
	setD(&c.EmptyRoleGrace, d.EmptyRoleGrace)
	setD(&c.Step, d.Step)
	if c.Seed == 0 {
		c.Seed = d.Seed
	}
	return c
}

// SimDay is one simulated day.
type SimDay struct {
	Day             int
	Sessions        int // ServiceAccounts created (each assigned)
	Deleted         int // ServiceAccounts deleted
	Refused         int // assignments refused: role limit reached
	Failed          int // assignments failed otherwise
	PeakLive        int // most ServiceAccounts existing at once
	PeakListed      int // most subjects listed in the derived roles at once
	PeakRoles       int // most derived roles existing at once (empty ones awaiting expiry too)
	PeakRolesInUse  int // most derived roles listing a subject, sampled after each burst
	WorstRolesRatio float64
	// WorstRolesRatio: the largest roles in use ÷ ceil(live ServiceAccounts ÷ capacity) over
	// the samples taken after each burst is placed (1.0: no role more than the live ones need).
	Collections  int            // garbage collections run (event-driven and full passes)
	MaxGCLag     time.Duration  // longest a deleted ServiceAccount stayed in a trust policy
	RolesDeleted int            // empty derived roles expired
	IAMCalls     map[string]int // by action
}

// SimResult is a whole simulation.
type SimResult struct {
	Config   SimConfig
	Capacity int // subjects per derived role (TheoreticalMax for this run's names)
	Days     []SimDay
	// Simulated is the simulated time run (shorter than Config.Duration when StopAtLimit ended it).
	Simulated time.Duration
	// LimitHitAt is when the first ServiceAccount was refused for the role limit (0: never).
	LimitHitAt time.Duration
	// FinalRoles and FinalListed describe the seed at the end.
	FinalRoles, FinalListed int
	Wall                    time.Duration // real time the run took
	// Parallel: other runs went at the same time (benchtool sim -parallel), sharing the cores.
	Parallel bool
}

// IAMCallsPerDay averages the IAM calls over the simulated time.
func (r SimResult) IAMCallsPerDay() (total float64, byAction map[string]float64) {
	byAction = map[string]float64{}
	days := r.Simulated.Hours() / 24
	if days <= 0 {
		return 0, byAction
	}
	for _, d := range r.Days {
		for k, v := range d.IAMCalls {
			byAction[k] += float64(v) / days
			total += float64(v) / days
		}
	}
	return total, byAction
}

// simSA is one session's ServiceAccount.
type simSA struct {
	name             string
	created, deleted time.Duration // from the start; deleted < 0: never
}

// CallCounter is what the simulation needs of the cloud besides IAMAPI: its call counts.
type CallCounter interface{ Calls() map[string]int }

// SimStart is when simulations begin (any fixed instant: names and marks derive from it).
var SimStart = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// SimulateOnModel runs cfg against a fresh in-memory IAM (bench/iammodel) with one seed role.
func SimulateOnModel(ctx context.Context, cfg SimConfig) (SimResult, error) {
	quota := cfg.withDefaults().Quota
	model := iammodel.New(iammodel.Options{Quota: quota})
	seed, err := iammodel.CreateSeed(ctx, model, iammodel.SeedSetup{Name: "kubestash-backup"})
	if err != nil {
		return SimResult{}, err
	}
	return Simulate(ctx, model, model, seed, SimStart, cfg)
}

// Simulate runs cfg against api, whose seed role seed exists. The clock starts at start.
func Simulate(ctx context.Context, api awsp.IAMAPI, calls CallCounter, seed awsp.RoleARN, start time.Time, cfg SimConfig) (SimResult, error) {
	cfg = cfg.withDefaults()
	res := SimResult{Config: cfg}
	t0 := time.Now()
	var clockMu sync.Mutex
	now := start
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	allow, err := awsp.ParseAllowlist(seed.String())
	if err != nil {
		return res, err
	}
	gate := &gatedLocker{LocalLocker: awsp.NewLocalLocker(), open: closedChan()}
	a := awsp.NewAssigner(api, gate, awsp.Config{Seeds: allow, Quota: cfg.Quota, RoleCreationLimit: cfg.RoleCreationLimit, Clock: clock}, nil)
	callers := newAssignPool(ctx, a, seed)
	callers.gate = gate
	defer callers.stop()
	gc := awsp.Collector{Assigner: a, EmptyRoleGrace: cfg.EmptyRoleGrace}
	scope := sweeper.Scope{Key: seed.String(), Claim: awsp.SeedClaim(seed)}
	if res.Capacity, err = simCapacity(ctx, api, seed, cfg.Quota); err != nil {
		return res, err
	}

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	lifetimes := make([]time.Duration, cfg.BackupConfigs)
	offsets := make([]time.Duration, cfg.BackupConfigs)
	for i := range lifetimes {
		lifetimes[i] = cfg.SessionMin + time.Duration(rng.Int64N(int64(cfg.SessionMax-cfg.SessionMin)+1))
		offsets[i] = time.Duration(rng.Int64N(int64(cfg.Spread) + 1))
	}

	live := map[string]*simSA{}        // ServiceAccounts that exist
	gone := map[string]time.Duration{} // deleted, maybe still listed: name -> deleted at
	var goneOrder []*simSA             // gone's entries in the order deleted (so by deletion time)
	var ending []*simSA                // live, by deletion time
	tokens, lastRefill := float64(cfg.GCScopeBurst), time.Duration(0)
	nextFull := cfg.GCInterval
	before := maps.Clone(calls.Calls())
	day := SimDay{Day: 1}
	sampleAt := map[time.Duration]bool{}
	var sampler inUseSampler

	lookup := func(elapsed time.Duration) func(ns, name string) (*corev1.ServiceAccount, bool) {
		return func(ns, name string) (*corev1.ServiceAccount, bool) {
			if _, ok := live[name]; ok {
				return nil, true
			}
			if at, ok := gone[name]; ok && elapsed-at < cfg.GCGrace {
				return nil, true // within --gc-grace: the sweeper keeps its subject
			}
			return nil, false
		}
	}
	collect := func(elapsed time.Duration, full bool) error {
		sc := scope
		sc.Full = full
		if _, err := gc.CollectScope(ctx, sc, lookup(elapsed)); err != nil {
			return fmt.Errorf("collecting at %v: %w", elapsed, err)
		}
		day.Collections++
		for len(goneOrder) > 0 && elapsed-gone[goneOrder[0].name] >= cfg.GCGrace {
			name := goneOrder[0].name
			day.MaxGCLag = max(day.MaxGCLag, elapsed-gone[name])
			delete(gone, name)
			goneOrder = goneOrder[1:]
		}
		return nil
	}

	elapsed := time.Duration(0)
	closeDay := func() {
		after := maps.Clone(calls.Calls())
		day.IAMCalls = diff(after, before)
		day.RolesDeleted = day.IAMCalls["DeleteRole"]
		before = after
		res.Days = append(res.Days, day)
		day = SimDay{Day: day.Day + 1}
	}
	for ; elapsed < cfg.Duration; elapsed += cfg.Step {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		clockMu.Lock()
		now = start.Add(elapsed)
		clockMu.Unlock()

		// Sessions created in this step: one per BackupConfiguration whose slot falls in it.
		tick := elapsed.Truncate(cfg.Schedule)
		var born []*simSA
		active := len(offsets)
		if cfg.RetireAt > 0 && elapsed >= cfg.RetireAt {
			active = int(float64(active) * (1 - cfg.RetireShare))
		}
		for i, off := range offsets[:active] {
			if at := tick + off; at >= elapsed && at < elapsed+cfg.Step {
				sa := &simSA{name: sessionName(i, start.Add(tick).Unix()), created: at, deleted: at + lifetimes[i]}
				if cfg.Leak > 0 && rng.Float64() < cfg.Leak {
					sa.deleted = -1
				}
				born = append(born, sa)
				sampleAt[(tick+cfg.Spread)/cfg.Step*cfg.Step+cfg.Step] = true // once the burst is placed
			}
		}
		refused, failed := callers.assignAll(born, cfg.Sequential)
		day.Refused += refused
		day.Failed += failed
		if refused > 0 && res.LimitHitAt == 0 {
			res.LimitHitAt = elapsed
			if cfg.StopAtLimit {
				day.Sessions += len(born)
				closeDay()
				break
			}
		}
		var ends []*simSA
		for _, sa := range born {
			live[sa.name] = sa
			day.Sessions++
			if sa.deleted >= 0 {
				ends = append(ends, sa)
			}
		}
		// Sessions that ended: their ServiceAccounts are deleted, and their seed's scope is due.
		// ending stays sorted by merging in the step's few (sorting all ~1,000 every step was 2 %
		// of the run).
		ending = mergeByDeletion(ending, ends)
		for len(ending) > 0 && ending[0].deleted < elapsed+cfg.Step {
			sa := ending[0]
			ending = ending[1:]
			delete(live, sa.name)
			gone[sa.name] = elapsed
			goneOrder = append(goneOrder, sa)
			day.Deleted++
		}

		// The sweeper: a full pass every GCInterval; between them, event-driven collections of
		// the due scope once a deletion is past its grace, within the scope's token bucket.
		tokens = min(float64(cfg.GCScopeBurst), tokens+float64(elapsed-lastRefill)/float64(cfg.GCScopeInterval))
		lastRefill = elapsed
		if elapsed >= nextFull {
			nextFull += cfg.GCInterval
			if err := collect(elapsed, true); err != nil {
				return res, err
			}
			if err := gc.MaintainScope(ctx, scope); err != nil {
				return res, fmt.Errorf("maintaining at %v: %w", elapsed, err)
			}
		} else if tokens >= 1 && len(goneOrder) > 0 && elapsed-gone[goneOrder[0].name] >= cfg.GCGrace {
			tokens--
			if err := collect(elapsed, false); err != nil {
				return res, err
			}
		}

		// Measure.
		day.PeakLive = max(day.PeakLive, len(live))
		if us, _ := a.SeedUsage(); len(us) == 1 {
			day.PeakRoles = max(day.PeakRoles, us[0].Roles)
			day.PeakListed = max(day.PeakListed, us[0].Subjects)
		}
		if sampleAt[elapsed] {
			delete(sampleAt, elapsed)
			// The sample is the simulation's own read: keep its calls out of the day's count.
			pre := calls.Calls()
			inUse, err := sampler.rolesInUse(ctx, api, seed)
			if err != nil {
				return res, err
			}
			for k, v := range diff(calls.Calls(), pre) {
				before[k] += v
			}
			day.PeakRolesInUse = max(day.PeakRolesInUse, inUse)
			if ideal := math.Ceil(float64(len(live)) / float64(res.Capacity)); ideal > 0 {
				day.WorstRolesRatio = max(day.WorstRolesRatio, float64(inUse)/ideal)
			}
		}
		if next := elapsed + cfg.Step; next%(24*time.Hour) < cfg.Step || next >= cfg.Duration {
			closeDay()
		}
	}
	res.Simulated = min(elapsed+cfg.Step, cfg.Duration)
	if us, _ := a.SeedUsage(); len(us) == 1 {
		res.FinalRoles, res.FinalListed = us[0].Roles, us[0].Subjects
	}
	res.Wall = time.Since(t0)
	return res, nil
}

// assignPool is the simulation's callers of Assign: one goroutine per ServiceAccount of a step,
// all calling at once as the writer's workers do (the Assigner batches them into lock sessions),
// but kept from step to step. A fresh goroutine per ServiceAccount grew its stack to the depth of
// a lock session every time: a tenth of the month's CPU (runtime.newstack in the profile).
type assignPool struct {
	assign func(name string) error
	// gate, when set, keeps lock sessions from starting until every caller of the step has
	// called: see gatedLocker.
	gate    *gatedLocker
	jobs    chan assignJob
	workers int
	wg      sync.WaitGroup // the workers
}

// assignJob is one Assign for a worker; err is its slot in the step's results.
type assignJob struct {
	name    string
	err     *error
	entered *sync.WaitGroup // done as the worker calls
	done    *sync.WaitGroup
}

// gatedLocker is the simulation's Locker: a LocalLocker whose Lock waits while the gate is held.
// The simulation holds it while a step's ServiceAccounts are handed to their callers, so the
// lock session that places them starts once they have all queued, as they do in production
// while the session waits for the Lease and IAM answers in tens of milliseconds. Without it, the
// in-memory IAM answers in microseconds, the first caller's session starts before the others
// queue, and how many rounds (trust policy writes) a burst took depended on how the scheduler
// interleaved the goroutines: the month's IAM calls a day ran from 182,000 to 266,000 with the
// machine's load (at f255dde, load 6-12).
type gatedLocker struct {
	*awsp.LocalLocker
	mu   sync.Mutex
	open chan struct{} // closed while sessions may start
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (g *gatedLocker) Lock(ctx context.Context, key string) (func(), int64, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	return g.LocalLocker.Lock(ctx, key)
}

func (g *gatedLocker) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
}

func (g *gatedLocker) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.open)
}

func newAssignPool(ctx context.Context, a *awsp.Assigner, seed awsp.RoleARN) *assignPool {
	return &assignPool{
		assign: func(name string) error { _, err := a.Assign(ctx, seed, "demo", name); return err },
		jobs:   make(chan assignJob),
	}
}

// grow starts workers until n can call at once.
func (p *assignPool) grow(n int) {
	for ; p.workers < n; p.workers++ {
		p.wg.Go(func() {
			for j := range p.jobs {
				j.entered.Done()
				*j.err = p.assign(j.name)
				j.done.Done()
			}
		})
	}
}

// stop ends the workers once they are idle.
func (p *assignPool) stop() {
	close(p.jobs)
	p.wg.Wait()
}

// assignAll assigns every ServiceAccount born in one step, all at once, or one by one.
func (p *assignPool) assignAll(born []*simSA, sequential bool) (refused, failed int) {
	errs := make([]error, len(born))
	if sequential {
		for i, sa := range born {
			errs[i] = p.assign(sa.name)
		}
	} else {
		// A worker per ServiceAccount, each handed its job before any waits on another, so every
		// Assign of the step is in flight together as with a goroutine each.
		p.grow(len(born))
		if p.gate != nil {
			p.gate.hold()
		}
		var entered, done sync.WaitGroup
		entered.Add(len(born))
		done.Add(len(born))
		for i, sa := range born {
			p.jobs <- assignJob{name: sa.name, err: &errs[i], entered: &entered, done: &done}
		}
		if p.gate != nil {
			// Every caller is in Assign; a few yields let the last ones reach its queue (a few
			// map and slice operations) before the session may take it. A caller preempted in
			// between joins the next round, as it could in production: rare, and not worth a
			// hook in the Assigner. (A 50 µs sleep here doubled a loaded machine's wall time.)
			entered.Wait()
			for range 4 {
				runtime.Gosched()
			}
			p.gate.release()
		}
		done.Wait()
	}
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, awsp.ErrRoleLimitReached):
			refused++
		default:
			failed++
		}
	}
	return refused, failed
}

// sessionName is fmt.Sprintf("sample-backup-%04d-session-%d", config, tick), without fmt's
// reflection for 288,000 names a simulated day.
func sessionName(config int, tick int64) string {
	b := make([]byte, 0, 48)
	b = append(b, "sample-backup-"...)
	for d := 1000; d > 1 && config < d; d /= 10 {
		b = append(b, '0')
	}
	b = strconv.AppendInt(b, int64(config), 10)
	b = append(b, "-session-"...)
	b = strconv.AppendInt(b, tick, 10)
	return string(b)
}

// mergeByDeletion merges add into sorted, both sorted by deletion time once add is (stable:
// equal times keep sorted's first).
func mergeByDeletion(sorted, add []*simSA) []*simSA {
	if len(add) == 0 {
		return sorted
	}
	byDeletion := func(x, y *simSA) int { return cmp.Compare(x.deleted, y.deleted) }
	slices.SortStableFunc(add, byDeletion)
	out := make([]*simSA, 0, len(sorted)+len(add))
	i, j := 0, 0
	for i < len(sorted) && j < len(add) {
		if byDeletion(add[j], sorted[i]) < 0 {
			out = append(out, add[j])
			j++
		} else {
			out = append(out, sorted[i])
			i++
		}
	}
	out = append(out, sorted[i:]...)
	return append(out, add[j:]...)
}

// inUseSampler counts the derived roles in use after each burst (rolesInUse), remembering each
// role's last document and verdict: a role whose document did not change since the previous
// sample (an empty one awaiting expiry) is not decoded again.
type inUseSampler struct {
	last      map[string]sampledRole // by ARN
	templates subjectTemplates
}

type sampledRole struct {
	doc   string
	inUse bool
}

// trustsReader is the in-memory model's read of every trust policy that counts no IAM call and
// encodes no document (iammodel.IAM.Trusts); other clouds (moto) are read with ListRoles.
type trustsReader interface {
	Trusts(pathPrefix string) []iammodel.RoleTrust
}

// rolesInUse counts the derived roles of seed that list a subject, read from the cloud without
// going through the Assigner (its cache is what is measured).
func (sp *inUseSampler) rolesInUse(ctx context.Context, api awsp.IAMAPI, seed awsp.RoleARN) (int, error) {
	if sp.last == nil {
		sp.last = map[string]sampledRole{}
	}
	n := 0
	count := func(arn, doc string) error {
		if !awsp.IsDerivedFrom(arn, seed.String()) {
			return nil
		}
		prev, ok := sp.last[arn]
		if !ok || prev.doc != doc {
			inUse, err := sp.templates.listsSubject(doc)
			if err != nil {
				return fmt.Errorf("trust policy of %s: %w", arn, err)
			}
			prev = sampledRole{doc: doc, inUse: inUse}
			sp.last[arn] = prev
		}
		if prev.inUse {
			n++
		}
		return nil
	}
	if m, ok := api.(trustsReader); ok {
		for _, r := range m.Trusts("") { // every role, as ListRoles lists them
			if err := count(r.ARN, r.Trust); err != nil {
				return 0, err
			}
		}
		return n, nil
	}
	var marker *string
	for {
		out, err := api.ListRoles(ctx, &iam.ListRolesInput{Marker: marker})
		if err != nil {
			return 0, err
		}
		for _, r := range out.Roles {
			if err := count(aws.ToString(r.Arn), aws.ToString(r.AssumeRolePolicyDocument)); err != nil {
				return 0, err
			}
		}
		if !out.IsTruncated {
			return n, nil
		}
		marker = out.Marker
	}
}

// noSubject is what the Assigner writes as the only subject of a role that has none left
// (unexported in providers/aws; TestListsSubjectAgreesWithParseTrustPolicy fails if it changes).
const noSubject = "credential-webhook:no-subject"

// sampledPolicy is as much of a trust policy as listsSubject reads.
type sampledPolicy struct {
	Statement []struct {
		Effect    string
		Principal struct{ Federated json.RawMessage }
		Condition map[string]map[string]json.RawMessage
	}
}

// listsSubject reports whether a trust policy document (URL-encoded or not) lists a
// ServiceAccount in an OIDC Allow statement, as awsp.ParseTrustPolicy(doc).Len() > 0 does for
// what the Assigner writes, in one decoding pass instead of a parse of every nested part: the
// sample after each burst was a tenth of the month's CPU. Anything of another shape (a
// Statement object, a Principal "*", a subject that is no string) goes to ParseTrustPolicy.
func listsSubject(doc string) (bool, error) {
	js, err := awsp.DecodePolicyDocument(doc)
	if err != nil {
		return false, err
	}
	slow := func() (bool, error) {
		tp, err := awsp.ParseTrustPolicy(js)
		return tp.Len() > 0, err
	}
	var p sampledPolicy
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		return slow()
	}
	for _, st := range p.Statement {
		if st.Effect != "Allow" || len(st.Principal.Federated) == 0 {
			continue
		}
		for _, keys := range st.Condition {
			for k, raw := range keys {
				if len(k) < 4 || !strings.EqualFold(k[len(k)-4:], ":sub") {
					continue
				}
				var subs []string
				if err := json.Unmarshal(raw, &subs); err != nil {
					return slow()
				}
				for _, s := range subs {
					if s != noSubject {
						return true, nil
					}
				}
			}
		}
	}
	return false, nil
}

// subjectTemplates answers listsSubject for documents that differ from one seen before only in
// their one subject list, from that list alone: the Assigner renders every derived role of a
// seed from one template, and decoding each whole document was 9 % of the simulation's CPU. A
// template is learnt from a document that has exactly one subjectList, whose verdict with only
// the placeholder listed is false and with one ServiceAccount is true: the rest of the document
// then lists nobody (listsSubject counts every list), and the list is one listsSubject counts.
// Anything else (several lists, whitespace, escapes in the list) is decoded as before.
type subjectTemplates struct {
	known []subjectTemplate
}

type subjectTemplate struct{ prefix, suffix string }

// subjectList starts a condition's subject list as the Assigner renders it (compact JSON).
const subjectList = `:sub":[`

// maxSubjectTemplates bounds the templates remembered (one per seed and statement set).
const maxSubjectTemplates = 8

func (t *subjectTemplates) listsSubject(doc string) (bool, error) {
	js, err := awsp.DecodePolicyDocument(doc)
	if err != nil {
		return false, err
	}
	i := strings.Index(js, subjectList)
	if i < 0 || strings.Contains(js[i+len(subjectList):], subjectList) {
		return listsSubject(js)
	}
	start := i + len(subjectList) - 1 // at '['
	n, lists, ok := scanSubjectList(js[start:])
	if !ok {
		return listsSubject(js)
	}
	prefix, suffix := js[:start], js[start+n:]
	for _, k := range t.known {
		if k.prefix == prefix && k.suffix == suffix {
			return lists, nil
		}
	}
	if len(t.known) < maxSubjectTemplates {
		none, err1 := listsSubject(prefix + `["` + noSubject + `"]` + suffix)
		one, err2 := listsSubject(prefix + `["` + awsp.SubjectPrefix + `probe:probe"]` + suffix)
		if err1 == nil && err2 == nil && !none && one {
			t.known = append(t.known, subjectTemplate{prefix: prefix, suffix: suffix})
		}
	}
	return listsSubject(js)
}

// scanSubjectList reads the JSON array of strings at the start of s when its strings have no
// escapes and it has no whitespace: its length n, and whether it holds a string other than the
// placeholder. ok is false for anything else.
func scanSubjectList(s string) (n int, lists, ok bool) {
	if len(s) < 2 || s[0] != '[' {
		return 0, false, false
	}
	if s[1] == ']' {
		return 2, false, true
	}
	for i := 1; ; {
		if i >= len(s) || s[i] != '"' {
			return 0, false, false
		}
		j := i + 1
		for ; j < len(s) && s[j] != '"'; j++ {
			if c := s[j]; c == '\\' || c < 0x20 {
				return 0, false, false
			}
		}
		if j >= len(s)-1 {
			return 0, false, false
		}
		if s[i+1:j] != noSubject {
			lists = true
		}
		switch s[j+1] {
		case ',':
			i = j + 2
		case ']':
			return j + 2, lists, true
		default:
			return 0, false, false
		}
	}
}

// simCapacity is how many of this run's subjects one derived role holds.
func simCapacity(ctx context.Context, api awsp.IAMAPI, seed awsp.RoleARN, quota int) (int, error) {
	out, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(seed.Name)})
	if err != nil {
		return 0, fmt.Errorf("reading the seed: %w", err)
	}
	doc, err := awsp.DecodePolicyDocument(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		return 0, err
	}
	tp, err := awsp.ParseTrustPolicy(doc)
	if err != nil {
		return 0, err
	}
	subs := make([]string, 200)
	for i := range subs {
		subs[i] = fmt.Sprintf("%sdemo:sample-backup-%04d-session-%d", awsp.SubjectPrefix, i, 1778072138+i*300)
	}
	return awsp.TheoreticalMax(tp, subs, quota)
}

func diff(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// SimWorst is the month in one line per figure the issue asks for.
type SimWorst struct {
	RolesRatio     float64       // worst roles in use ÷ ceil(live ÷ capacity)
	PeakLive       int           // most ServiceAccounts at once
	PeakRolesInUse int           // most roles listing a subject
	PeakRoles      int           // most roles existing (with the empty ones awaiting expiry)
	MaxGCLag       time.Duration // longest a deleted ServiceAccount stayed listed
	Refused        int
	Failed         int
	Sessions       int
}

// Worst folds the days into the month's worst figures.
func (r SimResult) Worst() SimWorst {
	var w SimWorst
	for _, d := range r.Days {
		w.RolesRatio = max(w.RolesRatio, d.WorstRolesRatio)
		w.PeakLive = max(w.PeakLive, d.PeakLive)
		w.PeakRolesInUse = max(w.PeakRolesInUse, d.PeakRolesInUse)
		w.PeakRoles = max(w.PeakRoles, d.PeakRoles)
		w.MaxGCLag = max(w.MaxGCLag, d.MaxGCLag)
		w.Refused += d.Refused
		w.Failed += d.Failed
		w.Sessions += d.Sessions
	}
	return w
}

// SimSummary describes a run in a few lines.
func SimSummary(r SimResult) string {
	w := r.Worst()
	calls, _ := r.IAMCallsPerDay()
	c := r.Config
	s := fmt.Sprintf("%d BackupConfigurations every %v, sessions %v-%v, leak %.2f%%, %.2f days simulated in %v (capacity %d subjects per role, limit %d roles)\n",
		c.BackupConfigs, c.Schedule, c.SessionMin, c.SessionMax, 100*c.Leak, r.Simulated.Hours()/24, r.Wall.Round(time.Millisecond), r.Capacity, c.RoleCreationLimit)
	s += fmt.Sprintf("  %d sessions, %d refused, %d failed; peak %d live ServiceAccounts, %d roles in use (worst %.3f × the ideal), %d roles existing; longest a deleted ServiceAccount stayed listed %v; %.0f IAM calls a day\n",
		w.Sessions, w.Refused, w.Failed, w.PeakLive, w.PeakRolesInUse, w.RolesRatio, w.PeakRoles, w.MaxGCLag, calls)
	if r.LimitHitAt > 0 {
		s += fmt.Sprintf("  ceiling hit after %.1f days (%d roles listing %d subjects)\n", r.LimitHitAt.Hours()/24, r.FinalRoles, r.FinalListed)
	}
	return s
}
