package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/blockdev"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
)

// AgentTokenEnv carries the agent's token into its worker (its process's environment,
// where a later codeboxd finds it).
const AgentTokenEnv = "CODEBOX_AGENT_TOKEN"

// AgentURL is the websocket of the agent of a worker at ip.
func AgentURL(ip net.IP) string {
	return fmt.Sprintf("ws://%s%s", net.JoinHostPort(ip.String(), strconv.Itoa(agentPort)), agent.ChannelsPath)
}

const (
	agentPort = 8888
	// agentStartTimeout bounds how long a new worker's agent may take to answer.
	agentStartTimeout = 60 * time.Second
)

// Workers' host uid ranges: from firstUIDBase, runtime.IDRange each, maxUIDRanges of them.
// 0x70000000.. is left unused by systemd's conventions (below it, containers' ranges;
// above 0x7FFE0000, its own foreign range), and stays below 2^31, where tools that take
// uids for signed numbers go wrong.
const (
	firstUIDBase = 0x70000000
	maxUIDRanges = (0x7FFE0000 - firstUIDBase) / runtime.IDRange
)

// worker is one container with its network, disk and agent connection.
type worker struct {
	id      string
	ip      net.IP
	nsPath  string
	logPath string
	token   string
	created time.Time
	// uidBase starts the worker's host uid range (0: a worker of a codeboxd before user
	// namespaces, whose user is host uid 1000).
	uidBase uint32
	// env is the environment it was made for (its pool's name).
	env string

	// current is the current task and agent connection; a kernel restart replaces it.
	// Written under Daemon.mu by the holder of the worker's session turn.
	current *instance
}

// instance is one run of a worker: its task and the agent connection to it. A kernel
// restart (a new task in the same container) makes a new one.
type instance struct {
	task  task
	agent agentConn
	// exited is closed when the task has ended; exitCode is valid after that.
	exited   chan struct{}
	exitCode uint32
}

func (in *instance) hasExited() bool {
	select {
	case <-in.exited:
		return true
	default:
		return false
	}
}

func newWorkerID() string {
	var b [6]byte
	rand.Read(b[:])
	return "w-" + hex.EncodeToString(b[:])
}

func newToken() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// createWorker makes a worker of pool p and waits until its kernel executes code and has
// run the environment's seed. On failure nothing it made is left behind.
func (d *Daemon) createWorker(ctx context.Context, p *pool) (_ *worker, err error) {
	start := time.Now()
	w := &worker{id: newWorkerID(), created: start, token: newToken(), env: p.name()}
	w.logPath = d.logPath(w.id)
	if w.uidBase, err = d.takeUIDRange(); err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			d.metrics.creates.WithLabelValues("ok").Inc()
			d.metrics.createDuration.Observe(time.Since(start).Seconds())
		} else {
			d.metrics.creates.WithLabelValues("error").Inc()
		}
		if err != nil {
			// Not registered, and never recorded but as retired: the next codeboxd
			// destroys what a failed destruction leaves, and meanwhile the maintenance loop
			// tries again.
			if !d.giveUp(context.WithoutCancel(ctx), w, "its creation failed") {
				err = fmt.Errorf("%w (and its destruction failed; retried)", err)
			}
		}
	}()

	// The disk comes when a session takes the worker (fit): until then its container binds
	// an empty mount point.
	mountPoint, err := d.disks.Prepare(w.id)
	if err != nil {
		return nil, err
	}
	att, err := d.net.Attach(ctx, w.id)
	if att != nil {
		w.ip, w.nsPath = att.IP, att.NetNSPath
	}
	if err != nil {
		return nil, err
	}
	attached := time.Now()

	task, err := d.rt.Start(ctx, runtime.WorkerSpec{
		ID:         w.id,
		Image:      p.image,
		NetNSPath:  w.nsPath,
		UIDBase:    w.uidBase,
		Resources:  resourcesOf(p.limits),
		AgentDir:   d.cfg.AgentDir,
		ResolvConf: d.cfg.ResolvConf,
		Env: []string{
			AgentTokenEnv + "=" + w.token,
			"CODEBOX_AGENT_PORT=" + strconv.Itoa(agentPort),
			"CODEBOX_MAX_OUTPUT_BYTES=" + strconv.Itoa(agent.AgentMaxOutputBytes),
		},
		Labels:         Labels{NetNS: w.nsPath, IP: w.ip, UIDBase: w.uidBase, Environment: p.name(), Fingerprint: p.fingerprint}.Encode(),
		LogPath:        w.logPath,
		SandboxSource:  mountPoint,
		SandboxOptions: blockdev.BindOptions,
		BeforeStart:    runtime.LimitUserNamespace,
	})
	if err != nil {
		return nil, err
	}
	started := time.Now()

	if w.current, err = d.connect(ctx, w, task); err != nil {
		return nil, fmt.Errorf("worker %s: %w", w.id, err)
	}
	answered := time.Now()
	if err := d.seed(ctx, w, p.env); err != nil {
		return nil, err
	}
	for phase, took := range map[string]time.Duration{"network": attached.Sub(start), "container": started.Sub(attached),
		"kernel": answered.Sub(started), "seed": time.Since(answered)} {
		d.metrics.startPhases.WithLabelValues(phase).Observe(took.Seconds())
	}
	d.log.Info("worker created", "worker", w.id, "environment", p.name(), "ip", w.ip.String(),
		"network_ms", ms(attached.Sub(start)), "container_ms", ms(started.Sub(attached)),
		"kernel_ms", ms(answered.Sub(started)), "seed_ms", ms(time.Since(answered)), "total_ms", ms(time.Since(start)))
	return w, nil
}

// errSeedTimeout: an environment's seed did not finish within seedTimeout.
var errSeedTimeout = fmt.Errorf("did not finish within %s", seedTimeout)

// seed runs the environment's seed cells in w's kernel, one language after the other, so
// that what they import is loaded before a session gets the worker.
func (d *Daemon) seed(ctx context.Context, w *worker, env environments.Environment) error {
	langs := env.SeedLanguages()
	if len(langs) == 0 {
		return nil
	}
	seedCtx, cancel := context.WithTimeout(ctx, seedTimeout)
	defer cancel()
	for _, lang := range langs {
		if err := w.current.agent.Seed(seedCtx, env.Seed[lang], lang); err != nil {
			// The seed's own deadline, not the creation's (a slow start ate that one) or a stop.
			if ctx.Err() == nil && seedCtx.Err() == context.DeadlineExceeded {
				err = errSeedTimeout
			}
			// Worded to follow "environment X is unavailable: ".
			return fmt.Errorf("its %s seed %w", lang, err)
		}
	}
	return nil
}

// takeUIDRange reserves the lowest free host uid range for a new worker.
func (d *Daemon) takeUIDRange() (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := 0; i < maxUIDRanges; i++ {
		base := uint32(firstUIDBase + i*runtime.IDRange)
		if !d.uidRanges[base] {
			d.uidRanges[base] = true
			return base, nil
		}
	}
	return 0, errors.New("no free host uid range for a worker")
}

// errAgentExited: the agent's task ended before it answered.
var errAgentExited = errors.New("agent exited")

// agentExit is how an agent that never answered ended: its exit code says what its image
// lacks (agent.BootFailure), its log's tail the rest.
type agentExit struct {
	code uint32
	log  string
}

func (e *agentExit) Error() string {
	return fmt.Sprintf("%v with status %d before answering: %s", errAgentExited, e.code, e.log)
}

func (e *agentExit) Is(target error) bool { return target == errAgentExited }

// connect watches task and dials its agent until the kernel executes code, the task exits,
// or the start timeout passes. The agent needs a moment to import IPython before it listens.
func (d *Daemon) connect(ctx context.Context, w *worker, t task) (*instance, error) {
	in := d.watch(w, t)
	if err := d.dial(ctx, w, in); err != nil {
		return nil, err
	}
	return in, nil
}

// watch makes the instance of task: its exit closes in.exited and reaches onExit.
func (d *Daemon) watch(w *worker, t task) *instance {
	in := &instance{task: t, exited: make(chan struct{})}
	go func() {
		e, ok := <-t.Exited()
		if !ok {
			return // the task is being deleted or replaced
		}
		in.exitCode = e.Code
		close(in.exited)
		d.onExit(w, in)
	}()
	return in
}

// dial connects in's agent: it dials the agent until the kernel executes code, the task
// exits, or ctx (at most the start timeout) ends.
func (d *Daemon) dial(ctx context.Context, w *worker, in *instance) error {
	ctx, cancel := context.WithTimeout(ctx, agentStartTimeout)
	defer cancel()
	url := AgentURL(w.ip)
	var lastErr error
	for {
		kc, err := d.dialer(ctx, url, w.token)
		if err == nil {
			if err = kc.Check(ctx); err == nil {
				in.agent = kc
				return nil
			}
			kc.Close()
		}
		lastErr = err
		select {
		case <-in.exited:
			return &agentExit{code: in.exitCode, log: tail(w.logPath, 2048)}
		case <-ctx.Done():
			return fmt.Errorf("agent did not answer: %w (last error: %v)", ctx.Err(), lastErr)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// fit makes worker w the session's, of shape sh: its disk of the session's size, mounted
// where the container sees it at /sandbox (unless makeDisk is false: a restarted kernel's
// worker has it), its limits where they are not the pool's, the session's env in its
// agent. The caller holds the session's turn.
func (d *Daemon) fit(ctx context.Context, w *worker, sh shape, makeDisk bool) error {
	start := time.Now()
	switch {
	case makeDisk && sh.from != nil:
		if err := d.makeDiskFrom(ctx, w, sh.from, sh.limits.DiskMB); err != nil {
			return err
		}
	case makeDisk:
		if _, err := d.disks.Make(ctx, w.id, sh.limits.DiskMB, runtime.HostUID(w.uidBase)); err != nil {
			return err
		}
	}
	disked := time.Now()
	if res := resourcesOf(sh.limits); res != d.poolResources(w) {
		if err := d.rt.Update(ctx, w.id, res); err != nil {
			return err
		}
	}
	limited := time.Now()
	env := maps.Clone(d.cfg.SessionEnv)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, sh.env)
	if err := w.current.agent.StartSession(ctx, env); err != nil {
		return fmt.Errorf("start the session in the agent: %w", err)
	}
	d.metrics.fitDuration.Observe(time.Since(start).Seconds())
	for phase, took := range map[string]time.Duration{"disk": disked.Sub(start), "limits": limited.Sub(disked), "agent": time.Since(limited)} {
		d.metrics.startPhases.WithLabelValues(phase).Observe(took.Seconds())
	}
	d.log.Debug("worker fitted", "worker", w.id, "disk_ms", ms(disked.Sub(start)), "limits_ms", ms(limited.Sub(disked)),
		"agent_ms", ms(time.Since(limited)))
	return nil
}

// resourcesOf are the cgroup limits of a session's limits.
func resourcesOf(l api.Limits) runtime.Resources {
	return runtime.Resources{CPU: l.CPU, MemoryMB: l.MemoryMB, Pids: l.Pids}
}

// poolResources are the limits w's pool made it with.
func (d *Daemon) poolResources(w *worker) runtime.Resources {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.poolOf(w.env); p != nil {
		return resourcesOf(p.limits)
	}
	return runtime.Resources{} // its environment is gone: fit sets the session's limits
}

// restartKernel starts a new task in w's container after its kernel died and fits it to
// the session's shape sh again: the session's variables are gone, its files on /sandbox
// stay. The caller holds w's session turn.
func (d *Daemon) restartKernel(ctx context.Context, w *worker, sh shape) error {
	old := w.current
	old.agent.Close()
	task, err := d.rt.Restart(ctx, w.id, w.logPath, runtime.LimitUserNamespace)
	if err != nil {
		return err
	}
	in, err := d.connect(ctx, w, task)
	if err != nil {
		return err
	}
	d.mu.Lock()
	w.current = in
	d.mu.Unlock()
	if err := d.fit(ctx, w, sh, false); err != nil {
		return err
	}
	d.metrics.kernelRestarts.Inc()
	d.log.Info("kernel restarted", "worker", w.id, "exit_code", old.exitCode)
	return nil
}

// destroyWorker tears a worker down completely.
func (d *Daemon) destroyWorker(ctx context.Context, w *worker) error {
	if w.current != nil {
		w.current.agent.Close()
	}
	start := time.Now()
	err := d.destroyResources(ctx, w.id, w.nsPath, w.logPath)
	if a := workerAddr(w.ip); a.IsValid() {
		// Once it is gone, so nothing it sends while dying makes the address known again.
		d.egress.Release(a) // its connections cut, its answers forgotten
	}
	d.metrics.destroys.Inc()
	d.metrics.destroyDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		d.log.Error("worker destroy failed", "worker", w.id, "err", err)
	} else {
		args := []any{"worker", w.id, "destroy_ms", ms(time.Since(start))}
		if !w.created.IsZero() { // an adopted or half-made worker's age is not known
			args = append(args, "age_s", int(time.Since(w.created).Seconds()))
		}
		d.log.Info("worker destroyed", args...)
	}
	return err
}

// destroyResources removes the container, task, snapshot, network, disk and log of worker
// id, whichever of them exist. Every step runs even when an earlier one failed.
func (d *Daemon) destroyResources(ctx context.Context, id, nsPath, logPath string) error {
	var errs []error
	if err := d.rt.Destroy(ctx, id); err != nil {
		errs = append(errs, err)
	}
	if nsPath != "" {
		if err := d.net.Detach(ctx, id, nsPath); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.disks.Remove(id); err != nil {
		errs = append(errs, err)
	}
	if logPath != "" {
		for _, p := range []string{logPath, logPath + ".1"} { // .1: the log sink's previous file
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("destroy worker %s: %w", id, errors.Join(errs...))
	}
	return nil
}

// tail returns the last n bytes of a file, for error messages about a dead agent.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "(no log)"
	}
	off := max(st.Size()-n, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return "(log unreadable)"
	}
	return string(buf)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
