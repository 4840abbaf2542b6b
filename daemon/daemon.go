// Package daemon owns codeboxd's sessions and workers: the environments' warm pools
// (pool.go, environments.go), which worker serves which session and in what order its
// calls run (session.go), how workers are created, seeded, health-checked, restarted and
// destroyed (worker.go), and how a call that times out or loses its worker is answered. It builds workers from runtime (containerd),
// netns (network), blockdev (disk) and kernel (the agent's protocol), and implements
// api.Backend.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/blockdev"
	"github.com/codebox/codebox/egress"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/snapshots"
	"github.com/codebox/codebox/transfer"
	"github.com/codebox/codebox/volumes"
)

// Daemon serves sessions from a pool of workers.
type Daemon struct {
	snaps      *snapshots.Store // the sessions' disks at an instant (snapshots.go)
	vols       *volumes.Store   // named volumes (volumes.go)
	cfg        Config
	collectors []prometheus.Collector // metrics of the parts beside it
	log        *slog.Logger
	rt         containers
	net        network
	disks      disks
	dialer     dialAgentFunc
	egress     egressPolicy // what each session's worker may reach (network.go)
	xfer       *transfer.Client
	metrics    *metrics
	assigned   *assignments // which session each worker serves, for restarts
	// transfers bounds file downloads and uploads in flight across all requests.
	transfers chan struct{}

	timings timings

	bg      context.Context // ends at Close: stops creations and maintenance
	stop    context.CancelFunc
	wg      sync.WaitGroup // background work: creations, destroys, maintenance
	started time.Time

	pingMu  sync.Mutex
	pingAt  time.Time
	pingErr error

	// ended remembers why sessions ended (ended.go).
	ended *endedStore

	mu            sync.Mutex
	sessions      map[sessionKey]*session
	tokens        map[[32]byte]sessionKey // sessions' access tokens (their sha256)
	workers       map[string]*worker      // every live worker, idle or in a session
	graveyard     map[string]*worker      // retired workers whose destruction failed, retried
	uidRanges     map[uint32]bool         // host uid ranges of workers that exist (see takeUIDRange)
	pools         []*pool                 // one per environment, the default's first (pool.go)
	initializing  bool                    // the pre-warm has not reached every floor yet
	closing       bool
	refillPending bool // a delayed refill is scheduled
}

// Deps are the parts a daemon builds workers from.
type Deps struct {
	Runtime *runtime.Runtime
	Network *netns.Network
	// Images are the environments' images, by environment name (none for a daemon that
	// only cleans up).
	Images map[string]*runtime.Image
	// Egress decides the workers' network traffic (nil for a daemon that only cleans up).
	Egress *egress.Server
	// Collectors are the metrics of what cmd wires beside the daemon (the package cache).
	Collectors []prometheus.Collector
}

// New returns a daemon serving from deps. Recover takes over what an earlier run left;
// Start begins the pre-warm.
func New(cfg Config, log *slog.Logger, deps Deps) (*Daemon, error) {
	store, err := blockdev.NewStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	p := parts{rt: containerd{deps.Runtime}, net: deps.Network, disks: store, dial: dialAgent,
		images: deps.Images, timings: defaultTimings}
	if deps.Egress != nil {
		p.egress = deps.Egress
	}
	p.collectors = deps.Collectors
	return build(cfg, log, p)
}

// parts are what a daemon is built from (fakes, in the unit tests).
type parts struct {
	rt      containers
	net     network
	disks   disks
	dial    dialAgentFunc
	images  map[string]*runtime.Image
	egress  egressPolicy // nil: none
	timings timings
	// collectors are metrics the daemon registers beside its own.
	collectors []prometheus.Collector
}

func build(cfg Config, log *slog.Logger, p parts) (*Daemon, error) {
	for _, dir := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "logs")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	assigned, err := loadAssignments(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	ended, err := loadEnded(cfg.StateDir, cfg.EndedRetention, log)
	if err != nil {
		return nil, err
	}
	guard, err := transfer.NewGuard(cfg.FileAllowlist)
	if err != nil {
		return nil, err
	}
	snaps, err := snapshots.Open(filepath.Join(cfg.StateDir, "snapshots"), cfg.MaxSnapshots, int64(cfg.MaxSnapshotMB)<<20)
	if err != nil {
		return nil, err
	}
	vols, err := volumes.Open(filepath.Join(cfg.StateDir, "volumes"), cfg.MaxVolumes, int64(cfg.MaxVolumeMB)<<20)
	if err != nil {
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	d := &Daemon{
		cfg: cfg, log: log, rt: p.rt, net: p.net, disks: p.disks, dialer: p.dial, timings: p.timings, egress: p.egress, collectors: p.collectors,
		xfer: transfer.NewClient(guard, cfg.FileTimeout), transfers: make(chan struct{}, maxParallelTransfers),
		metrics: newMetrics(), assigned: assigned, snaps: snaps, vols: vols,
		bg: bg, stop: stop,
		sessions:     map[sessionKey]*session{},
		tokens:       map[[32]byte]sessionKey{},
		ended:        ended,
		workers:      map[string]*worker{},
		graveyard:    map[string]*worker{},
		uidRanges:    map[uint32]bool{},
		initializing: true,
	}
	if d.egress == nil {
		d.egress = noEgress{}
	}
	if d.pools, err = d.makePools(p.images); err != nil {
		stop()
		return nil, err
	}
	return d, nil
}

// Start probes the environments' images, pre-warms their pools and starts the maintenance
// loop (health checks, idle recycling).
func (d *Daemon) Start() {
	d.mu.Lock()
	d.started = time.Now()
	d.probeEnvironmentsLocked()
	d.refillLocked()
	d.mu.Unlock()
	d.wg.Add(1)
	go d.maintain()
}

func (d *Daemon) logPath(id string) string {
	return filepath.Join(d.cfg.StateDir, "logs", id+".log")
}

// Close stops creations and maintenance. With --destroy-on-stop it destroys every worker;
// otherwise workers keep running (their kernels and files intact) for the next codeboxd to
// adopt.
func (d *Daemon) Close(ctx context.Context) error {
	d.mu.Lock()
	d.closing = true
	for _, p := range d.pools {
		for _, wt := range p.waiters {
			wt.ch <- handout{err: &api.Problem{Kind: api.Busy, Detail: "codeboxd is shutting down", RetryAfter: retryAfter}}
		}
		p.waiters = nil
	}
	d.mu.Unlock()
	d.stop()
	d.wg.Wait() // creations in flight end (and destroy what they made)

	d.mu.Lock()
	ws := make([]*worker, 0, len(d.workers))
	for _, w := range d.workers {
		ws = append(ws, w)
	}
	var sessions []*session
	for _, s := range d.sessions {
		s.stopExpiryLocked()
		sessions = append(sessions, s)
	}
	d.mu.Unlock()
	if d.cfg.DestroyOnStop {
		// Their workers go below; what is remembered is why.
		for _, s := range sessions {
			d.unregister(s, api.EndDestroyedOnStop)
		}
	}
	d.mu.Lock()
	d.workers = map[string]*worker{}
	for _, p := range d.pools {
		p.idle, p.live = nil, 0
	}
	d.sessions = map[sessionKey]*session{}
	d.tokens = map[[32]byte]sessionKey{}
	d.mu.Unlock()
	defer d.ended.flush()

	if !d.cfg.DestroyOnStop {
		for _, w := range ws {
			if w.current != nil {
				w.current.agent.Close()
			}
		}
		d.log.Info("workers left running for the next codeboxd", "workers", len(ws))
		// The volumes stay mounted on the host with them: a second mount of one, through
		// another loop device, beside a worker's would be two file systems on one image.
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !d.giveUp(ctx, w, "destroyed on stop") {
				errs[i] = fmt.Errorf("worker %s could not be destroyed", w.id)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return errors.Join(d.vols.Close(), d.disks.Close()) // no worker is left to see its disks
}

// Warm reports whether the pre-warm has reached min idle.
func (d *Daemon) Warm() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.initializing
}

// Ping implements api.Backend. /healthz needs no token, so its answer is kept a second:
// a flood of health checks costs containerd one call a second.
func (d *Daemon) Ping(ctx context.Context) error {
	d.pingMu.Lock()
	defer d.pingMu.Unlock()
	if time.Since(d.pingAt) < time.Second {
		return d.pingErr
	}
	d.pingErr = d.rt.Ping(ctx)
	d.pingAt = time.Now()
	return d.pingErr
}

// Status implements api.Backend.
func (d *Daemon) Status() api.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	idle, creating, floors := d.idleLocked(), d.creatingLocked(), 0
	for _, p := range d.pools {
		floors += p.minIdle()
	}
	return api.Status{
		TotalWorkers:      len(d.workers) + creating,
		BusyWorkers:       len(d.workers) - idle,
		IdleWorkers:       idle,
		CreatingWorkers:   creating,
		MinIdleWorkers:    floors,
		MaxTotalWorkers:   d.cfg.MaxTotalWorkers,
		IsInitializing:    d.initializing,
		IdleWorkersInPool: idle,
	}
}
