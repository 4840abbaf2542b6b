package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/codebox/codebox/api"
)

// adoptTimeout bounds how long an adopted worker's kernel may take to answer (see
// timings.busyAfter).
const (
	adoptTimeout = 10 * time.Second
	// parallelAdoptions bounds the workers taken over at once: they are independent, and
	// one after the other a restart would take as long as all their answers.
	parallelAdoptions = 8
)

// Recover takes over the workers an earlier codeboxd left running: healthy ones rejoin
// their session (with its kernel state and files) or the idle pool; broken ones are
// destroyed; disks, namespaces, CNI allocations and logs of no live worker are removed.
// Call it before Start.
func (d *Daemon) Recover(ctx context.Context) error {
	managed, err := d.rt.Managed(ctx)
	if err != nil {
		return err
	}
	alive := map[string]string{}
	var errs []error
	type adoption struct {
		w   *worker
		err error
	}
	results := make(map[string]*adoption, len(managed))
	var wg sync.WaitGroup
	slots := make(chan struct{}, parallelAdoptions)
	for id, labels := range managed {
		a := &adoption{}
		results[id] = a
		rec, known := d.assigned.get(id)
		switch {
		case !known:
			a.err = errors.New("no record of it: it may have served a session")
		case rec.State == stateRetired:
			a.err = errors.New("it was retired")
		case rec.State != stateIdle && rec.State != stateSession:
			a.err = fmt.Errorf("unknown recorded state %q", rec.State)
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				slots <- struct{}{}
				defer func() { <-slots }()
				a.w, a.err = d.adopt(ctx, id, labels, rec.State == stateSession)
			}()
		}
	}
	wg.Wait()
	for id, labels := range managed {
		rec, _ := d.assigned.get(id)
		w, err := results[id].w, results[id].err
		if err != nil {
			if rec.State == stateSession {
				d.endRecorded(id, rec, api.EndWorkerLost)
			}
			d.log.Warn("worker not adopted; destroying it", "worker", id, "err", err)
			l := ParseLabels(labels)
			w := &worker{id: id, nsPath: l.NetNS, logPath: d.logPath(id), uidBase: l.UIDBase}
			d.mu.Lock()
			d.uidRanges[w.uidBase] = true
			d.mu.Unlock()
			if !d.giveUp(ctx, w, "not adopted") {
				// Retried by the maintenance loop, and by the next start: its record says
				// retired, and its resources are not swept from under it meanwhile.
				alive[id] = w.nsPath
			}
			continue
		}
		alive[id] = w.nsPath
		sh := d.recordShape(rec)
		d.mu.Lock()
		d.workers[id] = w
		d.uidRanges[w.uidBase] = true
		p := d.poolOf(w.env) // nil: a session of an environment no longer configured
		if p != nil {
			p.live++
		}
		if rec.State == stateSession {
			s := newSession(recordKey(rec), sh)
			s.worker = w
			d.egress.Assign(workerAddr(w.ip), s.key.owner(), sh.network)
			d.sessions[s.key] = s
			if s.shape.token != ([32]byte{}) {
				d.tokens[s.shape.token] = s.key
			}
			d.armExpiryLocked(s)
		} else {
			p.idle = append(p.idle, w)
		}
		d.mu.Unlock()
		d.log.Info("worker adopted", "worker", id, "environment", w.env, "state", rec.State)
	}
	// Sessions whose worker is not there at all: the host restarted (or someone removed
	// the container).
	for _, id := range d.assigned.ids() {
		if rec, _ := d.assigned.get(id); rec.State == stateSession {
			if _, ok := managed[id]; !ok {
				d.endRecorded(id, rec, api.EndHostRestart)
			}
		}
	}
	d.mu.Lock()
	live := map[string]bool{}
	for k := range d.sessions {
		live[k.owner()] = true
	}
	d.mu.Unlock()
	d.vols.Keep(func(owner string) bool { return live[owner] })
	errs = append(errs, d.assigned.keep(alive))
	return errors.Join(append(errs, d.sweep(ctx, alive))...)
}

// recordKey is the session a worker's record names.
func recordKey(rec record) sessionKey {
	tenant := rec.Tenant
	if tenant == "" {
		tenant = api.DefaultTenant
	}
	return sessionKey{tenant: tenant, id: rec.User}
}

// recordShape is the shape a worker's record gives its session: the default shape for a
// record of a codeboxd before sessions had one.
func (d *Daemon) recordShape(rec record) shape {
	if rec.Shape == nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.defaultShapeLocked(time.Now())
	}
	return rec.Shape.shape()
}

// endRecorded remembers that the session of worker id's record ended for reason, found so
// at start.
func (d *Daemon) endRecorded(id string, rec record, reason string) {
	key, sh := recordKey(rec), d.recordShape(rec)
	d.ended.put(endedSession{Tenant: key.tenant, ID: key.id, Reason: reason, At: time.Now(), WorkerID: id,
		Environment: sh.environment, Limits: sh.limits, Metadata: sh.metadata, CreatedAt: sh.created})
	d.metrics.sessionsEnded.WithLabelValues(reason).Inc()
	d.log.Info("session ended", "tenant", key.tenant, "session", key.id, "reason", reason, "worker", id)
}

// adopt attaches to worker id's running task and proves its kernel answers; a session's
// worker must have its disk mounted, an idle one has none yet.
func (d *Daemon) adopt(ctx context.Context, id string, labels map[string]string, session bool) (*worker, error) {
	a, err := d.rt.Adopt(ctx, id)
	if err != nil {
		return nil, err
	}
	l := ParseLabels(labels)
	w := &worker{id: id, ip: l.IP, nsPath: l.NetNS, logPath: d.logPath(id), created: a.created, uidBase: l.UIDBase, env: l.Environment}
	if !session {
		// An idle worker joins its environment's pool only as that environment is now: its
		// image, limits, variables, seed and agent.
		d.mu.Lock()
		p := d.poolOf(w.env)
		var now string
		if p != nil {
			now = p.fingerprint
		}
		d.mu.Unlock()
		switch {
		case p == nil:
			return nil, fmt.Errorf("its environment %q is no longer configured", w.env)
		case l.Fingerprint != now:
			return nil, fmt.Errorf("made for environment %q as it was (%s); it is now %s", w.env, l.Fingerprint, now)
		}
	}
	for _, kv := range a.env {
		if v, ok := strings.CutPrefix(kv, AgentTokenEnv+"="); ok {
			w.token = v
		}
	}
	switch {
	case w.ip == nil || w.nsPath == "":
		return nil, errors.New("no network labels")
	case w.token == "":
		return nil, errors.New("no agent token in its spec")
	case session && !d.disks.Mounted(id):
		return nil, errors.New("its disk is not mounted")
	}
	if session {
		d.disks.Thaw(id) // a snapshot a stop cut short would leave its disk frozen
	}
	deadline := time.Now().Add(adoptTimeout)
	in := d.watch(w, a.task)
	first, cancel := context.WithTimeout(ctx, d.timings.busyAfter)
	err = d.dial(first, w, in)
	cancel()
	if err != nil && !errors.Is(err, errAgentExited) {
		// A call the earlier codeboxd left may still run: interrupt it, as its timeout
		// would have, and ask again.
		d.log.Info("adopted worker does not answer; interrupting what it runs", "worker", id)
		if serr := a.task.Signal(syscall.SIGINT); serr != nil {
			return nil, errors.Join(err, serr)
		}
		rest, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		err = d.dial(rest, w, in)
	}
	if err != nil {
		return nil, err
	}
	w.current = in
	return w, nil
}

// Cleanup removes what codeboxd left on the host: containers whose task is not running
// (with all: every container), then disks, namespaces, CNI allocations and logs of no
// remaining container. It returns how many workers remain.
func (d *Daemon) Cleanup(ctx context.Context, all bool) (int, error) {
	managed, err := d.rt.Managed(ctx)
	if err != nil {
		return 0, err
	}
	alive := map[string]string{}
	var errs []error
	for id, labels := range managed {
		if !all {
			running, err := d.rt.Running(ctx, id)
			if err != nil {
				errs = append(errs, err)
			}
			if running {
				alive[id] = ParseLabels(labels).NetNS
				continue
			}
		}
		if err := d.destroyResources(ctx, id, ParseLabels(labels).NetNS, d.logPath(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		d.log.Info("worker removed", "worker", id)
	}
	errs = append(errs, d.sweep(ctx, alive), d.assigned.keep(alive))
	if len(alive) == 0 {
		errs = append(errs, d.vols.Close(), d.disks.Close())
	}
	return len(alive), errors.Join(errs...)
}

// sweep removes disks, network state and logs that belong to no worker in alive (id →
// netns path), and the leases, snapshots and shims of workers whose making was cut short.
// It runs while no worker is being made: before the pool starts, or with codeboxd stopped.
func (d *Daemon) sweep(ctx context.Context, alive map[string]string) error {
	var errs []error
	orphans, err := d.rt.RemoveOrphans(ctx)
	for _, what := range orphans {
		d.log.Info("leftover container state removed", "what", what)
	}
	errs = append(errs, err)
	ids, err := d.disks.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if _, ok := alive[id]; ok {
			continue
		}
		if err := d.disks.Remove(id); err != nil {
			errs = append(errs, err)
		} else {
			d.log.Info("leftover disk removed", "worker", id)
		}
	}
	removed, err := d.net.Sweep(ctx, alive)
	for _, what := range removed {
		d.log.Info("leftover network state removed", "what", what)
	}
	errs = append(errs, err)
	logs, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "logs", "*.log*"))
	for _, l := range logs {
		id, _, _ := strings.Cut(filepath.Base(l), ".log")
		if _, ok := alive[id]; !ok {
			if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
