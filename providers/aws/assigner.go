package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"

	"go.klusters.dev/credential-webhook/annotations"
)

// Errors callers branch on. They are wrapped with context; test with errors.Is.
var (
	// ErrNotAllowed: the seed role is not in Config.Seeds.
	ErrNotAllowed = errors.New("seed role not allowed")
	// ErrRoleLimitReached: every derived role is full and Config.RoleCreationLimit roles exist.
	ErrRoleLimitReached = errors.New("derived role limit reached")
	// ErrSubjectTooLarge: even an empty derived role cannot hold the subject under the quota.
	ErrSubjectTooLarge = errors.New("subject does not fit in an empty derived role")
	// ErrSeedMismatch: the role IAM returns for the seed's name is not the seed ARN (other path
	// or account: the webhook's credentials are for another account).
	ErrSeedMismatch = errors.New("seed role not found at its ARN")
	// ErrSeedRefused: the seed role is in the allowlist but unusable as a seed: it is a derived
	// role (named "<allowed seed>-<i>", or tagged with annotations.SeedTag), or derived roles
	// would get no permissions boundary. Permanent, like ErrNotAllowed, which it also matches.
	ErrSeedRefused = errors.New("seed role refused")

	// errForeign: a role named like a derived role that does not carry our seed tag. It is never
	// written to, and its index is skipped.
	errForeign = errors.New("role is not a derived role of this seed")
)

// seedRefusal is an ErrSeedRefused error; it matches ErrNotAllowed too, so every caller that
// treats a seed outside the allowlist as permanent treats a refused seed the same way.
type seedRefusal struct{ msg string }

func (e *seedRefusal) Error() string   { return e.msg }
func (e *seedRefusal) Unwrap() []error { return []error{ErrSeedRefused, ErrNotAllowed} }

func refuseSeed(seed RoleARN, format string, args ...any) error {
	return &seedRefusal{msg: fmt.Sprintf("%v: %s: ", ErrSeedRefused, seed) + fmt.Sprintf(format, args...)}
}

// DefaultRoleCreationLimit is the default maximum number of derived roles per seed.
const DefaultRoleCreationLimit = 100

// maxPlacementAttempts bounds retries after a stale cache or a learned quota.
const maxPlacementAttempts = 4

// Config configures an Assigner.
type Config struct {
	// Seeds lists the seed roles that may be used. Empty allows none: the allowlist is what stops
	// a user who can annotate a ServiceAccount from borrowing any role the webhook can clone.
	Seeds Allowlist
	// Quota is the trust policy size quota in characters; 0 reads AssumeRolePolicySizeQuota from
	// iam:GetAccountSummary once, falling back to DefaultQuota. A 409 from IAM lowers it.
	Quota int
	// RoleCreationLimit caps derived roles per seed; 0 means DefaultRoleCreationLimit.
	RoleCreationLimit int
	// PermissionsBoundary is the managed policy ARN every derived role carries as its permissions
	// boundary (--aws-permissions-boundary). Empty: the seed's own boundary; a seed without one
	// is refused (ErrSeedRefused). Derived roles never go without a boundary, so the IAM policy can
	// demand it on every call that grants permissions.
	PermissionsBoundary string
	// OIDCIssuer pins trust to this cluster (--aws-oidc-issuer, as NormalizeIssuer returns it):
	// only the seed's trust statements for the OIDC provider of this issuer receive subjects, the
	// others are copied unchanged, and a seed with no such statement is refused (ErrSeedNotOIDC).
	// Empty: every OIDC statement of the seed receives every subject.
	OIDCIssuer string
}

// Assignment is the outcome of Assign.
type Assignment struct {
	RoleARN       string
	Created       bool // a new derived role was created for this subject
	AlreadyListed bool // nothing was written: the subject was already in RoleARN
}

// RoleInfo describes one derived role for the roles table.
type RoleInfo struct {
	Index    int
	ARN      string
	Subjects []string
	Chars    int     // size of the trust policy as it would be sent
	Quota    int     // trust policy size quota
	Fill     float64 // Chars / Quota
	Owned    bool    // false: named like a derived role but not tagged with this seed
}

// Assigner places ServiceAccount subjects into derived roles of seed roles.
type Assigner struct {
	api    IAMAPI
	locker Locker
	cfg    Config
	log    *slog.Logger

	mu    sync.Mutex
	seeds map[string]*seedState

	quotaMu sync.Mutex
	quota   int // 0 until known
}

// NewAssigner returns an Assigner. log may be nil.
func NewAssigner(api IAMAPI, locker Locker, cfg Config, log *slog.Logger) *Assigner {
	if cfg.RoleCreationLimit <= 0 {
		cfg.RoleCreationLimit = DefaultRoleCreationLimit
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Assigner{api: api, locker: locker, cfg: cfg, log: log, seeds: map[string]*seedState{}}
}

type ownership int8

const (
	ownerUnknown ownership = iota
	ownerUs
	ownerOther
)

// seedState is the cache for one seed, guarded by sem (held for a whole session), and the queue
// of Assign calls waiting for the next session (guarded by qmu).
type seedState struct {
	qmu      sync.Mutex
	queue    []*assignReq
	draining bool // a goroutine runs sessions until queue is empty

	sem    chan struct{}
	loaded bool
	gen    int64 // generation the cache matches; -1 when loaded outside a lock
	roles  []*roleState
	spec   *roleSpec // the seed's permissions, read on first need

	// plan is what admission plans from (see plan.go); it has its own mutex.
	plan planner
}

type roleState struct {
	index    int
	arn      RoleARN
	id       string
	trust    TrustPolicy
	owner    ownership
	complete bool  // its permissions were checked (or made) to include the seed's, in this process
	bad      error // its trust policy could not be parsed: never written to
}

func (a *Assigner) state(seed RoleARN) *seedState {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.seeds[seed.String()]
	if !ok {
		st = &seedState{sem: make(chan struct{}, 1)}
		a.seeds[seed.String()] = st
	}
	return st
}

func (st *seedState) acquire(ctx context.Context) (func(), error) {
	select {
	case st.sem <- struct{}{}:
		return func() { <-st.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *Assigner) allowed(seed RoleARN) error {
	if !a.cfg.Seeds.Allows(seed.String()) {
		return fmt.Errorf("%w: %s is not in the seed allowlist", ErrNotAllowed, seed)
	}
	if parent, ok := a.cfg.Seeds.DerivedSeed(seed); ok {
		return refuseSeed(seed, "it is named like a derived role of the allowed seed %s, and a derived role is never a seed", parent)
	}
	return nil
}

// provider is the oidc-provider ARN trust is pinned to for seed, "" when not pinned.
func (a *Assigner) provider(seed RoleARN) string {
	if a.cfg.OIDCIssuer == "" {
		return ""
	}
	return OIDCProviderARN(seed, a.cfg.OIDCIssuer)
}

// session is one locked read-modify-write of a seed's derived roles.
type session struct {
	a    *Assigner
	seed RoleARN
	st   *seedState
	w    *writer
	// locked: the distributed lock is held, so writes are allowed.
	locked bool
	bumped bool
}

// begin takes the local then the distributed lock and makes the cache current.
func (a *Assigner) begin(ctx context.Context, seed RoleARN) (*session, func(), error) {
	if err := a.allowed(seed); err != nil {
		return nil, nil, err
	}
	st := a.state(seed)
	release, err := st.acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for seed %s: %w", seed, err)
	}
	unlock, gen, err := a.locker.Lock(ctx, seed.String())
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("locking seed %s: %w", seed, err)
	}
	s := &session{a: a, seed: seed, st: st, locked: true}
	s.w = &writer{api: a.api, before: s.bump}
	done := func() { st.publish(); unlock(); release() }
	if !st.loaded || st.gen != gen {
		if st.loaded {
			a.log.Debug("derived role cache is stale, reloading", "seed", seed.String(), "cached", st.gen, "current", gen)
		}
		if err := s.refresh(ctx); err != nil {
			done()
			return nil, nil, err
		}
		st.gen = gen
	}
	return s, done, nil
}

// bump runs before the session's first IAM write (see Locker for the protocol).
func (s *session) bump(ctx context.Context) error {
	if !s.locked {
		return errors.New("internal error: IAM write outside a lock session")
	}
	if s.bumped {
		return nil
	}
	if err := s.a.locker.Bump(ctx, s.seed.String()); err != nil {
		return fmt.Errorf("bumping generation of seed %s before writing: %w", s.seed, err)
	}
	s.bumped = true
	s.st.gen++
	return nil
}

// refresh reloads the derived roles from IAM, keeping what was verified about roles whose
// RoleId did not change (a deleted and re-created role gets a new id and is checked again).
func (s *session) refresh(ctx context.Context) error {
	listed, err := listDerived(ctx, s.a.api, s.seed)
	if err != nil {
		return err
	}
	old := map[string]*roleState{}
	for _, r := range s.st.roles {
		if r.id != "" {
			old[r.id] = r
		}
	}
	roles := make([]*roleState, 0, len(listed))
	for _, l := range listed {
		r := &roleState{index: l.index, arn: l.arn, id: l.id}
		if prev, ok := old[l.id]; ok {
			r.owner, r.complete = prev.owner, prev.complete
		}
		doc := l.doc
		if doc == "" { // not every IAM implementation includes it in ListRoles
			out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(l.arn.Name)})
			if err != nil {
				return fmt.Errorf("iam:GetRole %s: %w", l.arn.Name, err)
			}
			doc = aws.ToString(out.Role.AssumeRolePolicyDocument)
		}
		if r.trust, r.bad = ParseTrustPolicyFor(doc, s.a.provider(s.seed)); r.bad != nil {
			s.a.log.Warn("derived role has an unreadable trust policy; it will not be used", "role", l.arn.String(), "err", r.bad)
		}
		roles = append(roles, r)
	}
	s.st.roles = roles
	s.st.loaded = true
	return nil
}

// seedSpec returns the seed's permissions, reading them on first use.
func (s *session) seedSpec(ctx context.Context) (*roleSpec, error) {
	if s.st.spec != nil {
		return s.st.spec, nil
	}
	spec, err := s.readSeed(ctx, false)
	if err != nil {
		return nil, err
	}
	s.st.spec = spec
	return spec, nil
}

// readSeed reads the seed and checks it can be one. The spec's boundary is the one derived roles
// get: Config.PermissionsBoundary, else the seed's own.
func (s *session) readSeed(ctx context.Context, withDocs bool) (*roleSpec, error) {
	provider := s.a.provider(s.seed)
	spec, err := readRoleFor(ctx, s.a.api, s.seed.Name, provider, withDocs)
	if err != nil {
		return nil, fmt.Errorf("reading seed role: %w", err)
	}
	if spec.arn != s.seed {
		return nil, fmt.Errorf("%w: %s, IAM has %s", ErrSeedMismatch, s.seed, spec.arn)
	}
	if tag, ok := spec.tags[annotations.SeedTag]; ok {
		return nil, refuseSeed(s.seed, "it carries the tag %s=%s, so it is a derived role, and a derived role is never a seed", annotations.SeedTag, tag)
	}
	if s.a.cfg.PermissionsBoundary != "" {
		spec.boundary = s.a.cfg.PermissionsBoundary
	}
	if spec.boundary == "" {
		return nil, refuseSeed(s.seed, "it has no permissions boundary and --aws-permissions-boundary is not set; derived roles always carry one, so give the seed a boundary or set the flag")
	}
	if _, err := DeriveTrustPolicy(spec.trust, nil); err != nil {
		if provider != "" && errors.Is(err, ErrSeedNotOIDC) {
			return nil, fmt.Errorf("seed role %s: %w: no Allow statement trusts %s (--aws-oidc-issuer), this cluster's OIDC provider", s.seed, err, provider)
		}
		return nil, fmt.Errorf("seed role %s: %w", s.seed, err)
	}
	return spec, nil
}

func (s *session) isOurs(spec *roleSpec) bool {
	return spec.tags[annotations.SeedTag] == s.seed.String()
}

// ensureOwned checks the seed tag of r with one GetRole the first time.
func (s *session) ensureOwned(ctx context.Context, r *roleState) error {
	if r.owner == ownerUnknown {
		out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(r.arn.Name)})
		if err != nil {
			return fmt.Errorf("iam:GetRole %s: %w", r.arn.Name, err)
		}
		spec, err := specFromRole(out.Role, s.a.provider(s.seed))
		if err != nil {
			return err
		}
		s.setOwner(r, spec)
	}
	if r.owner == ownerOther {
		return fmt.Errorf("%w: %s", errForeign, r.arn)
	}
	return nil
}

func (s *session) setOwner(r *roleState, spec *roleSpec) {
	if s.isOurs(spec) {
		r.owner = ownerUs
		return
	}
	r.owner = ownerOther
	s.a.log.Warn("role is named like a derived role but lacks the seed tag; skipping it",
		"role", r.arn.String(), "seed", s.seed.String(), "tag", annotations.SeedTag)
}

// ensureComplete makes sure r is ours and has at least the seed's permissions, once per process:
// this is where a role half-created by an earlier attempt (created, policies not yet attached) is
// finished instead of being duplicated.
func (s *session) ensureComplete(ctx context.Context, r *roleState) error {
	if r.owner == ownerOther {
		return fmt.Errorf("%w: %s", errForeign, r.arn)
	}
	if r.complete {
		return nil
	}
	target, err := readRoleFor(ctx, s.a.api, r.arn.Name, s.a.provider(s.seed), false)
	if err != nil {
		return err
	}
	s.setOwner(r, target)
	if r.owner != ownerUs {
		return fmt.Errorf("%w: %s", errForeign, r.arn)
	}
	seed, err := s.seedSpec(ctx)
	if err != nil {
		return err
	}
	before := s.w.writes
	if err := syncPolicies(ctx, s.w, seed, target, false); err != nil {
		return fmt.Errorf("completing derived role %s: %w", r.arn, err)
	}
	if s.w.writes > before {
		s.a.log.Info("completed a half-created derived role", "role", r.arn.String(), "writes", s.w.writes-before)
	}
	r.complete = true
	return nil
}

// writeTrust sends p as r's trust policy and updates the cache on success.
func (s *session) writeTrust(ctx context.Context, r *roleState, p TrustPolicy) error {
	js, err := p.JSON()
	if err != nil {
		return err
	}
	err = s.w.do(ctx, "iam:UpdateAssumeRolePolicy "+r.arn.Name, func() error {
		_, err := s.a.api.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String(r.arn.Name), PolicyDocument: aws.String(js)})
		return err
	})
	if err != nil {
		if !isDefinite(err) {
			s.st.loaded = false // the write may have happened: reload before trusting the cache
		}
		return err
	}
	r.trust = p
	return nil
}

func (s *session) freeIndex() int {
	used := make(map[int]bool, len(s.st.roles))
	for _, r := range s.st.roles {
		used[r.index] = true
	}
	i := 0
	for used[i] {
		i++
	}
	return i
}

func (s *session) insert(r *roleState) {
	i, _ := slices.BinarySearchFunc(s.st.roles, r.index, func(x *roleState, idx int) int { return x.index - idx })
	s.st.roles = slices.Insert(s.st.roles, i, r)
}

// quota returns the trust policy quota: configured, else read once, else DefaultQuota.
func (a *Assigner) quotaFor(ctx context.Context) int {
	a.quotaMu.Lock()
	defer a.quotaMu.Unlock()
	if a.quota > 0 {
		return a.quota
	}
	if a.cfg.Quota > 0 {
		a.quota = a.cfg.Quota
		return a.quota
	}
	a.quota = DefaultQuota
	out, err := a.api.GetAccountSummary(ctx, &iam.GetAccountSummaryInput{})
	if err != nil {
		a.log.Warn("cannot read the trust policy quota; assuming the default", "quota", DefaultQuota, "err", err)
		return a.quota
	}
	if v := out.SummaryMap[string(types.SummaryKeyTypeAssumeRolePolicySizeQuota)]; v > 0 {
		a.quota = int(v)
	}
	a.log.Info("trust policy size quota", "quota", a.quota)
	return a.quota
}

// learnQuota lowers the quota after IAM refused a document of rejectedSize characters. When IAM
// names a quota that our own measurement says the document met, IAM counts differently from us,
// so the quota drops below the rejected size anyway: each 409 strictly lowers it, which
// guarantees progress instead of a loop of refusals.
func (a *Assigner) learnQuota(named, rejectedSize int) int {
	a.quotaMu.Lock()
	defer a.quotaMu.Unlock()
	q := rejectedSize - 1
	if named > 0 && named < q {
		q = named
	}
	if a.quota == 0 || q < a.quota {
		a.log.Warn("IAM refused a trust policy for its size; lowering the quota", "from", a.quota, "to", q, "rejected", rejectedSize)
		a.quota = q
	}
	return a.quota
}

// Assign places subject system:serviceaccount:<namespace>:<name> into a derived role of seed and
// returns that role. Already listed: same role, nothing written. Otherwise first fit over the
// existing roles by lowest index, else a new role at the lowest free index. With a warm cache and
// no write by another replica since this one's last, it costs exactly one IAM call.
//
// Concurrent calls for one seed are committed together: while one lock session writes, the
// subjects that arrive queue up, and the next session places all of them with one trust policy
// write per role it touches (group commit). The seed's lock serialises every write anyway, so
// without batching each caller would pay a whole lock session (Lease round trips, IAM latency and
// the SDK's retries of throttled calls) while the others wait; under IAM throttling that queue
// outgrows the admission budget. A caller whose ctx ends stops waiting; its subject may still be
// written by the session already under way, which a later Assign then finds listed for free.
func (a *Assigner) Assign(ctx context.Context, seed RoleARN, namespace, name string) (Assignment, error) {
	subject, err := Subject(namespace, name)
	if err != nil {
		return Assignment{}, err
	}
	if err := a.allowed(seed); err != nil {
		return Assignment{}, err
	}
	st := a.state(seed)
	req := &assignReq{ctx: ctx, subject: subject, done: make(chan assignResult, 1)}
	st.qmu.Lock()
	st.queue = append(st.queue, req)
	start := !st.draining
	st.draining = true
	st.qmu.Unlock()
	if start {
		go a.drain(seed, st)
	}
	select {
	case r := <-req.done:
		if r.err != nil {
			return Assignment{}, fmt.Errorf("assigning %s to a derived role of %s: %w", subject, seed, r.err)
		}
		return r.a, nil
	case <-ctx.Done():
		return Assignment{}, fmt.Errorf("assigning %s to a derived role of %s: %w", subject, seed, ctx.Err())
	}
}

// assignReq is one Assign waiting for its subject to be placed.
type assignReq struct {
	ctx     context.Context
	subject string
	done    chan assignResult // buffered: the drainer never blocks on a caller that left
}

type assignResult struct {
	a   Assignment
	err error
}

// maxBatchWait bounds a batch whose callers have no deadline.
const maxBatchWait = 2 * time.Minute

// drain runs lock sessions for st's queue until it is empty. One drainer runs per seed. The
// batch is taken once the locks are held, so everyone who queued while the previous session or
// the wait for the Lease went on is placed in this session.
func (a *Assigner) drain(seed RoleARN, st *seedState) {
	for {
		early := st.take(false)
		if len(early) == 0 {
			return
		}
		lockCtx, cancelLock := batchContext(early, time.Time{})
		s, done, err := a.begin(lockCtx, seed)
		locked := time.Now()
		if err != nil {
			cancelLock()
			st.remove(early)
			for _, r := range early {
				r.done <- assignResult{err: err}
			}
			continue
		}
		batch := st.take(true)
		if len(batch) > 0 {
			var until time.Time
			if l, ok := a.locker.(holdLimiter); ok {
				until = locked.Add(l.HoldLimit() * 2 / 3)
			}
			a.assignBatch(s, batch, until)
		}
		done()
		cancelLock()
	}
}

// take returns the requests whose callers still wait, dropping the others; clear also empties
// the queue. When nobody waits, the drainer's turn ends (under the same lock as enqueueing, so
// no request is left without a drainer).
func (st *seedState) take(clear bool) []*assignReq {
	st.qmu.Lock()
	defer st.qmu.Unlock()
	live := st.queue[:0]
	for _, r := range st.queue {
		if r.ctx.Err() == nil { // callers that left already returned their ctx error
			live = append(live, r)
		}
	}
	st.queue = live
	out := slices.Clone(live)
	if clear {
		st.queue = nil
	}
	if len(out) == 0 && !clear {
		st.draining = false
	}
	return out
}

// remove takes answered requests out of the queue.
func (st *seedState) remove(done []*assignReq) {
	st.qmu.Lock()
	defer st.qmu.Unlock()
	st.queue = slices.DeleteFunc(st.queue, func(r *assignReq) bool { return slices.Contains(done, r) })
}

// holdLimiter is implemented by lockers whose lock expires (a Kubernetes Lease): a session must
// end well before that, or another replica may take the lock over while this one still writes.
type holdLimiter interface{ HoldLimit() time.Duration }

// batchContext lasts while any caller of the batch still waits, no longer than the latest
// caller's deadline, and not past until (zero: no bound). It keeps the first caller's values
// (loggers, tracing).
func batchContext(batch []*assignReq, until time.Time) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(maxBatchWait)
	if !until.IsZero() {
		deadline = earlier(deadline, until)
	}
	latest := time.Time{}
	for _, r := range batch {
		d, ok := r.ctx.Deadline()
		if !ok {
			latest = deadline
			break
		}
		latest = later(latest, d)
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(batch[0].ctx), earlier(latest, deadline))
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, 0, len(batch))
	for _, r := range batch {
		stops = append(stops, context.AfterFunc(r.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel() // nobody waits for this batch any more
			}
		}))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// assignBatch places batch in the lock session s and answers every caller.
func (a *Assigner) assignBatch(s *session, batch []*assignReq, until time.Time) {
	ctx, cancel := batchContext(batch, until)
	defer cancel()
	subjects := make([]string, 0, len(batch))
	for _, r := range batch {
		if !slices.Contains(subjects, r.subject) {
			subjects = append(subjects, r.subject)
		}
	}
	results := s.placeBatch(ctx, subjects)
	for _, r := range batch {
		r.done <- results[r.subject]
	}
	if len(subjects) > 1 {
		a.log.Debug("assigned a batch of subjects in one lock session", "seed", s.seed.String(), "subjects", len(subjects))
	}
}

// placeBatch places subjects; every subject gets a result.
func (s *session) placeBatch(ctx context.Context, subjects []string) map[string]assignResult {
	out := make(map[string]assignResult, len(subjects))
	todo := subjects
	for range maxPlacementAttempts {
		if len(todo) == 0 {
			return out
		}
		if !s.st.loaded {
			// A write of the previous round has an unknown outcome: read IAM again before
			// placing anyone else (the lock is still held).
			if err := s.refresh(ctx); err != nil {
				for _, sub := range todo {
					out[sub] = assignResult{err: err}
				}
				return out
			}
		}
		todo = s.placeRound(ctx, todo, out)
	}
	for _, sub := range todo {
		out[sub] = assignResult{err: fmt.Errorf("gave up after %d attempts (roles changing underneath)", maxPlacementAttempts)}
	}
	return out
}

// placeRound makes one placement attempt for todo: subjects already listed are answered,
// the others are added to the staged trust policy of their first-fit role (a new role is created
// for a subject no existing role can take), and then every touched role is written once, in
// index order. It returns the subjects to place again (IAM refused their role as full, or a role
// appeared that the cache did not know).
func (s *session) placeRound(ctx context.Context, todo []string, out map[string]assignResult) (again []string) {
	log := s.a.log.With("seed", s.seed.String())
	quota := s.a.quotaFor(ctx)
	staged := map[*roleState]TrustPolicy{}
	members := map[*roleState][]string{}
	current := func(r *roleState) TrustPolicy {
		if p, ok := staged[r]; ok {
			return p
		}
		return r.trust
	}
next:
	for _, sub := range todo {
		if res, ok, err := s.listed(ctx, sub); err != nil || ok {
			out[sub] = assignResult{a: res, err: err}
			continue
		}
		// The role admission planned comes first, so the ARN it answered with comes true;
		// first fit otherwise.
		candidates := s.st.roles
		if idx, ok := s.st.hint(sub, time.Now()); ok {
			if i := slices.IndexFunc(s.st.roles, func(r *roleState) bool { return r.index == idx }); i > 0 {
				candidates = append([]*roleState{s.st.roles[i]}, s.st.roles...)
			}
		}
		for _, r := range candidates {
			if r.bad != nil || r.owner == ownerOther {
				continue
			}
			cand, _, ok, err := Fit(current(r), sub, quota)
			if err != nil || !ok {
				continue
			}
			if err := s.ensureComplete(ctx, r); errors.Is(err, errForeign) {
				continue
			} else if err != nil {
				out[sub] = assignResult{err: err}
				continue next
			}
			staged[r] = cand
			members[r] = append(members[r], sub)
			continue next
		}
		res, retry, err := s.placeNew(ctx, sub, quota)
		switch {
		case retry:
			again = append(again, sub)
		default:
			out[sub] = assignResult{a: res, err: err}
		}
	}
	for _, r := range slices.Clone(s.st.roles) {
		p, ok := staged[r]
		if !ok {
			continue
		}
		size, _ := p.Size()
		err := s.writeTrust(ctx, r, p)
		if named, full := trustQuotaError(err); full {
			// IAM's verdict wins over our measurement: this role is full, place them again.
			quota = s.a.learnQuota(named, size)
			again = append(again, members[r]...)
			continue
		}
		if err == nil {
			s.st.placed(members[r])
		}
		for _, sub := range members[r] {
			if err != nil {
				out[sub] = assignResult{err: err}
				continue
			}
			out[sub] = assignResult{a: Assignment{RoleARN: r.arn.String()}}
			log.Info("assigned ServiceAccount to derived role", "subject", sub, "role", r.arn.String(), "chars", size, "quota", quota, "batch", len(members[r]))
		}
	}
	return again
}

// listed finds a role of ours that already lists subject.
func (s *session) listed(ctx context.Context, subject string) (Assignment, bool, error) {
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther || !r.trust.Has(subject) {
			continue
		}
		if err := s.ensureComplete(ctx, r); errors.Is(err, errForeign) {
			continue
		} else if err != nil {
			return Assignment{}, false, err
		}
		return Assignment{RoleARN: r.arn.String(), AlreadyListed: true}, true, nil
	}
	return Assignment{}, false, nil
}

// placeNew creates a derived role at the lowest free index for subject; again asks for another
// placement after the cache was corrected (a role full at creation, or one that already existed).
func (s *session) placeNew(ctx context.Context, subject string, quota int) (res Assignment, again bool, err error) {
	idx := s.freeIndex()
	if idx >= s.a.cfg.RoleCreationLimit {
		return res, false, fmt.Errorf("%w: all %d derived roles of %s are full (raise --role-creation-limit or the ACLSizePerRole quota)", ErrRoleLimitReached, s.a.cfg.RoleCreationLimit, s.seed)
	}
	arn, err := Derived(s.seed, idx)
	if err != nil {
		return res, false, err
	}
	seed, err := s.seedSpec(ctx)
	if err != nil {
		return res, false, err
	}
	trust, err := DeriveTrustPolicy(seed.trust, []string{subject})
	if err != nil {
		return res, false, err
	}
	size, err := trust.Size()
	if err != nil {
		return res, false, err
	}
	if size > quota {
		return res, false, fmt.Errorf("%w: the trust policy would be %d characters, quota %d", ErrSubjectTooLarge, size, quota)
	}
	err = s.create(ctx, arn, idx, seed, trust)
	switch named, full := trustQuotaError(err); {
	case full:
		s.a.learnQuota(named, size)
		return res, true, nil
	case isAlreadyExists(err):
		// Our listing missed it (another writer outside the protocol, or IAM's eventual
		// consistency): look at it and place again.
		if err := s.adopt(ctx, arn, idx); err != nil {
			return res, false, err
		}
		return res, true, nil
	case err != nil:
		return res, false, err
	}
	s.a.log.Info("created derived role", "seed", s.seed.String(), "subject", subject, "role", arn.String(), "chars", size, "quota", quota)
	s.st.placed([]string{subject})
	return Assignment{RoleARN: arn.String(), Created: true}, false, nil
}

// create makes a full clone of the seed. The seed tag goes in CreateRole itself, so a role that
// exists is always recognisable as ours; the subject goes in too, which saves a call, and is safe
// because the role only gains permissions (policies attached after) and never more than the seed.
// If attaching fails, the role stays in the cache as incomplete and the next attempt finishes it.
func (s *session) create(ctx context.Context, arn RoleARN, idx int, seed *roleSpec, trust TrustPolicy) error {
	js, err := trust.JSON()
	if err != nil {
		return err
	}
	tags := copiedTags(seed)
	in := &iam.CreateRoleInput{
		RoleName:                 aws.String(arn.Name),
		Path:                     aws.String(arn.Path),
		AssumeRolePolicyDocument: aws.String(js),
		Tags:                     tagList(tags),
	}
	if seed.description != "" {
		in.Description = aws.String(seed.description)
	}
	if seed.maxSession != 0 {
		in.MaxSessionDuration = aws.Int32(seed.maxSession)
	}
	if seed.boundary == "" { // readSeed refuses such a seed; never create a role without one
		return refuseSeed(s.seed, "no permissions boundary for derived roles")
	}
	in.PermissionsBoundary = aws.String(seed.boundary)
	var out *iam.CreateRoleOutput
	err = s.w.do(ctx, "iam:CreateRole "+arn.Name, func() error {
		var err error
		out, err = s.a.api.CreateRole(ctx, in)
		return err
	})
	if err != nil {
		if !isDefinite(err) {
			s.st.loaded = false
		}
		return err
	}
	r := &roleState{index: idx, arn: arn, id: aws.ToString(out.Role.RoleId), trust: trust, owner: ownerUs}
	s.insert(r)
	target := &roleSpec{arn: arn, boundary: seed.boundary, tags: tags, inline: map[string]string{}}
	if err := syncPolicies(ctx, s.w, seed, target, false); err != nil {
		return fmt.Errorf("derived role %s created but not complete (the next attempt completes it): %w", arn, err)
	}
	r.complete = true
	return nil
}

// adopt loads a role that exists although the listing did not show it.
func (s *session) adopt(ctx context.Context, arn RoleARN, idx int) error {
	out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(arn.Name)})
	if err != nil {
		return fmt.Errorf("role %s exists but cannot be read: %w", arn.Name, err)
	}
	spec, err := specFromRole(out.Role, s.a.provider(s.seed))
	if err != nil {
		return err
	}
	r := &roleState{index: idx, arn: spec.arn, id: spec.id, trust: spec.trust}
	if spec.arn != arn {
		// Role names are unique per account across paths: the name is taken elsewhere.
		r.owner = ownerOther
		s.a.log.Warn("derived role name is taken by a role under another path; skipping the index", "want", arn.String(), "have", spec.arn.String())
	} else {
		s.setOwner(r, spec)
	}
	s.insert(r)
	return nil
}

// Remove takes subjects out of every derived role of seed that lists them (garbage collection of
// deleted ServiceAccounts) and returns how many entries it removed. Space freed this way is
// reused by the next Assign (first fit). Roles left empty are kept: see DeleteEmpty.
func (a *Assigner) Remove(ctx context.Context, seed RoleARN, subjects []string) (int, error) {
	for _, sub := range subjects {
		if _, _, err := ParseSubject(sub); err != nil {
			return 0, err
		}
	}
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return 0, err
	}
	defer done()
	removed := 0
	var errs []error
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		cand, n := r.trust.WithoutSubjects(subjects...)
		if n == 0 {
			continue
		}
		if err := s.ensureOwned(ctx, r); errors.Is(err, errForeign) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.writeTrust(ctx, r, cand); err != nil {
			errs = append(errs, err)
			continue
		}
		removed += n
		a.log.Info("removed ServiceAccounts from derived role", "role", r.arn.String(), "removed", n, "left", cand.Len())
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("removing subjects from derived roles of %s: %w", seed, err)
	}
	return removed, nil
}

// DeleteEmpty deletes derived roles of seed that list no subject (detaching and deleting their
// policies first, as IAM requires) and returns their ARNs. Empty roles are cheap to keep and a
// busy cluster refills them quickly, so the sweeper calls this sparingly.
func (a *Assigner) DeleteEmpty(ctx context.Context, seed RoleARN) ([]string, error) {
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return nil, err
	}
	defer done()
	var deleted []string
	var errs []error
	for _, r := range slices.Clone(s.st.roles) {
		if r.bad != nil || r.owner == ownerOther || r.trust.Len() > 0 {
			continue
		}
		if err := s.ensureOwned(ctx, r); errors.Is(err, errForeign) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.deleteRole(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, r.arn.String())
	}
	return deleted, errors.Join(errs...)
}

func (s *session) deleteRole(ctx context.Context, r *roleState) error {
	spec := &roleSpec{arn: r.arn}
	if err := readPolicies(ctx, s.a.api, spec, false); err != nil {
		return err
	}
	name := aws.String(r.arn.Name)
	for _, p := range spec.attached {
		if err := s.w.do(ctx, "iam:DetachRolePolicy "+r.arn.Name, func() error {
			_, err := s.a.api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: name, PolicyArn: aws.String(p)})
			return err
		}); err != nil && !isNoSuchEntity(err) { // gone: an abandoned attempt was applied
			return err
		}
	}
	for p := range spec.inline {
		if err := s.w.do(ctx, "iam:DeleteRolePolicy "+r.arn.Name, func() error {
			_, err := s.a.api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: name, PolicyName: aws.String(p)})
			return err
		}); err != nil && !isNoSuchEntity(err) {
			return err
		}
	}
	err := s.w.do(ctx, "iam:DeleteRole "+r.arn.Name, func() error {
		_, err := s.a.api.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: name})
		return err
	})
	if err != nil && !isNoSuchEntity(err) {
		s.st.loaded = false
		return err
	}
	s.st.roles = slices.DeleteFunc(s.st.roles, func(x *roleState) bool { return x == r })
	s.a.log.Info("deleted empty derived role", "role", r.arn.String())
	return nil
}

// Roles reports the derived roles of seed as IAM has them now. It reads only and leaves the
// assignment cache alone: an eventually consistent read must never replace a cache that already
// holds this replica's own latest write.
func (a *Assigner) Roles(ctx context.Context, seed RoleARN) ([]RoleInfo, error) {
	if err := a.allowed(seed); err != nil {
		return nil, err
	}
	s := &session{a: a, seed: seed, st: &seedState{}}
	s.w = &writer{api: a.api, before: s.bump}
	if err := s.refresh(ctx); err != nil {
		return nil, err
	}
	quota := a.quotaFor(ctx)
	var out []RoleInfo
	for _, r := range s.st.roles {
		info := RoleInfo{Index: r.index, ARN: r.arn.String(), Quota: quota}
		if r.bad == nil {
			info.Subjects = r.trust.Subjects()
			info.Chars, _ = r.trust.Size()
			info.Fill = float64(info.Chars) / float64(quota)
		}
		if err := s.ensureOwned(ctx, r); err == nil {
			info.Owned = true
		} else if !errors.Is(err, errForeign) {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// SyncFromSeed re-reads the seed and makes every derived role match it again: attached and inline
// policies (extras removed, changed documents rewritten), permissions boundary, description, max
// session duration, tags, and the trust statements (subjects kept). A role whose subjects would
// no longer fit under the quota with the seed's new statements keeps its old trust policy and is
// reported in the error.
func (a *Assigner) SyncFromSeed(ctx context.Context, seed RoleARN) error {
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return err
	}
	defer done()
	spec, err := s.readSeed(ctx, true)
	if err != nil {
		return err
	}
	s.st.spec = spec
	quota := a.quotaFor(ctx)
	var errs []error
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		target, err := readRoleFor(ctx, a.api, r.arn.Name, a.provider(seed), true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.setOwner(r, target); r.owner != ownerUs {
			continue
		}
		if err := syncPolicies(ctx, s.w, spec, target, true); err != nil {
			errs = append(errs, err)
			continue
		}
		r.complete = true
		want, err := DeriveTrustPolicy(spec.trust, r.trust.Subjects())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wantJS, err1 := want.JSON()
		haveJS, err2 := r.trust.JSON()
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
			continue
		}
		if wantJS == haveJS {
			continue
		}
		if size, _ := want.Size(); size > quota {
			errs = append(errs, fmt.Errorf("derived role %s: with the seed's current trust statements its %d subjects need %d characters, quota %d", r.arn, want.Len(), size, quota))
			continue
		}
		if err := s.writeTrust(ctx, r, want); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("re-synced trust statements from seed", "role", r.arn.String())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("syncing derived roles of %s: %w", seed, err)
	}
	return nil
}
