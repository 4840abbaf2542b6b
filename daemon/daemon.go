// Package daemon owns codeboxd's sessions and workers: which worker serves which
// user_uuid, how calls of one session are ordered, how workers are created, health-checked
// and destroyed, and how a call that times out or loses its worker is answered. It builds
// workers from runtime (containerd), netns (network) and kernel (the agent's protocol), and
// implements api.Backend.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
	"github.com/containerd/containerd/v2/client"
)

// Daemon serves sessions from workers.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	rt    *runtime.Runtime
	net   *netns.Network
	image client.Image

	initializing atomic.Bool

	mu       sync.Mutex
	sessions map[string]*session
	workers  map[string]*worker // every live worker
	creating int                // workers being created (counted against the cap)
}

// New returns a daemon serving from the given runtime and network. Workers left by an
// earlier run are destroyed first.
func New(ctx context.Context, cfg Config, log *slog.Logger, rt *runtime.Runtime, net *netns.Network, image client.Image) (*Daemon, error) {
	for _, dir := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "logs")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	d := &Daemon{
		cfg: cfg, log: log, rt: rt, net: net, image: image,
		sessions: map[string]*session{},
		workers:  map[string]*worker{},
	}
	if err := d.removeLeftovers(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// removeLeftovers destroys the workers an earlier codeboxd left in containerd, with their
// networks and logs.
func (d *Daemon) removeLeftovers(ctx context.Context) error {
	managed, err := d.rt.Managed(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for id, labels := range managed {
		logPath := filepath.Join(d.cfg.StateDir, "logs", id+".log")
		if err := d.destroyResources(ctx, id, labels[labelNetNS], logPath); err != nil {
			errs = append(errs, err)
			continue
		}
		d.log.Info("leftover worker removed", "worker", id)
	}
	return errors.Join(errs...)
}

// Close destroys every worker.
func (d *Daemon) Close(ctx context.Context) error {
	d.mu.Lock()
	ws := make([]*worker, 0, len(d.workers))
	for _, w := range d.workers {
		ws = append(ws, w)
	}
	d.workers = map[string]*worker{}
	d.sessions = map[string]*session{}
	d.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.destroyWorker(ctx, w)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Ping implements api.Backend.
func (d *Daemon) Ping(ctx context.Context) error { return d.rt.Ping(ctx) }

// Status implements api.Backend.
func (d *Daemon) Status() api.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	busy := 0
	for _, s := range d.sessions {
		if s.hasWorker.Load() {
			busy++
		}
	}
	return api.Status{
		TotalWorkers:      len(d.workers) + d.creating,
		BusyWorkers:       busy,
		IdleWorkers:       0,
		CreatingWorkers:   d.creating,
		MinIdleWorkers:    d.cfg.MinIdleWorkers,
		MaxTotalWorkers:   d.cfg.MaxTotalWorkers,
		IsInitializing:    d.initializing.Load(),
		IdleWorkersInPool: 0,
	}
}

// reserve counts a worker about to be created against the cap; false when at the cap.
func (d *Daemon) reserve() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.workers)+d.creating >= d.cfg.MaxTotalWorkers {
		return false
	}
	d.creating++
	return true
}

// created ends a reservation, registering w when creation succeeded.
func (d *Daemon) created(w *worker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.creating--
	if w != nil {
		d.workers[w.id] = w
	}
}

// forget unregisters w and destroys it.
func (d *Daemon) forget(ctx context.Context, w *worker) {
	d.mu.Lock()
	delete(d.workers, w.id)
	d.mu.Unlock()
	d.destroyWorker(ctx, w)
}
