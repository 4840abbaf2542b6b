package daemon

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/codebox/codebox/api"
)

const (
	// maxParallelCreates bounds worker starts in flight: on a small host, starts in
	// parallel beyond a few only slow each other down.
	maxParallelCreates = 4
	// createTimeout bounds one worker start.
	createTimeout = 2 * time.Minute
	// healthInterval is how often idle workers are checked.
	healthInterval = 30 * time.Second
	healthTimeout  = 5 * time.Second
	maxBackoff     = 30 * time.Second
	// refillDelay is how long a refill waits after a session took an idle worker.
	refillDelay = 100 * time.Millisecond
)

// The pool: idle workers ready for new sessions, and the sessions waiting for one.
// Everything here is guarded by Daemon.mu. Workers are created outside the lock, so a slow
// start never delays calls of existing sessions.

// waiter is a new session waiting for a worker while one is being created for it.
type waiter struct{ ch chan handout }

type handout struct {
	w   *worker
	err error
}

func errAtCap(max int) error {
	return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
		Detail: fmt.Sprintf("all workers are busy (max-total-workers is %d); retry later", max)}
}

// takeWorker takes a worker for a new session: an idle one at once; else, with room under the
// cap, the next one created; else a 503.
func (d *Daemon) takeWorker(ctx context.Context) (*worker, error) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Busy, Detail: "codeboxd is shutting down", RetryAfter: retryAfter}
	}
	if !d.containerdUp() {
		// A worker handed out now could be neither released nor replaced until containerd is
		// back: sessions that have one keep running, new ones wait.
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "containerd is unreachable; new sessions can start once it is back (sessions with a worker keep running)"}
	}
	if len(d.idle) > 0 {
		w := d.idle[0] // the longest idle: the most often health-checked
		d.idle = d.idle[1:]
		d.scheduleRefillLocked()
		d.mu.Unlock()
		return w, nil
	}
	// A creation no waiter has claimed yet can be this session's. Otherwise every waiter
	// becomes a worker, so waiters count against the cap like workers do.
	unclaimed := d.creating - len(d.waiters)
	if unclaimed <= 0 && len(d.workers)+len(d.waiters) >= d.cfg.MaxTotalWorkers {
		d.mu.Unlock()
		return nil, errAtCap(d.cfg.MaxTotalWorkers)
	}
	wt := &waiter{ch: make(chan handout, 1)}
	d.waiters = append(d.waiters, wt)
	d.refillLocked()
	d.mu.Unlock()

	select {
	case h := <-wt.ch:
		return h.w, h.err
	case <-ctx.Done():
		d.mu.Lock()
		defer d.mu.Unlock()
		if i := slices.Index(d.waiters, wt); i >= 0 {
			d.waiters = slices.Delete(d.waiters, i, i+1)
		} else if h := <-wt.ch; h.w != nil {
			d.idle = append(d.idle, h.w) // served just as it gave up: the worker is unused
		}
		return nil, &api.Problem{Kind: api.Busy, Detail: "request cancelled while waiting for a worker", Cause: ctx.Err()}
	}
}

// assign gives session s (whose turn the caller holds) a worker from the pool, recorded
// (see assignments) first, then fitted to the session's shape: its disk, its limits, its
// environment. A worker that cannot be fitted is given up.
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
	w, err := d.takeWorker(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	sh := s.shape
	d.mu.Unlock()
	if err := d.assigned.set(w.id, d.sessionRecord(s, sh)); err != nil {
		d.mu.Lock()
		d.giveUpLocked(w, "could not record its session")
		d.mu.Unlock()
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "could not start a worker", Cause: fmt.Errorf("assign worker %s: %w", w.id, err)}
	}
	if err := d.fit(ctx, w, sh, true); err != nil {
		d.giveUp(context.WithoutCancel(ctx), w, "could not be fitted to its session")
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "could not prepare a worker for the session", Cause: err}
	}
	d.mu.Lock()
	s.worker = w
	d.mu.Unlock()
	return nil
}

// refillLocked starts creations until idle + creating covers min-idle-workers plus the
// waiting sessions, within the cap and the parallelism bound.
func (d *Daemon) refillLocked() {
	// Before Start, Recover may still be sweeping the leftovers of half-made workers, which
	// would take a creation's snapshot from under it (an adopted worker that exits asks
	// for a refill): the pool fills from Start on.
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
	want := d.cfg.MinIdleWorkers + len(d.waiters) - len(d.idle) - d.creating
	if len(d.waiters) == 0 && time.Now().Before(d.backoffUntil) {
		return // creations keep failing: the pool waits; a waiting session still tries
	}
	n := min(want, d.cfg.MaxTotalWorkers-len(d.workers)-d.creating, maxParallelCreates-d.creating)
	for i := 0; i < n; i++ {
		d.creating++
		d.wg.Add(1)
		go d.createForPool()
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

// updateInitializing clears is_initializing once the pre-warm has reached min idle.
func (d *Daemon) updateInitializing() {
	if d.initializing && len(d.idle) >= d.cfg.MinIdleWorkers {
		d.initializing = false
		d.log.Info("pool warm", "idle", len(d.idle), "warm_ms", ms(time.Since(d.started)))
	}
}

func (d *Daemon) createForPool() {
	defer d.wg.Done()
	ctx, cancel := context.WithTimeout(d.bg, createTimeout)
	w, err := d.createWorker(ctx)
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
	d.creating--
	if err != nil {
		d.failures++
		backoff := min(time.Duration(1<<min(d.failures, 10))*100*time.Millisecond, maxBackoff)
		d.backoffUntil = time.Now().Add(backoff)
		if !d.closing {
			d.log.Error("worker create failed", "err", err, "failures", d.failures, "retry_in", backoff)
			time.AfterFunc(backoff, d.refill)
		}
		if len(d.waiters) > 0 {
			wt := d.waiters[0]
			d.waiters = d.waiters[1:]
			wt.ch <- handout{err: &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
				Detail: "could not start a worker", Cause: err}}
		}
		return
	}
	d.failures = 0
	if d.closing {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.giveUp(context.Background(), w, "made while codeboxd stops") }()
		return
	}
	d.workers[w.id] = w
	if len(d.waiters) > 0 {
		wt := d.waiters[0]
		d.waiters = d.waiters[1:]
		wt.ch <- handout{w: w}
	} else {
		d.idle = append(d.idle, w)
	}
	d.refillLocked()
}

// onExit is called when a worker's task ends. An idle worker is replaced at once; a
// session's worker is dealt with by the session's next call, which knows whether the
// kernel died in its code (and restarts it) or the worker was lost.
func (d *Daemon) onExit(w *worker, in *instance) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w.current != in || !slices.Contains(d.idle, w) {
		return
	}
	d.giveUpLocked(w, "task exited while idle")
}

// maintain health-checks idle workers and recycles sessions left unused, until Close.
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
			d.retryGraveyard()
		case <-recycle.C:
			d.sweepExpired()
		}
	}
}

// checkIdle replaces idle workers whose kernel no longer executes code.
func (d *Daemon) checkIdle() {
	d.mu.Lock()
	idle := slices.Clone(d.idle)
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
		if slices.Contains(d.idle, w) {
			d.giveUpLocked(w, "health check failed: "+err.Error())
		}
		d.mu.Unlock()
	}
}
