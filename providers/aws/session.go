package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/annotations"
)

// session is one locked read-modify-write of a seed's derived roles.
type session struct {
	a    *Assigner
	seed RoleARN
	st   *seedState
	w    *applier
	// locked: the distributed lock is held, so writes are allowed.
	locked bool
	bumped bool
	// mu guards the cache (st) while a round's writes run at once (placeRound), and while the
	// policies of new roles are attached (tail); the session is otherwise used by one goroutine.
	mu sync.Mutex
	// tail runs what goes on past a round: attaching new roles' policies and answering their
	// subjects. The lock is released only after it (drain).
	tail tail
	// known are trust policies refresh may take for a role's instead of parsing its document
	// again (parseTrustKnown), by role index: Roles, whose cache starts empty, passes the seed's
	// published view.
	known map[int]TrustPolicy
}

// tail counts the goroutines a session runs past its rounds. Unlike a sync.WaitGroup it can be
// waited on in a select (idle) while more are started.
type tail struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0
}

// Go runs f in the tail.
func (t *tail) Go(f func()) {
	t.mu.Lock()
	if t.n == 0 {
		t.idle = make(chan struct{})
	}
	t.n++
	t.mu.Unlock()
	go func() {
		defer func() {
			t.mu.Lock()
			if t.n--; t.n == 0 {
				close(t.idle)
			}
			t.mu.Unlock()
		}()
		f()
	}()
}

// Idle returns a channel closed once nothing runs in the tail (already closed when nothing does).
func (t *tail) Idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return t.idle
}

// Wait returns once nothing runs in the tail.
func (t *tail) Wait() { <-t.Idle() }

// attachment is the attaching of a new role's policies, run in the session's tail.
type attachment struct {
	done chan struct{}
	err  error // set before done is closed
}

// wait returns once the policies are attached, with the error if they could not be.
func (at *attachment) wait() error {
	<-at.done
	return at.err
}

// pending reports whether the attaching still runs.
func (at *attachment) pending() bool {
	select {
	case <-at.done:
		return false
	default:
		return true
	}
}

// newSession starts a session over st; without locked every write is refused (bump), which is
// what the read-only callers (admission's first view, the roles report) rely on.
func (a *Assigner) newSession(seed RoleARN, st *seedState, locked bool) *session {
	s := &session{a: a, seed: seed, st: st, locked: locked}
	s.w = &applier{api: a.api, before: s.bump}
	return s
}

// begin takes the local then the distributed lock and makes the cache current.
func (a *Assigner) begin(ctx context.Context, seed RoleARN) (*session, func(), error) {
	return a.beginSession(ctx, seed, false)
}

// beginSession is begin; reload lists the derived roles again whatever the generation says, for
// the garbage collection's full pass (Remove, SyncFromSeed), which is there for what the
// generation cannot show. A subject or statement added outside this server (the console, or
// someone holding the server's credentials) leaves the generation as it was, and a session
// deciding on the cache would never see it: Remove found nothing to take out and SyncFromSeed
// compared the seed with the cached policy, so the addition stayed for as long as the role was
// not written again.
func (a *Assigner) beginSession(ctx context.Context, seed RoleARN, reload bool) (*session, func(), error) {
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
	s := a.newSession(seed, st, true)
	done := func() { st.publish(a.now()); unlock(); release() }
	if st.expireForeign(a.now(), a.foreignRecheck) || reload {
		// A role found foreign may have been adopted since (credential-webhook roles adopt):
		// list the roles again, trust policies included, before placing anyone in one.
		st.loaded = false
	}
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
		if h, ok := s.a.locker.(heldChecker); ok {
			if err := h.Held(s.seed.String()); err != nil {
				return fmt.Errorf("seed %s: %w", s.seed, err)
			}
		}
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
// RoleId did not change (a deleted and re-created role gets a new id and is checked again). A
// document that is the rendering of the role's cached policy (or of s.known's) is not parsed
// again (parseTrustKnown): the full garbage collection pass reloads every role (Roles), and
// those parses, with the rendering of each fresh parse's own template when it was measured,
// were 8 % of benchtool sim's CPU.
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
		known := s.known[l.index]
		if prev, ok := old[l.id]; ok {
			r.owner, r.complete, r.foreignAt, r.attach = prev.owner, prev.complete, prev.foreignAt, prev.attach
			known = prev.trust
		}
		doc := l.doc
		if doc == "" { // not every IAM implementation includes it in ListRoles
			out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(l.arn.Name)})
			if err != nil {
				return fmt.Errorf("iam:GetRole %s: %w", l.arn.Name, err)
			}
			doc = aws.ToString(out.Role.AssumeRolePolicyDocument)
		}
		if r.trust, r.bad = parseTrustKnown(doc, s.a.provider(s.seed), known); r.bad != nil {
			s.a.log.Warn("derived role has an unreadable trust policy; it will not be used", "role", l.arn.String(), "err", r.bad)
		}
		roles = append(roles, r)
	}
	s.st.roles = roles
	s.st.loaded = true
	return nil
}

// seedSpec returns the seed's permissions, reading them on first use and after SeedTTL.
func (s *session) seedSpec(ctx context.Context) (*roleSpec, error) {
	if spec := s.st.seed(s.a.now()); spec != nil {
		return spec, nil
	}
	spec, err := s.readSeed(ctx, false)
	if err != nil {
		return nil, err
	}
	s.st.setSeed(spec, s.a.now())
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

// ensureOwned checks the seed tag of r with one GetRole the first time. Its trust policy is the
// cached parse when the document is the same (parseTrustKnown), as it is unless a write came
// between: the full garbage collection pass reads every role of a fresh cache this way (Roles),
// and parsing each role a second time was 4 % of the simulated month's CPU.
func (s *session) ensureOwned(ctx context.Context, r *roleState) error {
	if r.owner == ownerUnknown {
		out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(r.arn.Name)})
		if err != nil {
			return fmt.Errorf("iam:GetRole %s: %w", r.arn.Name, err)
		}
		spec, err := specFromRoleKnown(out.Role, s.a.provider(s.seed), r.trust)
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
	r.owner, r.foreignAt = ownerOther, s.a.now()
	s.a.log.Warn("role is named like a derived role but lacks the seed tag; skipping it (an administrator can take over a faithful clone with credential-webhook roles adopt)",
		"role", r.arn.String(), "seed", s.seed.String(), "tag", annotations.SeedTag)
}

// ensureComplete makes sure r is ours and has at least the seed's permissions, once per process:
// this is where a role half-created by an earlier attempt (created, policies not yet attached) is
// finished instead of being duplicated.
func (s *session) ensureComplete(ctx context.Context, r *roleState) error {
	if r.owner == ownerOther {
		return fmt.Errorf("%w: %s", errForeign, r.arn)
	}
	s.mu.Lock()
	complete, at := r.complete, r.attach
	s.mu.Unlock()
	if complete {
		return nil
	}
	if at != nil {
		if at.pending() || at.err == nil {
			// Created by this session and being attached (or attached): whoever is placed in it
			// is answered once that is done (assignResult.wait).
			return nil
		}
		// Attaching failed: read the role and finish it here, as for any incomplete role.
		s.mu.Lock()
		r.attach = nil
		s.mu.Unlock()
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
	n, err := s.syncRole(ctx, seed, target, false)
	if err != nil {
		return fmt.Errorf("completing derived role %s: %w", r.arn, err)
	}
	if n > 0 {
		s.a.log.Info("completed a half-created derived role", "role", r.arn.String(), "writes", n)
	}
	s.mu.Lock()
	r.complete = true
	s.mu.Unlock()
	return nil
}

// writeTrust sends p as r's trust policy and updates the cache on success.
func (s *session) writeTrust(ctx context.Context, r *roleState, p TrustPolicy) error {
	js, err := p.JSON()
	if err != nil {
		return err
	}
	if err := s.w.apply(ctx, updateTrust{role: r.arn.Name, document: js}); err != nil {
		if !isDefinite(err) {
			s.mu.Lock()
			s.st.loaded = false // the write may have happened: reload before trusting the cache
			s.mu.Unlock()
		}
		return err
	}
	s.mu.Lock()
	r.trust = p
	s.mu.Unlock()
	return nil
}

// syncRole makes target's permissions match seed's (policyDiff) and returns how many writes it
// sent. It reads the seed's inline documents the diff needs first, so the diff itself stays pure.
func (s *session) syncRole(ctx context.Context, seed, target *roleSpec, full bool) (int, error) {
	if err := seed.readInlineDocs(ctx, s.a.api, inlineDocsNeeded(seed, target, full)); err != nil {
		return 0, err
	}
	ws, err := policyDiff(seed, target, full)
	if err != nil {
		return 0, err
	}
	before := s.w.sent()
	err = s.w.apply(ctx, ws...)
	return s.w.sent() - before, err
}

// placeBatch places subjects; every subject gets a result.
func (s *session) placeBatch(ctx context.Context, subjects []string) map[string]assignResult {
	out := make(map[string]assignResult, len(subjects))
	todo := subjects
	for range maxPlacementAttempts {
		if len(todo) == 0 {
			return out
		}
		if !s.cacheLoaded() {
			// A write of the previous round has an unknown outcome: read IAM again before
			// placing anyone else (the lock is still held), once the tail's writes are done.
			s.tail.Wait()
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

// placeRound makes one placement attempt for todo. Plan: decide where every subject goes (Place,
// with the reads that check the chosen roles). Apply: create the new roles and write each
// touched role's trust policy once, all at the same time: every write goes to another role, and
// the lock is held, so nothing else writes between them; one after the other, a round cost an
// IAM round trip (and any throttling retry) per role, while every subject of the round waited for
// the last one. It returns the subjects to place again (IAM refused a role as full, or a role
// appeared that the cache did not know).
func (s *session) placeRound(ctx context.Context, todo []string, out map[string]assignResult) (again []string) {
	quota := s.a.quotaFor(ctx)
	pl, failed, seedErr := s.decide(ctx, todo, quota)
	for _, d := range pl.Decisions {
		switch {
		case d.Err != nil:
			out[d.Subject] = assignResult{err: d.Err}
		case d.Creates && seedErr != nil:
			out[d.Subject] = assignResult{err: seedErr}
		case failed[d.Index] != nil:
			out[d.Subject] = assignResult{err: failed[d.Index]}
		case d.Listed:
			// A role this session created may still be having its policies attached (decide's
			// ensureComplete let it be): a subject it lists is answered once that is done, as one
			// written into it is. Answered at once, it was granted a role without permissions
			// whenever the attaching then failed (TestAssignerAgainstMoto, half-created role).
			r := s.st.role(d.Index)
			s.mu.Lock()
			at := r.attach
			s.mu.Unlock()
			out[d.Subject] = assignResult{a: Assignment{RoleARN: r.arn.String(), AlreadyListed: true}, wait: at}
		}
	}
	// The checks read IAM and fill the cache: one role after the other, before any write (decide
	// checked these roles already, so this costs nothing unless a check failed there).
	type trustWrite struct {
		TrustWrite
		r *roleState
	}
	var writes []trustWrite
	for _, w := range pl.Writes {
		if failed[w.Index] != nil {
			continue
		}
		r := s.st.role(w.Index)
		if r == nil {
			again = append(again, w.Added...)
			continue
		}
		if err := s.ensureComplete(ctx, r); errors.Is(err, errForeign) {
			again = append(again, w.Added...)
			continue
		} else if err != nil {
			for _, sub := range w.Added {
				out[sub] = assignResult{err: err}
			}
			continue
		}
		writes = append(writes, trustWrite{w, r})
	}
	var seed *roleSpec
	if len(pl.Creates) > 0 && seedErr == nil {
		// New roles copy the seed's inline policies: read them once, before the creations run.
		var err error
		if seed, err = s.seedSpec(ctx); err == nil {
			err = seed.readInlineDocs(ctx, s.a.api, inlineDocsNeeded(seed, &roleSpec{inline: map[string]string{}}, false))
		}
		if err != nil {
			for _, c := range pl.Creates {
				for _, sub := range c.Subjects {
					out[sub] = assignResult{err: err}
				}
			}
			seed = nil
		}
	}

	var mu sync.Mutex // guards out, again and quota while the writes run
	var wg sync.WaitGroup
	if seed != nil {
		for _, c := range pl.Creates {
			wg.Go(func() {
				created, at, retry, err := s.createFor(ctx, c, seed, quota)
				exists := s.cached(c.Index)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case retry:
					again = append(again, c.Subjects...)
				case err != nil && !exists:
					for _, sub := range c.Subjects {
						out[sub] = assignResult{err: err}
					}
				default:
					// The role exists and lists them all; they are answered once its policies are
					// attached (at), an error keeping them pending (so their Jobs stay held) and
					// the role incomplete, for the next session that uses it to complete
					// (ensureComplete) before answering them as listed.
					for i, sub := range c.Subjects {
						out[sub] = assignResult{a: Assignment{RoleARN: created.String(), Created: i == 0}, err: err, wait: at}
					}
				}
			})
		}
	}
	log := s.a.log.With("seed", s.seed.String())
	for _, w := range writes {
		r := w.r
		wg.Go(func() {
			size, _ := w.Trust.Size()
			err := s.writeTrust(ctx, r, w.Trust)
			s.mu.Lock()
			at := r.attach // a role created earlier in this session: answer once it is complete
			s.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if named, full := trustQuotaError(err); full {
				// IAM's verdict wins over our measurement: this role is full, place them again.
				quota = s.a.learnQuota(named, size)
				again = append(again, w.Added...)
				return
			}
			arn := r.arn.String() // once per role, not twice per subject: 1 % of benchtool sim's CPU
			// Asked once: the line's numbers are boxed before Info could drop it.
			logged := log.Enabled(ctx, slog.LevelInfo)
			for _, sub := range w.Added {
				if err != nil {
					out[sub] = assignResult{err: err}
					continue
				}
				out[sub] = assignResult{a: Assignment{RoleARN: arn}, wait: at}
				if logged {
					log.Info("assigned ServiceAccount to derived role", "subject", sub, "role", arn, "chars", size, "quota", quota, "batch", len(w.Added))
				}
			}
		})
	}
	wg.Wait()
	return again
}

// cacheLoaded reports whether the cache still matches IAM (safe while the tail writes).
func (s *session) cacheLoaded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.loaded
}

// cached reports whether the cache has a role at index idx (safe while writes run).
func (s *session) cached(idx int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.role(idx) != nil
}

// decide places todo over the cache (Place) and checks, with reads only, that every existing
// role the placement uses is ours and complete (ensureComplete: a role half-created by an earlier
// attempt is finished here). A role found foreign is marked so and the subjects are placed again
// without it. failed holds the roles that could not be checked: their subjects get that error.
// seedErr is set when a new role was needed and the seed could not be read.
func (s *session) decide(ctx context.Context, todo []string, quota int) (pl Placement, failed map[int]error, seedErr error) {
	hints := s.st.hints(todo, s.a.now())
	failed = map[int]error{}
	for {
		var seed *TrustPolicy
		if spec := s.st.seed(s.a.now()); spec != nil {
			seed = &spec.trust
		}
		pl = Place(s.st.views(), todo, quota, s.a.cfg.RoleCreationLimit, PlaceOptions{Seed: seed, Hints: hints})
		if pl.NeedSeed && seedErr == nil {
			// The seed is read only when a new role is needed: new roles are derived from it.
			if _, seedErr = s.seedSpec(ctx); seedErr == nil {
				continue
			}
		}
		foreign := false
		for _, d := range pl.Decisions {
			if d.Err != nil || d.Creates {
				continue
			}
			r := s.st.role(d.Index)
			if r == nil || failed[d.Index] != nil { // nil: a role this placement creates
				continue
			}
			if err := s.ensureComplete(ctx, r); errors.Is(err, errForeign) {
				foreign = true
			} else if err != nil {
				failed[d.Index] = err
			}
		}
		if !foreign {
			return pl, failed, seedErr
		}
	}
}

// createFor creates the role c plans, with all its subjects, from seed (its inline documents
// read); again asks for another placement after the cache was corrected (IAM found the role full
// at creation, or the role already existed). Several run at once in a round: the cache is
// changed under s.mu only.
func (s *session) createFor(ctx context.Context, c RoleCreate, seed *roleSpec, quota int) (arn RoleARN, at *attachment, again bool, err error) {
	arn, err = Derived(s.seed, c.Index)
	if err != nil {
		return arn, nil, false, err
	}
	size, err := c.Trust.Size()
	if err != nil {
		return arn, nil, false, err
	}
	at, err = s.create(ctx, arn, c.Index, seed, c.Trust)
	switch named, full := trustQuotaError(err); {
	case full:
		s.a.learnQuota(named, size)
		return arn, nil, true, nil
	case isAlreadyExists(err):
		// Our listing missed it (another writer outside the protocol, or IAM's eventual
		// consistency): look at it and place again.
		if err := s.adopt(ctx, arn, c.Index); err != nil {
			return arn, nil, false, err
		}
		return arn, nil, true, nil
	case err != nil:
		return arn, nil, false, err
	}
	// Here the role exists and lists every subject; its policies are being attached (at).
	s.a.log.Info("created derived role", "seed", s.seed.String(), "role", arn.String(), "subjects", len(c.Subjects), "first", c.Subjects[0], "chars", size, "quota", quota)
	return arn, at, false, nil
}

// create makes a full clone of the seed. The seed tag goes in CreateRole itself, so a role that
// exists is always recognisable as ours; every subject of the round goes in too, which saves a write, and is safe
// because the role only gains permissions (policies attached after) and never more than the seed.
// The policies are attached in the session's tail (at): the round ends with its trust writes, so
// the next one starts a round trip or more sooner, while whoever is placed in the role is answered
// only once they are attached. If attaching fails, the role stays in the cache as incomplete and
// the next attempt finishes it.
func (s *session) create(ctx context.Context, arn RoleARN, idx int, seed *roleSpec, trust TrustPolicy) (*attachment, error) {
	js, err := trust.JSON()
	if err != nil {
		return nil, err
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
		return nil, refuseSeed(s.seed, "no permissions boundary for derived roles")
	}
	in.PermissionsBoundary = aws.String(seed.boundary)
	var id string
	if err := s.w.apply(ctx, createRole{in: in, id: &id}); err != nil {
		if !isDefinite(err) {
			s.mu.Lock()
			s.st.loaded = false
			s.mu.Unlock()
		}
		return nil, err
	}
	at := &attachment{done: make(chan struct{})}
	r := &roleState{index: idx, arn: arn, id: id, trust: trust, owner: ownerUs, attach: at}
	s.mu.Lock()
	s.st.insert(r)
	s.mu.Unlock()
	s.tail.Go(func() {
		// What CreateRole set (the boundary included): policyDiff adds the rest, which does not
		// depend on its order, so it is sent at once (one IAM round trip instead of one per
		// policy).
		target := &roleSpec{arn: arn, boundary: seed.boundary, tags: tags, inline: map[string]string{}}
		ws, err := policyDiff(seed, target, false)
		if err == nil {
			err = s.w.applyUnordered(ctx, ws...)
		}
		s.mu.Lock()
		if err != nil {
			at.err = fmt.Errorf("derived role %s created but not complete (the next attempt completes it): %w", arn, err)
		} else {
			r.complete = true
		}
		s.mu.Unlock()
		close(at.done)
	})
	return at, nil
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
	s.mu.Lock()
	s.st.insert(r)
	s.mu.Unlock()
	return nil
}
