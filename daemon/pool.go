package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
)

const (
	// maxParallelCreates bounds worker starts in flight: on a small host, starts in
	// parallel beyond a few only slow each other down.
	maxParallelCreates = 4
	// createTimeout bounds one worker start, its seed included.
	createTimeout = 3 * time.Minute
	// seedTimeout bounds an environment's seed cells in one worker: a seed that takes longer
	// will in every worker, and makes its environment unavailable.
	seedTimeout = 90 * time.Second
	// healthInterval is how often idle workers are checked, and pools above their target
	// trimmed.
	healthInterval = 30 * time.Second
	healthTimeout  = 5 * time.Second
	maxBackoff     = 30 * time.Second
	// refillDelay is how long a refill waits after a session took an idle worker.
	refillDelay = 100 * time.Millisecond
	// faultsToUnavailable is how many creations in a row must fail on what the image or
	// the seed says before the environment is taken out of service (one could be a passing
	// lack of memory); retryUnavailable is when it is tried again.
	faultsToUnavailable = 3
	retryUnavailable    = 5 * time.Minute
)

// The pools: one per environment, each with idle workers ready for its new sessions and
// the sessions waiting for one. Everything here is guarded by Daemon.mu. Workers are
// created outside the lock, so a slow start never delays calls of existing sessions.
//
// The pools share --max-total-workers. Each holds at least its min_idle idle workers, and
// as many as its demand (environments.Demand) asks for, within its max_total. A pool may
// start a worker only where the others' floors still fit under the global cap, so a burst
// on one never takes another's minimum; a new session that finds the cap reached takes the
// place of an idle worker another pool holds beyond its floor.

// pool is one environment's warm pool.
type pool struct {
	env    environments.Environment // resolved: every field set
	image  *runtime.Image           // nil in the unit tests
	limits api.Limits               // its sessions' default limits, every field set
	// fingerprint is what its workers are made from (image, limits, variables, seed, agent),
	// hashed: an idle worker of another fingerprint is not adopted after a restart.
	fingerprint string

	idle     []*worker // healthy workers no session has, longest idle first
	waiters  []*waiter // new sessions waiting for a worker being created
	creating int       // workers being created for it
	live     int       // its workers in Daemon.workers, idle or in a session
	warm     bool      // it has reached its floor once

	failures     int       // consecutive failed creations
	faults       int       // of which on what the image or the seed says (imageFault)
	backoffUntil time.Time // no refills before this, after failures

	// unavailable says why the pool serves no session ("": it does): its image cannot run
	// the agent, or its seed fails. It is tried again retryUnavailable after unavailableAt.
	unavailable   string
	unavailableAt time.Time
	// probing: its image's probe has not answered yet; the pool makes workers only for
	// sessions waiting meanwhile. languages are what the probe found (nil: all assumed).
	probing   bool
	languages []string

	demand *environments.Demand
}

func (p *pool) name() string { return p.env.Name }
func (p *pool) minIdle() int { return *p.env.MinIdle }
func (p *pool) busy() int    { return p.live - len(p.idle) }

// target is how many idle workers p should hold now: its demand, within its max_idle and
// max_total.
func (p *pool) target(now time.Time) int {
	return max(0, min(p.demand.Target(now, p.minIdle()), *p.env.MaxIdle, p.env.MaxTotal-p.busy()))
}

// waiter is a new session waiting for a worker while one is being created for it.
type waiter struct{ ch chan handout }

type handout struct {
	w   *worker
	err error
}

// poolOf is the pool of environment name (nil: none by that name).
func (d *Daemon) poolOf(name string) *pool {
	for _, p := range d.pools {
		if p.name() == name {
			return p
		}
	}
	return nil
}

// creatingLocked counts the workers being created in every pool.
func (d *Daemon) creatingLocked() int {
	n := 0
	for _, p := range d.pools {
		n += p.creating
	}
	return n
}

// headroomLocked is how many more workers p may start now: within its max_total, and
// within the global cap less what the other pools still need to reach their floors.
func (d *Daemon) headroomLocked(p *pool) int {
	reserved := 0
	for _, o := range d.pools {
		if o == p {
			continue
		}
		// Its sessions waiting with no creation started yet will have workers; then its
		// floor, which creations its waiters claim do not fill.
		unstarted := max(0, len(o.waiters)-o.creating)
		reserved += unstarted
		if o.unavailable == "" {
			short := o.minIdle() - len(o.idle) - max(0, o.creating-len(o.waiters))
			reserved += max(0, min(short, o.env.MaxTotal-o.live-o.creating-unstarted))
		}
	}
	global := d.cfg.MaxTotalWorkers - len(d.workers) - d.creatingLocked() - reserved
	return min(p.env.MaxTotal-p.live-p.creating, global)
}

func (d *Daemon) errAtCap(p *pool) error {
	detail := fmt.Sprintf("all workers are busy (max-total-workers is %d); retry later", d.cfg.MaxTotalWorkers)
	if p.live+p.creating >= p.env.MaxTotal && p.env.MaxTotal < d.cfg.MaxTotalWorkers { // its share, not the whole cap
		detail = fmt.Sprintf("environment %q runs its most workers (max_total %d); retry later", p.name(), p.env.MaxTotal)
	}
	return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter, Detail: detail}
}

func errUnavailable(p *pool) error {
	return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
		Detail: fmt.Sprintf("environment %q is unavailable: %s", p.name(), p.unavailable)}
}

// takeWorker takes a worker of environment env for a new session: an idle one at once;
// else, with room under the caps, the next one created; else a 503.
func (d *Daemon) takeWorker(ctx context.Context, env string) (*worker, error) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Busy, Detail: "codeboxd is shutting down", RetryAfter: retryAfter}
	}
	p := d.poolOf(env)
	if p == nil {
		// Only a session made before its environment left the configuration gets here,
		// once its worker is gone.
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Conflict,
			Detail: fmt.Sprintf("the session's environment %q is no longer configured: end the session and start one in another environment", env)}
	}
	if p.unavailable != "" {
		d.mu.Unlock()
		return nil, errUnavailable(p)
	}
	if !d.containerdUp() {
		// A worker handed out now could be neither released nor replaced until containerd is
		// back: sessions that have one keep running, new ones wait.
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "containerd is unreachable; new sessions can start once it is back (sessions with a worker keep running)"}
	}
	if len(p.idle) > 0 {
		w := p.idle[0] // the longest idle: the most often health-checked
		p.idle = p.idle[1:]
		p.demand.Observe(time.Now()) // sessions served are the demand (refusals are not)
		d.scheduleRefillLocked()
		d.mu.Unlock()
		return w, nil
	}
	// A creation no waiter has claimed yet can be this session's. Otherwise every waiter
	// becomes a worker, so waiters count against the caps like workers do. The waiter is
	// in the queue before room is made, so that the refill room triggers serves it first.
	wt := &waiter{ch: make(chan handout, 1)}
	p.waiters = append(p.waiters, wt)
	if need := len(p.waiters) - p.creating; need > 0 {
		if short := need - d.headroomLocked(p); short > 0 && !d.makeRoomLocked(p, short) {
			p.waiters = p.waiters[:len(p.waiters)-1]
			err := d.errAtCap(p)
			d.mu.Unlock()
			return nil, err
		}
	}
	d.refillLocked()
	d.mu.Unlock()

	select {
	case h := <-wt.ch:
		if h.w != nil {
			d.mu.Lock()
			p.demand.Observe(time.Now())
			d.scheduleRefillLocked() // the target may have risen
			d.mu.Unlock()
		}
		return h.w, h.err
	case <-ctx.Done():
		d.mu.Lock()
		defer d.mu.Unlock()
		if i := slices.Index(p.waiters, wt); i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
		} else if h := <-wt.ch; h.w != nil {
			d.parkLocked(p, h.w) // served just as it gave up: the worker is unused
		}
		return nil, &api.Problem{Kind: api.Busy, Detail: "request cancelled while waiting for a worker", Cause: ctx.Err()}
	}
}

// makeRoomLocked gives up n idle workers other pools hold beyond their floors, the
// fullest pool's first, so that p's waiting session gets a worker under the cap. It
// reports whether it made that much room; it gives up nothing unless it can.
func (d *Daemon) makeRoomLocked(p *pool, n int) bool {
	if p.live+p.creating+n > p.env.MaxTotal {
		return false // p's own share is the limit
	}
	surplus := 0
	for _, o := range d.pools {
		if o != p {
			surplus += max(0, len(o.idle)-o.minIdle())
		}
	}
	if surplus < n {
		return false
	}
	for ; n > 0; n-- {
		var from *pool
		for _, o := range d.pools {
			if o != p && len(o.idle) > o.minIdle() && (from == nil || len(o.idle)-o.minIdle() > len(from.idle)-from.minIdle()) {
				from = o
			}
		}
		w := from.idle[len(from.idle)-1] // the newest: the least checked
		d.giveUpLocked(w, fmt.Sprintf("its place went to a session of environment %q", p.name()))
	}
	return true
}

// assign gives session s (whose turn the caller holds) a worker from its environment's
// pool, recorded (see assignments) first, then fitted to the session's shape: its disk,
// its limits, its variables. A worker that cannot be fitted is given up.
func (d *Daemon) assign(ctx context.Context, s *session) error {
	if limit := d.cfg.MaxSessionsPerTenant; limit > 0 {
		d.mu.Lock()
		n := 0
		for k, o := range d.sessions {
			if k.tenant == s.key.tenant && o.worker != nil {
				n++
			}
		}
		d.mu.Unlock()
		if n >= limit {
			return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
				Detail: fmt.Sprintf("this key runs %d sessions, the most one key may (--max-sessions-per-tenant): end one first", n)}
		}
	}
	d.mu.Lock()
	sh := s.shape
	d.mu.Unlock()
	w, err := d.takeWorker(ctx, sh.environment)
	if err != nil {
		return err
	}
	if err := d.assigned.set(w.id, d.sessionRecord(s, sh)); err != nil {
		d.mu.Lock()
		d.giveUpLocked(w, "could not record its session")
		d.mu.Unlock()
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "could not start a worker", Cause: fmt.Errorf("assign worker %s: %w", w.id, err)}
	}
	if err := d.fit(ctx, w, sh, true); err != nil {
		d.giveUp(context.WithoutCancel(ctx), w, "could not be fitted to its session")
		var p *api.Problem
		if errors.As(err, &p) && (p.Kind == api.NotFound || p.Kind == api.Conflict) {
			return err // a snapshot gone meanwhile: the caller's to know
		}
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "could not prepare a worker for the session", Cause: err}
	}
	if err := d.mountVolumes(s, w, sh.volumes); err != nil {
		d.giveUp(context.WithoutCancel(ctx), w, "its volumes could not be mounted")
		return err
	}
	if len(sh.volumes) > 0 {
		d.mu.Lock()
		ended := d.sessions[s.key] != s || s.gone
		d.mu.Unlock()
		if ended { // it ended while its volumes were being mounted: their uses go with it
			d.vols.Release(s.key.owner())
		}
	}
	d.mu.Lock()
	// The policy as it is now, under the lock a PATCH changes it under: one that came while
	// the worker was being fitted is not lost.
	d.egress.Assign(workerAddr(w.ip), s.key.owner(), s.shape.network)
	s.worker = w
	d.mu.Unlock()
	return nil
}

// refillLocked starts creations, within the caps and the parallelism bound, in three
// rounds over the pools: for the sessions waiting, up to each pool's floor, up to each
// pool's target.
func (d *Daemon) refillLocked() {
	// Before Start, Recover may still be sweeping the leftovers of half-made workers, which
	// would take a creation's snapshot from under it (an adopted worker that exits asks
	// for a refill): the pools fill from Start on.
	if d.closing || d.started.IsZero() {
		return
	}
	if !d.containerdUp() {
		// Creations would fail: look again in a moment instead of backing off on errors.
		if !d.refillPending {
			d.refillPending = true
			time.AfterFunc(time.Second, func() {
				d.mu.Lock()
				d.refillPending = false
				d.refillLocked()
				d.mu.Unlock()
			})
		}
		return
	}
	now := time.Now()
	budget := maxParallelCreates - d.creatingLocked()
	for round := 0; round < 3 && budget > 0; round++ {
		for _, p := range d.pools {
			if p.unavailable != "" {
				continue
			}
			if len(p.waiters) == 0 && now.Before(p.backoffUntil) {
				continue // creations keep failing: the pool waits; a waiting session still tries
			}
			if p.probing && round > 0 {
				continue // its floor and target wait for its image's probe
			}
			want := len(p.waiters) - len(p.idle) - p.creating
			switch round {
			case 1:
				want += p.minIdle()
			case 2:
				want += p.target(now)
			}
			n := min(want, d.headroomLocked(p), budget)
			for i := 0; i < n; i++ {
				p.creating++
				budget--
				d.wg.Add(1)
				go d.createForPool(p)
			}
		}
	}
	d.updateInitializing()
}

// scheduleRefillLocked refills a moment later: a worker start takes both cores for a
// while, and the session that just took a worker should run its first call first.
func (d *Daemon) scheduleRefillLocked() {
	if d.refillPending {
		return
	}
	d.refillPending = true
	time.AfterFunc(refillDelay, func() {
		d.mu.Lock()
		d.refillPending = false
		d.refillLocked()
		d.mu.Unlock()
	})
}

func (d *Daemon) refill() {
	d.mu.Lock()
	d.refillLocked()
	d.mu.Unlock()
}

// containerdUp reports whether containerd serves, as far as the runtime knows.
func (d *Daemon) containerdUp() bool {
	up, _ := d.rt.Available()
	return up
}

// updateInitializing clears is_initializing once every pool that serves has reached its
// floor.
func (d *Daemon) updateInitializing() {
	if !d.initializing {
		return
	}
	for _, p := range d.pools {
		if !p.warm && len(p.idle) >= p.minIdle() {
			p.warm = true
		}
		if !p.warm && p.unavailable == "" {
			return
		}
	}
	d.initializing = false
	d.log.Info("pools warm", "idle", d.idleLocked(), "warm_ms", ms(time.Since(d.started)))
}

// idleLocked counts the idle workers of every pool.
func (d *Daemon) idleLocked() int {
	n := 0
	for _, p := range d.pools {
		n += len(p.idle)
	}
	return n
}

func (d *Daemon) createForPool(p *pool) {
	defer d.wg.Done()
	ctx, cancel := context.WithTimeout(d.bg, createTimeout)
	w, err := d.createWorker(ctx, p)
	cancel()
	if err == nil {
		// Recorded before it can serve anyone: a worker without a record is destroyed by
		// the next codeboxd.
		if rerr := d.assigned.set(w.id, record{State: stateIdle}); rerr != nil {
			d.giveUp(context.WithoutCancel(ctx), w, "could not record it")
			w, err = nil, fmt.Errorf("record worker %s: %w", w.id, rerr)
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	p.creating--
	if err != nil {
		if why := imageFault(err); why != "" && !d.closing {
			if p.faults++; p.faults >= faultsToUnavailable {
				d.markUnavailableLocked(p, why)
				return
			}
		} else {
			p.faults = 0
		}
		p.failures++
		backoff := min(time.Duration(1<<min(p.failures, 10))*100*time.Millisecond, maxBackoff)
		p.backoffUntil = time.Now().Add(backoff)
		if !d.closing {
			d.log.Error("worker create failed", "environment", p.name(), "err", err, "failures", p.failures, "retry_in", backoff)
			time.AfterFunc(backoff, d.refill)
		}
		if len(p.waiters) > 0 {
			wt := p.waiters[0]
			p.waiters = p.waiters[1:]
			detail := "could not start a worker"
			if why := imageFault(err); why != "" {
				detail += " of environment " + strconv.Quote(p.name()) + ": " + why
			}
			wt.ch <- handout{err: &api.Problem{Kind: api.Busy, RetryAfter: retryAfter, Detail: detail, Cause: err}}
		}
		return
	}
	p.failures, p.faults = 0, 0
	if d.closing {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.giveUp(context.Background(), w, "made while codeboxd stops") }()
		return
	}
	d.workers[w.id] = w
	p.live++
	if len(p.waiters) > 0 {
		wt := p.waiters[0]
		p.waiters = p.waiters[1:]
		wt.ch <- handout{w: w}
	} else {
		d.parkLocked(p, w)
	}
	d.refillLocked()
}

// parkLocked puts w, registered and unused, in p's idle list, or gives it up when p was
// taken out of service meanwhile (no session could take it there).
func (d *Daemon) parkLocked(p *pool, w *worker) {
	if p.unavailable != "" {
		d.giveUpLocked(w, "its environment is unavailable")
		return
	}
	p.idle = append(p.idle, w)
}

// imageFault says what a failed creation says of its environment's image (or seed) that
// every creation would meet again; "" for a failure worth retrying.
func imageFault(err error) string {
	var exit *agentExit
	if errors.As(err, &exit) {
		if why, ok := agent.BootFailure(exit.code); ok {
			return "its image cannot run the agent: " + why
		}
	}
	if errors.Is(err, agent.ErrSeedFailed) || errors.Is(err, errSeedTimeout) {
		return err.Error() // "its python seed raised …"
	}
	return ""
}

// markUnavailableLocked takes p out of service for why: its waiting sessions get a 503
// saying so, and so does every new session of it until codeboxd restarts; its idle workers
// are given up. Other environments serve on.
func (d *Daemon) markUnavailableLocked(p *pool, why string) {
	if p.unavailable != "" {
		return
	}
	p.unavailable, p.unavailableAt = why, time.Now()
	d.log.Error("environment unavailable", "environment", p.name(), "image", p.env.Image, "reason", why,
		"retry_in", retryUnavailable)
	for _, wt := range p.waiters {
		wt.ch <- handout{err: errUnavailable(p)}
	}
	p.waiters = nil
	for _, w := range slices.Clone(p.idle) {
		d.giveUpLocked(w, "its environment is unavailable")
	}
	d.updateInitializing()
}

// onExit is called when a worker's task ends. An idle worker is replaced at once; a
// session's worker is dealt with by the session's next call, which knows whether the
// kernel died in its code (and restarts it) or the worker was lost.
func (d *Daemon) onExit(w *worker, in *instance) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A worker being made is in no pool yet (and its creation writes w.current unlocked).
	if !d.isIdleLocked(w) || w.current != in {
		return
	}
	d.giveUpLocked(w, "task exited while idle")
}

// isIdleLocked reports whether w is in its pool's idle list.
func (d *Daemon) isIdleLocked(w *worker) bool {
	p := d.poolOf(w.env)
	return p != nil && slices.Contains(p.idle, w)
}

// maintain health-checks idle workers, trims pools above their target and recycles
// sessions left unused, until Close.
func (d *Daemon) maintain() {
	defer d.wg.Done()
	health := time.NewTicker(healthInterval)
	defer health.Stop()
	recycle := time.NewTicker(d.cfg.RecycleInterval)
	defer recycle.Stop()
	for {
		select {
		case <-d.bg.Done():
			return
		case <-health.C:
			d.checkIdle()
			d.trim()
			d.retryUnavailable()
			d.retryGraveyard()
		case <-recycle.C:
			d.sweepExpired()
		}
	}
}

// checkIdle replaces idle workers whose kernel no longer executes code.
func (d *Daemon) checkIdle() {
	d.mu.Lock()
	var idle []*worker
	for _, p := range d.pools {
		idle = append(idle, p.idle...)
	}
	lives := make([]*instance, len(idle))
	for i, w := range idle {
		lives[i] = w.current
	}
	d.mu.Unlock()
	for i, w := range idle {
		ctx, cancel := context.WithTimeout(d.bg, healthTimeout)
		err := lives[i].agent.Check(ctx)
		cancel()
		if err == nil || d.bg.Err() != nil {
			continue
		}
		d.mu.Lock()
		if d.isIdleLocked(w) {
			d.giveUpLocked(w, "health check failed: "+err.Error())
		}
		d.mu.Unlock()
	}
}

// retryUnavailable puts environments back in service retryUnavailable after they were
// taken out: the operator may have fixed the image, or the trouble passed. What failed
// fails again as many times before it is out again.
func (d *Daemon) retryUnavailable() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.pools {
		if p.unavailable != "" && time.Since(p.unavailableAt) >= retryUnavailable {
			d.log.Info("environment tried again", "environment", p.name(), "was", p.unavailable)
			p.unavailable, p.faults, p.failures, p.backoffUntil = "", 0, 0, time.Time{}
		}
	}
	d.refillLocked()
}

// trim gives up the idle workers a pool holds beyond its target, once demand has fallen:
// the newest first, the longest idle (the most checked) stay.
func (d *Daemon) trim() {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for _, p := range d.pools {
		for extra := len(p.idle) - p.target(now); extra > 0; extra-- {
			d.giveUpLocked(p.idle[len(p.idle)-1], "idle beyond its pool's target")
		}
	}
}
