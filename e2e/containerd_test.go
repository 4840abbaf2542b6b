package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// The tests that stop and restart containerd do it to one of their own, never to the one
// `make` found or started: that may be the host's. It has its own root (kept between runs
// under /var/lib/codebox: the worker image stays imported, as a cache), state and socket,
// is configured like the one `make` starts (scripts/containerd-config.sh), and its workers
// live in their own namespace.
const (
	ownNamespace = "codebox-e2e-own"
	ownRoot      = "/var/lib/codebox/e2e-containerd"
	ownRun       = "/run/codebox/e2e-containerd"
)

type ownContainerd struct {
	t      *testing.T
	socket string
	config string
	logs   *syncBuffer
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
}

// startOwnContainerd starts the tests' own containerd and stops it (by pid) when the test
// ends, after checking nothing of the test's is left in it.
func startOwnContainerd(t *testing.T) *ownContainerd {
	t.Helper()
	c := &ownContainerd{t: t, socket: ownRun + "/containerd.sock", config: ownRun + "/config.toml", logs: &syncBuffer{}}
	// Traversable by others, like containerd's own /run/containerd: a worker's init runs
	// as a host uid of its user namespace's range and must reach its bundle under the state.
	for _, d := range []string{ownRoot, ownRun} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(filepath.Join(repoRoot(t), "scripts", "containerd-config.sh"), ownRoot, ownRun+"/state", c.socket).Output()
	if err != nil {
		t.Fatalf("containerd config: %v", err)
	}
	if err := os.WriteFile(c.config, out, 0o600); err != nil {
		t.Fatal(err)
	}
	c.start()
	t.Cleanup(func() {
		if err := ownLeftovers(c.socket); err != nil {
			t.Errorf("left in the tests' own containerd: %v", err)
		}
		c.stop(syscall.SIGTERM)
	})
	return c
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd) // the tests run in e2e/
}

// start runs containerd and waits until it serves.
func (c *ownContainerd) start() {
	c.t.Helper()
	c.mu.Lock()
	c.cmd = exec.Command("containerd", "--config", c.config)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.cmd.Start(); err != nil {
		c.mu.Unlock()
		c.t.Fatalf("start containerd: %v", err)
	}
	done := make(chan struct{})
	c.done = done
	cmd := c.cmd
	c.mu.Unlock()
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for !c.serves() {
		select {
		case <-done:
			c.t.Fatalf("containerd exited at start:\n%s", c.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("containerd did not serve within 30 s:\n%s", c.logs.String())
		}
	}
}

func (c *ownContainerd) serves() bool {
	cl, err := client.New(c.socket)
	if err != nil {
		return false
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ok, err := cl.IsServing(ctx)
	return err == nil && ok
}

// stop sends sig to the containerd this test started and waits for it to exit. Its shims,
// and the workers' tasks, go on running.
func (c *ownContainerd) stop(sig syscall.Signal) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.t.Errorf("containerd did not stop within 30 s of %s; killing it", sig)
		cmd.Process.Kill()
		<-done
	}
}

// ownLeftovers reports containers, snapshots, leases, shims and cgroups of workers left in the tests' own
// containerd.
func ownLeftovers(socket string) error {
	c, err := client.New(socket, client.WithDefaultNamespace(ownNamespace))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var problems []string
	cs, err := c.Containers(ctx)
	if err != nil {
		return err
	}
	for _, ct := range cs {
		problems = append(problems, "container "+ct.ID())
	}
	snaps := c.SnapshotService(runtime.Snapshotter)
	defer snaps.Close()
	snaps.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, "w-") {
			problems = append(problems, "snapshot "+info.Name)
		}
		return nil
	})
	problems = append(problems, creationLeases(ctx, c)...)
	for id, pid := range runtime.ShimsOf(ownNamespace, socket) {
		problems = append(problems, fmt.Sprintf("shim of %s (pid %d)", id, pid))
	}
	if left := runtime.CgroupParents(ownNamespace); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("cgroups %v", left))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, ", "))
	}
	return nil
}

// creationLeases lists the leases codeboxd took to make workers: none is left once no
// worker is being made.
func creationLeases(ctx context.Context, c *client.Client) []string {
	ls, err := c.LeasesService().List(ctx, fmt.Sprintf("labels.%q==%s", runtime.LabelManagedBy, runtime.ManagedByValue))
	if err != nil {
		return []string{"leases: " + err.Error()}
	}
	var out []string
	for _, l := range ls {
		out = append(out, "lease "+l.ID)
	}
	return out
}

// startOwnDaemon starts codeboxd on the tests' own containerd. At the end it removes what
// the daemon leaves by design (the firewall stays while workers may run): cleanup --all.
func startOwnDaemon(t *testing.T, c *ownContainerd, flags ...string) *daemon {
	t.Helper()
	return startOwnDaemonAs(t, c, randomHex(16), flags...)
}

func startOwnDaemonAs(t *testing.T, c *ownContainerd, token string, flags ...string) *daemon {
	t.Helper()
	stateDir := t.TempDir()
	for i, f := range flags { // a daemon taking over another's state
		if f == "--state-dir" && i+1 < len(flags) {
			stateDir = flags[i+1]
		}
	}
	// Registered first, so it runs after the daemon has stopped.
	t.Cleanup(func() {
		if err := runCleanup(cleanupTarget{containerd: c.socket, namespace: ownNamespace, stateDir: stateDir}); err != nil {
			t.Error(err)
		}
	})
	d := startDaemonAs(t, token, append([]string{"--containerd-address", c.socket, "--containerd-namespace", ownNamespace,
		"--state-dir", stateDir}, flags...)...)
	// Registered last, so it runs first: a test that failed while containerd was stopped
	// must not leave the clean-up without it.
	t.Cleanup(c.ensureRunning)
	return d
}

// ensureRunning starts containerd again if the test left it stopped.
func (c *ownContainerd) ensureRunning() {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	select {
	case <-done:
		c.start()
	default:
	}
}

// TestOwnContainerdConfig: the configuration `make` gives a containerd of its own does what
// it says (CRI off).
func TestOwnContainerdConfig(t *testing.T) {
	c := startOwnContainerd(t)
	out, err := exec.Command("ctr", "--address", c.socket, "plugins", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr plugins ls: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[1] == "cri" && !strings.Contains(line, "skip") {
			t.Fatalf("the CRI plugin is loaded:\n%s", out)
		}
	}
	if !strings.Contains(string(out), "io.containerd.grpc.v1") {
		t.Fatalf("no grpc plugins listed: %s", out)
	}
}

// TestContainerdRestart restarts containerd under sessions with state and a call in flight.
// The workers' tasks and kernels live on: the sessions keep their state, calls go on while
// containerd is down (they go straight to the agents; a timeout is interrupted without
// containerd), new sessions are told to come back, and once containerd serves again
// everything works as before.
func TestContainerdRestart(t *testing.T) {
	c := startOwnContainerd(t)
	d := startOwnDaemon(t, c, "--min-idle-workers", "2")
	ctx := context.Background()
	users := []string{"e2e-cr-a-" + randomHex(3), "e2e-cr-b-" + randomHex(3), "e2e-cr-c-" + randomHex(3)}
	workers := map[string]string{}
	for i, u := range users {
		r := d.exec(t, u, fmt.Sprintf("x = %d\nopen('/sandbox/f', 'w').write('%d')", i, i))
		workers[u] = r.WorkerID
	}
	waitStatus(t, d, "pool refilled", time.Minute, func(s api.Status) bool { return s.IdleWorkers >= 2 && s.CreatingWorkers == 0 }) // the pool may have learned a larger target from the three sessions

	inFlight := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		r, err := d.client.Execute(cctx, users[0], "import time\ntime.sleep(8)\nx += 100\nx", 0)
		if err == nil && (r.ResultText == nil || *r.ResultText != "100") {
			err = fmt.Errorf("the call across the restart: %+v", r)
		}
		inFlight <- err
	}()
	time.Sleep(500 * time.Millisecond)
	stopped := time.Now()
	c.stop(syscall.SIGTERM)
	t.Logf("containerd stopped")

	// While it is down.
	for i, u := range users[1:] {
		r := d.exec(t, u, "x")
		if r.ResultText == nil || *r.ResultText != fmt.Sprint(i+1) || r.WorkerID != workers[u] {
			t.Fatalf("%s while containerd is down: %+v", u, r)
		}
	}
	_, err := d.client.Execute(ctx, users[2], "while True: pass", 2*time.Second)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, true) {
		t.Fatalf("a timeout while containerd is down: %v, want 504 with the state preserved", err)
	}
	_, err = d.client.Execute(ctx, "e2e-cr-new-"+randomHex(3), "1", 0)
	if !errors.As(err, &ae) || ae.Status != 503 || ae.RetryAfter <= 0 || !strings.Contains(ae.Detail, "containerd") {
		t.Fatalf("a new session while containerd is down: %v, want 503 with Retry-After naming containerd", err)
	}
	code, _, body := d.request(t, "GET", "/healthz", "", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "containerd is unreachable") {
		t.Fatalf("healthz while containerd is down: %d %s", code, body)
	}

	c.start()
	t.Logf("containerd back after %s", time.Since(stopped).Round(time.Millisecond))
	if err := <-inFlight; err != nil {
		t.Fatalf("the call in flight across the restart: %v", err)
	}
	eventually(t, 30*time.Second, "healthz recovering after containerd's return", func() bool {
		code, _, _ := d.request(t, "GET", "/healthz", "", nil)
		return code == 200
	})
	for i, u := range users {
		want := fmt.Sprintf("(%d, '%d')", []int{100, 1, 2}[i], i)
		r := d.exec(t, u, "x, open('/sandbox/f').read()")
		if r.ResultText == nil || *r.ResultText != want || r.WorkerID != workers[u] || r.NewSession {
			t.Fatalf("%s after the restart: %+v, want %s on the same worker", u, r, want)
		}
	}
	if r := d.exec(t, "e2e-cr-new-"+randomHex(3), "'new'"); !r.NewSession {
		t.Fatalf("a new session after the restart: %+v", r)
	}
	// The daemon still manages its workers: a release destroys, the pool refills.
	if err := d.client.Release(ctx, users[1]); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, "pool after the restart", time.Minute, func(s api.Status) bool { return s.IdleWorkers >= 2 && s.CreatingWorkers == 0 })
	if n := strings.Count(d.logs.String(), "worker retired"); strings.Contains(d.logs.String(), "task exited while idle") {
		t.Fatalf("idle workers were retired for the restart (%d retirements):\n%s", n, d.logs.String())
	}
	for _, u := range users {
		d.client.Release(ctx, u)
	}
}
