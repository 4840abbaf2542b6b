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
	"github.com/codebox/codebox/blockdev"
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
	disks *blockdev.Store
	image client.Image

	initializing atomic.Bool

	mu       sync.Mutex
	sessions map[string]*session
	workers  map[string]*worker // every live worker
	creating int                // workers being created (counted against the cap)
}

// Deps are the parts a daemon builds workers from.
type Deps struct {
	Runtime *runtime.Runtime
	Network *netns.Network
	Image   client.Image // nil for a daemon that only cleans up
}

// New returns a daemon serving from deps. Workers left by an earlier run are destroyed
// first.
func New(ctx context.Context, cfg Config, log *slog.Logger, deps Deps) (*Daemon, error) {
	for _, dir := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "logs")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	disks, err := blockdev.NewStore(cfg.StateDir, runtime.SandboxUID)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg: cfg, log: log, rt: deps.Runtime, net: deps.Network, disks: disks, image: deps.Image,
		sessions: map[string]*session{},
		workers:  map[string]*worker{},
	}
	if err := d.RemoveLeftovers(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// RemoveLeftovers destroys what an earlier codeboxd left: its containers (with their
// networks, disks and logs), and disks, network namespaces and CNI allocations that belong
// to no container.
func (d *Daemon) RemoveLeftovers(ctx context.Context) error {
	managed, err := d.rt.Managed(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for id, labels := range managed {
		if err := d.destroyResources(ctx, id, labels[labelNetNS], d.logPath(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		d.log.Info("leftover worker removed", "worker", id)
	}
	ids, err := d.disks.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if err := d.disks.Remove(id); err != nil {
			errs = append(errs, err)
		} else {
			d.log.Info("leftover disk removed", "worker", id)
		}
	}
	removed, err := d.net.Sweep(ctx, nil)
	for _, what := range removed {
		d.log.Info("leftover network state removed", "what", what)
	}
	errs = append(errs, err)
	logs, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "logs", "*.log"))
	for _, l := range logs {
		os.Remove(l)
	}
	return errors.Join(errs...)
}

func (d *Daemon) logPath(id string) string {
	return filepath.Join(d.cfg.StateDir, "logs", id+".log")
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
