package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/blockdev"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
)

// A world of fakes for the daemon: containers, network, disks and kernels that do what
// each test tells them, so the daemon's own logic (sessions, cattle, recovery, files) runs
// as in codeboxd, without containerd.

// fakeWorld holds every fake and what was done to it.
type fakeWorld struct {
	t   *testing.T
	mu  sync.Mutex
	dir string // disks are directories under it

	workers   map[string]*fakeWorker // by container id
	byIP      map[string]*fakeWorker
	nextIP    int
	destroyed []string
	restarted []string
	down      bool // containerd unreachable

	// factory, when set, gates and fails container starts and destructions.
	factory *fakeFactory
	// timings are the daemon's; zero: defaultTimings.
	timings timings

	// Limits applied to workers (Update), their usage, whether disks can grow, an error
	// Update returns.
	limits     map[string]runtime.Resources
	usage      map[string]runtime.Usage
	cannotGrow bool
	failUpdate error

	// Environments: what each one's probe answers (by environment; none: python and bash),
	// the exit code of its workers' agents at start (0: they answer), the seeds run.
	probes     map[string]*runtime.Probe
	exitAtBoot map[string]uint32
	seeds      []string

	// Recovery: what containerd lists, and which adoptions fail.
	managed   map[string]map[string]string
	noAdopt   map[string]bool
	noMounted map[string]bool
}

// fakeWorker is one container: its task and its kernel.
type fakeWorker struct {
	id    string
	ip    string
	task  *fakeTask
	agent *fakeAgent
}

func newWorld(t *testing.T) *fakeWorld {
	return &fakeWorld{t: t, dir: t.TempDir(), workers: map[string]*fakeWorker{}, byIP: map[string]*fakeWorker{},
		managed: map[string]map[string]string{}, noAdopt: map[string]bool{}, noMounted: map[string]bool{},
		limits: map[string]runtime.Resources{}, usage: map[string]runtime.Usage{},
		probes: map[string]*runtime.Probe{}, exitAtBoot: map[string]uint32{}}
}

// daemon builds a daemon on the fakes, with the real worker lifecycle.
func (fw *fakeWorld) daemon(cfg Config) *Daemon {
	fw.t.Helper()
	if cfg.MaxTotalWorkers == 0 {
		cfg.MaxTotalWorkers = 5
	}
	cfg.StateDir = filepath.Join(fw.dir, "state")
	for _, def := range []struct {
		v *time.Duration
		d time.Duration
	}{{&cfg.ExecTimeout, 5 * time.Second}, {&cfg.MaxExecTimeout, time.Minute}, {&cfg.IdleTimeout, time.Hour},
		{&cfg.RecycleInterval, time.Hour}, {&cfg.FileTimeout, 10 * time.Second}} {
		if *def.v == 0 {
			*def.v = def.d
		}
	}
	if cfg.MaxFileMB == 0 {
		cfg.MaxFileMB = 1
	}
	tm := fw.timings
	if tm == (timings{}) {
		tm = defaultTimings
	}
	d, err := build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)),
		parts{rt: fakeContainers{fw}, net: fakeNetwork{fw}, disks: fakeDisks{fw}, dial: fw.dial, timings: tm})
	if err != nil {
		fw.t.Fatal(err)
	}
	fw.t.Cleanup(func() { d.Close(context.Background()) })
	return d
}

func (fw *fakeWorld) worker(id string) *fakeWorker {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.workers[id]
}

func (fw *fakeWorld) wasDestroyed(id string) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, d := range fw.destroyed {
		if d == id {
			return true
		}
	}
	return false
}

// newTask starts a task of w, with a kernel that answers as the test scripts.
func (fw *fakeWorld) newTask(w *fakeWorker) *fakeTask {
	t := &fakeTask{exited: make(chan runtime.Exit, 1), done: make(chan struct{})}
	w.task = t
	w.agent = &fakeAgent{task: t, fw: fw}
	return t
}

func (fw *fakeWorld) dial(ctx context.Context, url, token string) (agentConn, error) {
	ip := strings.TrimPrefix(url, "ws://")
	ip, _, _ = net.SplitHostPort(strings.Split(ip, "/")[0])
	fw.mu.Lock()
	w := fw.byIP[ip]
	fw.mu.Unlock()
	if w == nil || w.agent == nil {
		return nil, errors.New("no agent listens")
	}
	if w.agent.busy.Load() {
		<-ctx.Done() // its main thread runs user code: no handshake
		return nil, ctx.Err()
	}
	w.agent.open()
	return w.agent, nil
}

// fakeTask is a worker's task: it exits when told, and takes signals.
type fakeTask struct {
	mu       sync.Mutex
	exited   chan runtime.Exit
	done     chan struct{}
	gone     bool
	signals  []syscall.Signal
	onSignal func(syscall.Signal)
}

func (t *fakeTask) Exited() <-chan runtime.Exit { return t.exited }
func (t *fakeTask) ProcessID() int              { return os.Getpid() }

func (t *fakeTask) Signal(sig syscall.Signal) error {
	t.mu.Lock()
	t.signals = append(t.signals, sig)
	f := t.onSignal
	t.mu.Unlock()
	if f != nil {
		f(sig)
	}
	return nil
}

func (t *fakeTask) exit(code uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gone {
		return
	}
	t.gone = true
	t.exited <- runtime.Exit{Code: code, Known: true}
	close(t.exited)
	close(t.done)
}

// stop ends watching without an exit, as the runtime does when the task is deleted.
func (t *fakeTask) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.gone {
		t.gone = true
		close(t.exited)
		close(t.done)
	}
}

func (t *fakeTask) exitedAlready() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// fakeAgent runs "code" that the tests name:
//
//	ok                the call completes
//	stops-on-sigint   runs until SIGINT, then ends with KeyboardInterrupt
//	misses-a-sigint   the same, but the first SIGINT is lost (it came as the code was sent)
//	loses-language    runs until SIGINT, then its language interpreter is killed (state lost)
//	ignores-sigint    runs until the connection closes
//	streams           prints two lines as it runs, then completes
//	dies              the task exits (137) and the connection drops
//	drops             the connection drops; the task lives on
type fakeAgent struct {
	task *fakeTask
	fw   *fakeWorld
	busy atomic.Bool // a call of an earlier daemon's runs: no handshake until SIGINT

	mu     sync.Mutex
	closed chan struct{}
	err    error
	count  int
	env    map[string]string // the session's, from StartSession
	// slow is code that takes delay to complete (as "ok" does at once).
	delay time.Duration
}

func (k *fakeAgent) open() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = make(chan struct{})
	k.err = nil
}

func (k *fakeAgent) closeWith(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err == nil {
		k.err = err
		if k.closed != nil {
			close(k.closed)
		}
	}
}

func (k *fakeAgent) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

func (k *fakeAgent) Close() error {
	k.closeWith(agent.ErrClosed)
	return nil
}

func (k *fakeAgent) Check(ctx context.Context) error {
	if err := k.Err(); err != nil {
		return err
	}
	return nil
}

func (k *fakeAgent) StartSession(ctx context.Context, env map[string]string) error {
	if err := k.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	k.env = env
	k.mu.Unlock()
	return nil
}

// Seed records the seed; code "raise" raises, "hang" never finishes.
func (k *fakeAgent) Seed(ctx context.Context, code, language string) error {
	if err := k.Err(); err != nil {
		return err
	}
	k.fw.mu.Lock()
	k.fw.seeds = append(k.fw.seeds, language+": "+code)
	k.fw.mu.Unlock()
	switch code {
	case "raise":
		return fmt.Errorf("%w NameError: name 'x' is not defined", agent.ErrSeedFailed)
	case "hang":
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (k *fakeAgent) Start(code, language string, sink func(agent.Event)) (agentCall, error) {
	if err := k.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.count++
	n := k.count
	closed := k.closed
	k.mu.Unlock()
	c := &fakeCall{done: make(chan struct{})}
	ok := func() { c.finish(&agent.Result{Status: "ok", ExecutionCount: n, Stdout: code + "\n"}, nil) }
	k.mu.Lock()
	delay := k.delay
	k.mu.Unlock()
	switch code {
	case "ok", "1":
		if delay > 0 {
			time.AfterFunc(delay, ok)
		} else {
			ok()
		}
	case "stops-on-sigint":
		k.task.mu.Lock()
		k.task.onSignal = func(syscall.Signal) {
			c.finish(&agent.Result{Status: "error", ExecutionCount: n, Error: &agent.Error{Ename: "KeyboardInterrupt"}}, nil)
		}
		k.task.mu.Unlock()
	case "loses-language":
		k.task.mu.Lock()
		k.task.onSignal = func(syscall.Signal) {
			c.finish(&agent.Result{Status: "error", ExecutionCount: n, StateLost: true,
				Error: &agent.Error{Ename: "KeyboardInterrupt", Evalue: "the bash interpreter did not stop when interrupted"}}, nil)
		}
		k.task.mu.Unlock()
	case "misses-a-sigint":
		k.task.mu.Lock()
		signals := 0
		k.task.onSignal = func(syscall.Signal) {
			if signals++; signals == 2 {
				c.finish(&agent.Result{Status: "error", ExecutionCount: n, Error: &agent.Error{Ename: "KeyboardInterrupt"}}, nil)
			}
		}
		k.task.mu.Unlock()
	case "streams":
		sink(agent.Event{Kind: "stdout", Text: "one\n"})
		sink(agent.Event{Kind: "stdout", Text: "two\n"})
		c.finish(&agent.Result{Status: "ok", ExecutionCount: n, Stdout: "one\ntwo\n", DroppedBytes: 3}, nil)
	case "ignores-sigint":
	case "dies":
		go func() {
			k.task.exit(137)
			k.closeWith(agent.ErrClosed)
		}()
	case "drops":
		go k.closeWith(agent.ErrClosed)
	case "misbehaves":
		go k.closeWith(fmt.Errorf("%w: %w", agent.ErrClosed, agent.ErrMisbehaved))
	default:
		ok()
	}
	go func() {
		select {
		case <-closed:
			c.finish(&agent.Result{}, k.Err())
		case <-c.done:
		}
	}()
	return c, nil
}

type fakeCall struct {
	mu   sync.Mutex
	done chan struct{}
	res  *agent.Result
	err  error
}

func (c *fakeCall) finish(res *agent.Result, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
	default:
		c.res, c.err = res, err
		close(c.done)
	}
}

func (c *fakeCall) Wait(ctx context.Context) (*agent.Result, error) {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.res, c.err
	case <-ctx.Done():
		return &agent.Result{}, ctx.Err()
	}
}

func (c *fakeCall) Finish() {}

// fakeContainers is containerd.
type fakeContainers struct{ fw *fakeWorld }

func (c fakeContainers) Start(ctx context.Context, s runtime.WorkerSpec) (task, error) {
	fw := c.fw
	if f := fw.factory; f != nil {
		if err := f.start(ctx); err != nil {
			return nil, err
		}
	}
	l := ParseLabels(s.Labels)
	w := &fakeWorker{id: s.ID, ip: l.IP.String()}
	fw.mu.Lock()
	fw.workers[s.ID] = w
	fw.byIP[w.ip] = w
	code, exits := fw.exitAtBoot[l.Environment]
	fw.mu.Unlock()
	t := fw.newTask(w)
	if exits {
		w.agent = nil // never answers
		t.exit(code)
	}
	return t, nil
}

func (c fakeContainers) Probe(ctx context.Context, s runtime.ProbeSpec) (*runtime.Probe, error) {
	c.fw.mu.Lock()
	defer c.fw.mu.Unlock()
	if p := c.fw.probes[s.Labels[labelEnv]]; p != nil {
		return p, nil
	}
	return &runtime.Probe{Stdout: `{"python": "3.11.2", "ipython": "8.5.0", "languages": ["python", "bash"]}` + "\n"}, nil
}

func (c fakeContainers) Restart(ctx context.Context, id, logPath string, beforeStart func(pid uint32) error) (task, error) {
	fw := c.fw
	fw.mu.Lock()
	w := fw.workers[id]
	fw.restarted = append(fw.restarted, id)
	fw.mu.Unlock()
	if w == nil {
		return nil, errors.New("no such container")
	}
	w.task.stop()
	return fw.newTask(w), nil
}

func (c fakeContainers) Adopt(ctx context.Context, id string) (*adopted, error) {
	fw := c.fw
	fw.mu.Lock()
	defer fw.mu.Unlock()
	w := fw.workers[id]
	if w == nil || fw.noAdopt[id] {
		return nil, fmt.Errorf("task of %s is not running", id)
	}
	return &adopted{env: []string{"CODEBOX_AGENT_TOKEN=t"}, created: time.Now(), task: w.task}, nil
}

func (c fakeContainers) Destroy(ctx context.Context, id string) error {
	fw := c.fw
	if f := fw.factory; f != nil {
		if err := f.destroy(); err != nil {
			return err
		}
	}
	fw.mu.Lock()
	if fw.down {
		fw.mu.Unlock()
		return errors.New("containerd unreachable")
	}
	w := fw.workers[id]
	delete(fw.workers, id)
	delete(fw.managed, id)
	fw.destroyed = append(fw.destroyed, id)
	fw.mu.Unlock()
	if w != nil {
		if w.agent != nil {
			w.agent.Close()
		}
		w.task.stop()
	}
	return nil
}

func (c fakeContainers) Managed(ctx context.Context) (map[string]map[string]string, error) {
	c.fw.mu.Lock()
	defer c.fw.mu.Unlock()
	out := map[string]map[string]string{}
	for id, l := range c.fw.managed {
		out[id] = l
	}
	return out, nil
}

func (c fakeContainers) RemoveOrphans(ctx context.Context) ([]string, error) { return nil, nil }

func (c fakeContainers) Running(ctx context.Context, id string) (bool, error) {
	w := c.fw.worker(id)
	return w != nil && !w.task.exitedAlready(), nil
}

func (c fakeContainers) Ping(ctx context.Context) error { return nil }

func (c fakeContainers) Update(ctx context.Context, id string, res runtime.Resources) error {
	c.fw.mu.Lock()
	defer c.fw.mu.Unlock()
	if c.fw.failUpdate != nil {
		return c.fw.failUpdate
	}
	c.fw.limits[id] = res
	return nil
}

func (c fakeContainers) Usage(id string) (runtime.Usage, error) {
	c.fw.mu.Lock()
	defer c.fw.mu.Unlock()
	return c.fw.usage[id], nil
}

func (c fakeContainers) Available() (bool, error) {
	c.fw.mu.Lock()
	defer c.fw.mu.Unlock()
	return !c.fw.down, nil
}

// fakeNetwork hands out addresses.
type fakeNetwork struct{ fw *fakeWorld }

func (n fakeNetwork) Attach(ctx context.Context, id string) (*netns.Attachment, error) {
	n.fw.mu.Lock()
	defer n.fw.mu.Unlock()
	n.fw.nextIP++
	return &netns.Attachment{NetNSPath: "/fake/netns/" + id, IP: net.IPv4(10, 99, 0, byte(n.fw.nextIP))}, nil
}

func (n fakeNetwork) Detach(ctx context.Context, id, nsPath string) error { return nil }

func (n fakeNetwork) Sweep(ctx context.Context, alive map[string]string) ([]string, error) {
	return nil, nil
}

// fakeDisks are directories.
type fakeDisks struct{ fw *fakeWorld }

func (s fakeDisks) MountPoint(id string) string { return filepath.Join(s.fw.dir, "mounts", id) }

func (s fakeDisks) Prepare(id string) (string, error) {
	mp := s.MountPoint(id)
	return mp, os.MkdirAll(mp, 0o755)
}

// marker stands for a disk made and mounted: a file outside the mount point (whose files
// are the session's).
func (s fakeDisks) marker(id string) string { return filepath.Join(s.fw.dir, "made", id) }

func (s fakeDisks) Make(ctx context.Context, id string, sizeMB, owner int) (*blockdev.Disk, error) {
	mp := s.MountPoint(id)
	if _, err := os.Stat(mp); err != nil {
		return nil, err
	}
	os.MkdirAll(filepath.Dir(s.marker(id)), 0o755)
	if err := os.WriteFile(s.marker(id), []byte(strconv.Itoa(sizeMB)), 0o644); err != nil {
		return nil, err
	}
	return &blockdev.Disk{ID: id, MountPoint: mp}, nil
}

func (s fakeDisks) Grow(ctx context.Context, id string, sizeMB int) error {
	s.fw.mu.Lock()
	cannot := s.fw.cannotGrow
	s.fw.mu.Unlock()
	if cannot {
		return errCannotGrow
	}
	return os.WriteFile(s.marker(id), []byte(strconv.Itoa(sizeMB)), 0o644)
}

func (s fakeDisks) Usage(id string) (int64, int64, error) {
	b, err := os.ReadFile(s.marker(id))
	if err != nil {
		return 0, 0, err
	}
	mb, _ := strconv.Atoi(string(b))
	return 4096, int64(mb) << 20, nil
}

func (s fakeDisks) Close() error { return nil }

func (s fakeDisks) Remove(id string) error {
	os.Remove(s.marker(id))
	return os.RemoveAll(s.MountPoint(id))
}

func (s fakeDisks) List() ([]string, error) {
	entries, _ := os.ReadDir(filepath.Join(s.fw.dir, "mounts"))
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids, nil
}

func (s fakeDisks) Mounted(id string) bool {
	s.fw.mu.Lock()
	defer s.fw.mu.Unlock()
	_, err := os.Stat(s.marker(id))
	return err == nil && !s.fw.noMounted[id]
}

// Snapshots of fake disks: the marker file stands for the image.
func (s fakeDisks) Snapshot(ctx context.Context, id, dst string) (time.Duration, error) {
	b, err := os.ReadFile(s.marker(id))
	if err != nil {
		return 0, err
	}
	return time.Millisecond, os.WriteFile(dst, b, 0o600)
}

func (s fakeDisks) MakeFrom(ctx context.Context, id, src string, sizeMB int) (*blockdev.Disk, error) {
	if _, err := os.Stat(src); err != nil {
		return nil, err
	}
	return s.Make(ctx, id, sizeMB, 0)
}

func (s fakeDisks) Rebase(ctx context.Context, id string, from, to, size int) error { return nil }
func (s fakeDisks) Thaw(id string)                                                  {}
