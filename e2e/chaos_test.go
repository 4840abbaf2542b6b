package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/egress"
	"github.com/codebox/codebox/firewall"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// chaosUsers is the seed scenario's concurrency: 25 sessions, each counting.
const chaosUsers = 25

// chaosStep is what each session runs: its counter, or 1 in a fresh session.
const chaosStep = "try:\n    counter += 1\nexcept NameError:\n    counter = 1\ncounter"

// outcome is one call of the chaos load.
type outcome struct {
	at      time.Time
	status  int    // 200, or the error status; 0: no answer (connection refused, reset)
	detail  string // of a failure
	value   int    // the counter, on success
	fresh   bool   // new_session
	verdict string // "" when consistent; else what was wrong
}

// chaosSession counts in its session for as long as the test runs and checks every answer:
// the counter goes on by one, unless the daemon said the state was lost (a 503 saying so,
// or new_session: true, where it starts again at 1).
type chaosSession struct {
	user   string
	inject chan string // a call to run instead of the next step (the memory bomb)

	mu       sync.Mutex
	outcomes []outcome
	worker   string
}

func (s *chaosSession) run(ctx context.Context, c *api.Client, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	expect := 0 // the counter's value so far; 0: unknown (fresh)
	// unanswered counts calls that got no answer (the daemon was killed under them): each
	// may or may not have run, so the counter may be ahead by up to that many.
	unanswered := 0
	for {
		select {
		case <-stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		code := chaosStep
		select {
		case code = <-s.inject:
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		r, err := c.Execute(cctx, s.user, code, 0)
		cancel()
		o := outcome{at: time.Now()}
		var ae *api.Error
		switch {
		case errors.As(err, &ae):
			o.status, o.detail = ae.Status, ae.Detail
		case err != nil:
			o.detail = err.Error()
		case r.Error != nil:
			o.status, o.detail = 400, r.Detail
		default:
			o.status, o.fresh = 200, r.NewSession
			fmt.Sscan(*r.ResultText, &o.value)
			s.mu.Lock()
			s.worker = r.WorkerID
			s.mu.Unlock()
		}
		switch {
		case code != chaosStep:
			o.verdict = "injected"
		case o.status == 0:
			unanswered++
		case o.status == 200:
			switch {
			case o.fresh && o.value != 1:
				o.verdict = fmt.Sprintf("a new session counted %d", o.value)
			case !o.fresh && expect > 0 && (o.value < expect+1 || o.value > expect+1+unanswered):
				o.verdict = fmt.Sprintf("state lost without notice: %d after %d (%d calls unanswered)", o.value, expect, unanswered)
			case !o.fresh && expect == 0 && o.value != 1:
				o.verdict = fmt.Sprintf("counted %d on a session said to be new", o.value)
			}
			expect, unanswered = o.value, 0
		}
		s.mu.Lock()
		s.outcomes = append(s.outcomes, o)
		s.mu.Unlock()
	}
}

func (s *chaosSession) since(t time.Time) []outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []outcome
	for _, o := range s.outcomes {
		if !o.at.Before(t) {
			out = append(out, o)
		}
	}
	return out
}

func (s *chaosSession) workerID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.worker
}

// TestChaos runs the seed scenario's 25 sessions while, one after the other: codeboxd is
// killed (SIGKILL) and started again, containerd restarts, one worker's task is killed from
// outside, one worker runs out of memory. After each fault every session either kept its
// state or was told it was lost, and no call of a session the fault did not touch failed
// outside the fault's window; at the end nothing is left that is not a live worker's.
func TestChaos(t *testing.T) {
	c := startOwnContainerd(t)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	flags := []string{"--listen", listen, "--min-idle-workers", "5", "--max-total-workers", "34",
		"--worker-ram-mb", "256", "--log-level", "info"}
	d := startOwnDaemon(t, c, flags...)
	ctx := context.Background()

	sessions := make([]*chaosSession, chaosUsers)
	var setup sync.WaitGroup
	for i := range sessions {
		sessions[i] = &chaosSession{user: fmt.Sprintf("e2e-chaos-%02d-%s", i, randomHex(2)), inject: make(chan string, 1)}
		setup.Add(1)
		go func() {
			defer setup.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			if _, err := d.client.Execute(cctx, sessions[i].user, "counter = 0", 0); err != nil {
				t.Errorf("set up %s: %v", sessions[i].user, err)
			}
		}()
	}
	setup.Wait()
	if t.Failed() {
		return
	}
	stop := make(chan struct{})
	var load sync.WaitGroup
	for _, s := range sessions {
		load.Add(1)
		go s.run(ctx, d.client, stop, &load)
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		load.Wait()
	}()
	settle := func() { time.Sleep(4 * time.Second) }
	settle()

	type fault struct {
		name     string
		affected map[string]bool // sessions the fault may cost their state
		start    time.Time
		end      time.Time // when the system was whole again
	}
	var faults []*fault
	healthy := func(dd *daemon) time.Time {
		eventually(t, time.Minute, "codeboxd healthy", func() bool {
			code, _, _ := dd.request(t, "GET", "/healthz", "", nil)
			return code == 200
		})
		return time.Now()
	}

	// 1. codeboxd killed and started again: every call fails while it is down; all sessions
	// keep their state (the new daemon adopts the workers).
	f := &fault{name: "SIGKILL codeboxd, start again", start: time.Now()}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d2 := startOwnDaemonAs(t, c, d.token, append(flags, "--state-dir", d.stateDir)...)
	f.end = healthy(d2)
	faults = append(faults, f)
	settle()

	// 2. containerd restarted: calls go on (they go straight to the agents).
	f = &fault{name: "restart containerd", start: time.Now()}
	c.stop(syscall.SIGTERM)
	time.Sleep(time.Second)
	c.start()
	f.end = healthy(d2)
	faults = append(faults, f)
	settle()

	// 3. one worker's task killed from outside: its session is told its state is lost.
	victim := sessions[3]
	f = &fault{name: "kill one worker's task", start: time.Now(), affected: map[string]bool{victim.user: true}}
	killOwnTask(t, c, victim.workerID())
	waitFresh(t, victim, f.start)
	f.end = time.Now()
	faults = append(faults, f)
	settle()

	// 4. one worker out of memory: its kernel dies and is restarted, the session is told.
	bomb := sessions[7]
	f = &fault{name: "OOM one worker", start: time.Now(), affected: map[string]bool{bomb.user: true}}
	bomb.inject <- "hog = []\nwhile True:\n    hog.append(b'x' * (16 << 20))"
	waitFresh(t, bomb, f.start)
	f.end = time.Now()
	faults = append(faults, f)
	settle()

	close(stop)
	load.Wait()

	// The verdicts, fault by fault.
	for i, f := range faults {
		next := time.Now()
		if i+1 < len(faults) {
			next = faults[i+1].start
		}
		var firstFail, lastFail time.Time
		failed, calls := 0, 0
		seen := map[string]int{}
		for _, s := range sessions {
			for _, o := range s.since(f.start) {
				if !o.at.Before(next) {
					break
				}
				calls++
				if o.verdict != "" && o.verdict != "injected" {
					t.Errorf("%s: %s: %s", f.name, s.user, o.verdict)
				}
				if o.status == 200 || o.status == 400 && o.verdict == "injected" {
					continue
				}
				failed++
				if firstFail.IsZero() {
					firstFail = o.at
				}
				lastFail = o.at
				seen[summarise(o)]++
				inWindow := !o.at.After(f.end.Add(time.Second))
				if !f.affected[s.user] && !inWindow && o.verdict != "injected" {
					t.Errorf("%s: %s (not affected) failed outside the fault's window, %s after it: %d %s",
						f.name, s.user, o.at.Sub(f.end).Round(time.Millisecond), o.status, o.detail)
				}
				if f.affected[s.user] && o.status != 503 && o.status != 0 {
					t.Errorf("%s: %s: %d %s, want a 503 saying what was lost", f.name, s.user, o.status, o.detail)
				}
			}
		}
		window := "none"
		if failed > 0 {
			window = fmt.Sprintf("%s to %s after the fault", firstFail.Sub(f.start).Round(time.Millisecond), lastFail.Sub(f.start).Round(time.Millisecond))
		}
		t.Logf("fault %q: whole again after %s; %d calls, %d failed (window: %s): %v",
			f.name, f.end.Sub(f.start).Round(time.Millisecond), calls, failed, window, seen)
	}

	// Leaks: everything there is belongs to a live worker.
	if err := checkSettledResources(ctx, d2, c.socket); err != nil {
		t.Errorf("after the faults: %v", err)
	}
	for _, s := range sessions {
		d2.client.Release(ctx, s.user)
	}
}

// TestSIGKILLWhileCreating kills codeboxd while it makes workers, at several points of
// their making (network and disk, container, kernel start), and starts it again on the same
// state each time. A half-made worker is either adopted or removed with all it had: once
// the pool is full, what exists is exactly the live workers'.
//
// A kill during the CNI ADD (a few tens of ms) is hit only now and then, so the test also
// leaves what one leaves — host-local's reservation of an address, with no result in
// libcni's cache — before the last start, for the real plugins to release.
func TestSIGKILLWhileCreating(t *testing.T) {
	c := startOwnContainerd(t)
	flags := []string{"--min-idle-workers", "6", "--max-total-workers", "10", "--log-level", "info"}
	d := startOwnDaemon(t, c, flags...)
	midway := 0 // kills that came while a worker was being made
	var started []*daemon
	kills := []time.Duration{0, 20 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
	for i, after := range kills {
		waitStatus(t, d, "creating", time.Minute, func(s api.Status) bool { return s.CreatingWorkers > 0 })
		time.Sleep(after)
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		if st.CreatingWorkers > 0 {
			midway++
		}
		t.Logf("killed %s into a creation: %d workers made, %d being made", after, st.TotalWorkers-st.CreatingWorkers, st.CreatingWorkers)
		if i == len(kills)-1 {
			planted := filepath.Join("/var/lib/cni/networks", bridge, "10.214.255.254")
			if err := os.WriteFile(planted, []byte("w-000000000000\r\neth0"), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(planted) })
		}
		d = startOwnDaemonAs(t, c, d.token, append(flags, "--state-dir", d.stateDir)...)
		started = append(started, d)
	}
	waitStatus(t, d, "pool full", 2*time.Minute, func(s api.Status) bool { return s.IdleWorkers == 6 && s.CreatingWorkers == 0 })
	if err := checkSettledResources(context.Background(), d, c.socket); err != nil {
		t.Error(err)
	}
	// What the starts found of the workers cut short, for the log: which parts a kill hits
	// varies from run to run.
	found := map[string]int{}
	for _, dd := range started {
		for name, needle := range map[string]string{"containers": "worker not adopted", "leases": `what="lease`,
			"snapshots": `what="snapshot`, "shims": `what="shim`, "disks": "leftover disk",
			"CNI allocations": "cni allocation", "network namespaces": `what="netns`} {
			found[name] += strings.Count(dd.logs.String(), needle)
		}
	}
	t.Logf("removed at the starts: %v", found)
	if !strings.Contains(d.logs.String(), "cni allocation of w-000000000000") {
		t.Errorf("the reservation of a worker killed during its CNI ADD was not released")
	}
	if midway == 0 {
		t.Errorf("no kill came while a worker was being made")
	}
}

// summarise names a failure for the report.
func summarise(o outcome) string {
	d := o.detail
	if i := strings.IndexAny(d, ";:("); i > 0 {
		d = d[:i]
	}
	if len(d) > 60 {
		d = d[:60]
	}
	return fmt.Sprintf("%d %s", o.status, d)
}

// waitFresh waits until s's calls since t came back in a new session.
func waitFresh(t *testing.T, s *chaosSession, since time.Time) {
	t.Helper()
	eventually(t, time.Minute, s.user+" reporting a new session after the fault", func() bool {
		for _, o := range s.since(since) {
			if o.status == 200 && o.fresh {
				return true
			}
		}
		return false
	})
}

func killOwnTask(t *testing.T, c *ownContainerd, id string) {
	t.Helper()
	cl, err := client.New(c.socket, client.WithDefaultNamespace(ownNamespace))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctr, err := cl.LoadContainer(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(context.Background(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// checkSettledResources compares what exists with the daemon's live workers once it is
// quiet. After a fault the pool refills in the background, and a worker half made (or half
// destroyed) has some of its resources and is not counted, so one look can see a leak that
// is not one; a real leak outlasts the deadline and is reported.
func checkSettledResources(ctx context.Context, d *daemon, socket string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		before, err := d.client.Status(ctx)
		if err != nil {
			return err
		}
		if before.CreatingWorkers > 0 {
			err = fmt.Errorf("%d workers still being created", before.CreatingWorkers)
		} else {
			err = checkOwnResources(socket, d.stateDir, before.TotalWorkers, before.BusyWorkers)
			after, serr := d.client.Status(ctx)
			if serr != nil {
				return serr
			}
			if err == nil && *after == *before {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("the pool changed while its resources were counted: %+v, then %+v", *before, *after)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("for a minute: %w", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkOwnResources compares what exists with the number of live workers (containers, their
// running tasks and shims, snapshots, network namespaces, CNI allocations) and of those
// serving a session (disks mounted, their files and loop devices: a pool worker gets its
// disk when a session takes it); no lease of a creation is left; and the firewall's chains
// hold their rules.
func checkOwnResources(socket, stateDir string, workers, sessions int) error {
	cl, err := client.New(socket, client.WithDefaultNamespace(ownNamespace))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	counts := map[string]int{}
	cs, err := cl.Containers(ctx)
	if err != nil {
		return err
	}
	counts["containers"] = len(cs)
	for _, ct := range cs {
		if task, err := ct.Task(ctx, nil); err == nil {
			if s, err := task.Status(ctx); err == nil && s.Status == client.Running {
				counts["running tasks"]++
			}
		}
	}
	snaps := cl.SnapshotService("overlayfs")
	defer snaps.Close()
	ids := map[string]bool{}
	for _, ct := range cs {
		ids[ct.ID()] = true
	}
	var orphans []string
	snaps.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, "w-") {
			counts["snapshots"]++
			if !ids[info.Name] {
				orphans = append(orphans, fmt.Sprintf("snapshot %s of no container (%s, labels %v)", info.Name, info.Kind, info.Labels))
			}
		}
		return nil
	})
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, " "+filepath.Join(stateDir, "mounts")+"/") {
			counts["disk mounts"]++
		}
	}
	counts["shims"] = len(runtime.ShimsOf(ownNamespace, socket))
	disks, _ := filepath.Glob(filepath.Join(stateDir, "disks", "*.img"))
	counts["disk files"] = len(disks)
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(b), filepath.Join(stateDir, "disks")) {
			counts["loop devices"]++
		}
	}
	nsEntries, _ := os.ReadDir(netns.NetNSDirFor(bridge))
	counts["network namespaces"] = len(nsEntries)
	if entries, err := os.ReadDir("/var/lib/cni/networks/" + bridge); err == nil {
		for _, e := range entries {
			if net.ParseIP(e.Name()) != nil {
				counts["CNI allocations"]++
			}
		}
	}
	var problems []string
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		want := workers
		if strings.HasPrefix(k, "disk") || k == "loop devices" {
			want = sessions
		}
		if counts[k] != want {
			problems = append(problems, fmt.Sprintf("%d %s (want %d)", counts[k], k, want))
		}
	}
	problems = append(problems, orphans...)
	problems = append(problems, creationLeases(ctx, cl)...)
	if err := checkFirewall(); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d live workers, %d of them in a session, but %s", workers, sessions, strings.Join(problems, ", "))
	}
	return nil
}

// checkFirewall checks the tests' bridge is fenced: its chains hold their rules and are
// hooked in first, for IPv4 and IPv6.
func checkFirewall() error {
	fw, err := firewall.New(bridge, firewall.Egress{DNSPort: egress.DNSPort, ProxyPort: egress.ProxyPort,
		NFLOGGroup: firewall.NFLOGGroup(bridge)})
	if err != nil {
		return err
	}
	problems, err := fw.Verify()
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return fmt.Errorf("firewall: %s", strings.Join(problems, "; "))
	}
	return nil
}
