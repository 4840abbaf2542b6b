package daemon

import (
	"context"
	"slices"
)

// Giving a worker up: every path that ends a worker for good (a released or recycled
// session, a failed health check, a kernel that ignored its interrupt, a creation cut short,
// a worker an earlier codeboxd left that cannot be adopted, a stop with --destroy-on-stop)
// goes through giveUp, so each worker is ended the same way:
//
//  1. recorded retired in sessions.json, so that no later codeboxd adopts it even if what
//     follows fails (another session's variables and files may be in it);
//  2. unregistered: out of the live workers and its pool, which refills;
//  3. destroyed, each step tolerating what is already gone;
//  4. then its record forgotten and its host uid range freed — or, when the destruction
//     failed, parked in the graveyard, where the maintenance loop tries again.

// giveUp ends w for good (see above) and reports whether its destruction succeeded.
func (d *Daemon) giveUp(ctx context.Context, w *worker, why string) bool {
	d.recordRetired(w)
	d.mu.Lock()
	d.unregisterLocked(w)
	d.mu.Unlock()
	d.log.Info("worker given up", "worker", w.id, "reason", why)
	return d.finish(ctx, w)
}

// giveUpLocked is giveUp for a caller holding d.mu: w is unregistered at once, the rest
// happens in the background.
func (d *Daemon) giveUpLocked(w *worker, why string) {
	if !d.unregisterLocked(w) {
		return // given up already
	}
	d.log.Warn("worker given up", "worker", w.id, "reason", why)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.recordRetired(w)
		d.finish(context.Background(), w)
	}()
}

func (d *Daemon) recordRetired(w *worker) {
	if err := d.assigned.set(w.id, record{State: stateRetired}); err != nil {
		d.log.Error("could not record a worker retired", "worker", w.id, "err", err)
	}
}

// unregisterLocked takes w out of the live workers and the idle pool, and refills the pool.
// It reports whether w was registered.
func (d *Daemon) unregisterLocked(w *worker) bool {
	if _, ok := d.workers[w.id]; !ok {
		return false
	}
	delete(d.workers, w.id)
	if p := d.poolOf(w.env); p != nil {
		p.live--
		if i := slices.Index(p.idle, w); i >= 0 {
			p.idle = slices.Delete(p.idle, i, i+1)
		}
	}
	d.refillLocked()
	return true
}

// finish destroys w; then forgets its record and frees its uid range, or parks it in the
// graveyard when the destruction failed.
func (d *Daemon) finish(ctx context.Context, w *worker) bool {
	if err := d.destroyWorker(ctx, w); err != nil {
		d.mu.Lock()
		d.graveyard[w.id] = w
		d.mu.Unlock()
		return false
	}
	d.mu.Lock()
	delete(d.graveyard, w.id)
	delete(d.uidRanges, w.uidBase)
	d.mu.Unlock()
	if err := d.assigned.forget(w.id); err != nil {
		d.log.Warn("session record", "err", err)
	}
	return true
}

// retryGraveyard tries again to destroy the workers whose destruction failed.
func (d *Daemon) retryGraveyard() {
	d.mu.Lock()
	ws := make([]*worker, 0, len(d.graveyard))
	for _, w := range d.graveyard {
		ws = append(ws, w)
	}
	d.mu.Unlock()
	for _, w := range ws {
		if d.bg.Err() != nil {
			return
		}
		d.finish(d.bg, w)
	}
}
