package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
)

// Errors callers branch on. They are wrapped with context; test with errors.Is.
var (
	// ErrNotAllowed: the seed role is not in Config.Seeds.
	ErrNotAllowed = errors.New("seed role not allowed")
	// ErrRoleLimitReached: every derived role is full and Config.RoleCreationLimit roles exist.
	ErrRoleLimitReached = errors.New("derived role limit reached")
	// ErrTooManySeeds: admission plans for a bounded number of seeds per replica (maxPlanSeeds).
	ErrTooManySeeds = errors.New("too many seeds")
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

func (e *seedRefusal) Error() string { return e.msg }

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
	// Clock is the time the caches, the reservations and the empty-since marks are measured in;
	// nil is time.Now. Only the thirty-day simulation (bench/cmd/benchtool sim) sets it: its
	// days pass in seconds, and every expiry must follow the simulated clock, not the machine's.
	// Lock deadlines and IAM timeouts stay on the machine's clock.
	Clock func() time.Time
	// BatchLinger: a lock session already writing a burst holds back the subjects that would
	// leave a role half full, unless they were queued longer ago than this (--aws-batch-linger;
	// 0 holds nothing back). See holdBack.
	BatchLinger time.Duration
}

// Assignment is the outcome of Assign.
type Assignment struct {
	RoleARN       string
	Created       bool // a new derived role was created for this subject
	AlreadyListed bool // nothing was written: the subject was already in RoleARN
}

// Assigner places ServiceAccount subjects into derived roles of seed roles.
type Assigner struct {
	api    IAMAPI
	locker Locker
	cfg    Config
	log    *slog.Logger

	mu    sync.Mutex
	seeds map[string]*seedState
	// byARN is seeds by the RoleARN callers pass, so that state need not build the ARN's
	// string for every Assign: that concatenation was 2 % of benchtool sim's CPU. Bounded like
	// allowedSeeds; past it, the string is built.
	byARN map[RoleARN]*seedState

	quotaMu sync.Mutex
	quota   int // 0 until known

	// allowedMu guards allowedSeeds, the seeds allowed found allowed (the allowlist is fixed for
	// the Assigner's life). Every Assign, lock session and collection asks: parsing the ARN
	// again and matching the globs was 7 % of the simulated month's CPU (benchtool sim).
	allowedMu    sync.Mutex
	allowedSeeds map[RoleARN]bool

	// refreshMu guards lastRefresh, when a review last started a background refresh of a plan
	// view (mayRefresh).
	refreshMu   sync.Mutex
	lastRefresh time.Time

	// maxPlanSeeds is maxPlanSeeds; tests shorten it.
	maxPlanSeeds int
	// maxRenewedHold is DefaultMaxRenewedHold; tests shorten it.
	maxRenewedHold time.Duration

	// foreignRecheck is ForeignRecheck; tests shorten it.
	foreignRecheck time.Duration

	// rounds counts the placement rounds of Assign's lock sessions (Rounds).
	rounds atomic.Int64
	// heldBack counts the subjects holdBack left out of a round (HeldBack).
	heldBack atomic.Int64
}

// Rounds is how many placement rounds Assign's lock sessions ran: a session holding the lock
// through a burst runs several, one per group of subjects that queued while the previous wrote.
func (a *Assigner) Rounds() int64 { return a.rounds.Load() }

// HeldBack is how many times a round held a subject back to fill its role (holdBack).
func (a *Assigner) HeldBack() int64 { return a.heldBack.Load() }

// NewAssigner returns an Assigner. log may be nil.
func NewAssigner(api IAMAPI, locker Locker, cfg Config, log *slog.Logger) *Assigner {
	if cfg.RoleCreationLimit <= 0 {
		cfg.RoleCreationLimit = DefaultRoleCreationLimit
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Assigner{api: api, locker: locker, cfg: cfg, log: log, seeds: map[string]*seedState{}, foreignRecheck: ForeignRecheck, maxPlanSeeds: maxPlanSeeds,
		maxRenewedHold: DefaultMaxRenewedHold}
}

// now is the Assigner's clock (Config.Clock).
func (a *Assigner) now() time.Time { return a.cfg.Clock() }

func (a *Assigner) state(seed RoleARN) *seedState {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st, ok := a.byARN[seed]; ok {
		return st
	}
	key := seed.String()
	st, ok := a.seeds[key]
	if !ok {
		st = &seedState{sem: make(chan struct{}, 1), arrived: make(chan struct{}, 1)}
		a.seeds[key] = st
	}
	if a.byARN == nil {
		a.byARN = map[RoleARN]*seedState{}
	}
	if len(a.byARN) < maxAllowedSeeds {
		a.byARN[seed] = st
	}
	return st
}

// maxAllowedSeeds bounds allowedSeeds: seeds come from ServiceAccount annotations, and a glob
// in the allowlist admits any number of names. Past it, verdicts are computed every time.
const maxAllowedSeeds = 1024

func (a *Assigner) allowed(seed RoleARN) error {
	a.allowedMu.Lock()
	known := a.allowedSeeds[seed]
	a.allowedMu.Unlock()
	if known {
		return nil
	}
	if err := a.checkAllowed(seed); err != nil {
		return err
	}
	a.allowedMu.Lock()
	defer a.allowedMu.Unlock()
	if a.allowedSeeds == nil {
		a.allowedSeeds = map[RoleARN]bool{}
	}
	if len(a.allowedSeeds) < maxAllowedSeeds {
		a.allowedSeeds[seed] = true
	}
	return nil
}

// checkAllowed is allowed's verdict, computed.
func (a *Assigner) checkAllowed(seed RoleARN) error {
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
	req := &assignReq{ctx: ctx, subject: subject, queued: time.Now(), done: make(chan assignResult, 1)}
	st.qmu.Lock()
	st.queue = append(st.queue, req)
	start := !st.draining
	st.draining = true
	st.qmu.Unlock()
	select {
	case st.arrived <- struct{}{}: // a session waiting on its tail takes it in another round
	default:
	}
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
