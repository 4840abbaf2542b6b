package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
)

// envDaemon is a daemon on fw serving the environments of file, under a cap of max
// workers.
func envDaemon(t *testing.T, fw *fakeWorld, max int, file string) *Daemon {
	t.Helper()
	envs, err := environments.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	resolved, err := environments.Resolve(envs, environments.Defaults{MaxTotalWorkers: max})
	if err != nil {
		t.Fatal(err)
	}
	return fw.daemon(Config{MaxTotalWorkers: max, Environments: resolved,
		WorkerCPU: 1, WorkerRAMMB: 512, WorkerDiskMB: 64, WorkerPids: 128,
		MaxSessionCPU: 2, MaxSessionRAMMB: 1024, MaxSessionDiskMB: 256, MaxSessionPids: 512})
}

func (d *Daemon) poolState(name string) (idle, busy, creating int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.poolOf(name)
	return len(p.idle), p.busy(), p.creating
}

// A burst on one environment takes what the cap allows, never another's floor.
func TestBurstKeepsOtherFloors(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 2}]}`)
	d.Start()
	waitFor(t, "b's floor", func() bool { idle, _, _ := d.poolState("b"); return idle == 2 })
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.takeWorker(context.Background(), environments.Default); err == nil {
				ok.Add(1)
			} else {
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 4 || refused.Load() != 6 {
		t.Fatalf("a burst of 10 on default under a cap of 6 with b's floor 2: %d served, %d refused; want 4 and 6", ok.Load(), refused.Load())
	}
	waitFor(t, "b's floor kept", func() bool { idle, _, c := d.poolState("b"); return idle == 2 && c == 0 })
	if st := d.Status(); st.TotalWorkers > 6 {
		t.Fatalf("over the cap: %+v", st)
	}
}

// At the cap, a new session takes the place of an idle worker another pool holds beyond
// its floor.
func TestSessionTakesSurplusOfAnotherPool(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 3, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	d.Start()
	d.mu.Lock()
	for i := 0; i < 3; i++ { // b saw a burst of 3
		d.poolOf("b").demand.Observe(time.Now())
	}
	d.refillLocked()
	d.mu.Unlock()
	waitFor(t, "b's learned target", func() bool { idle, _, _ := d.poolState("b"); return idle == 3 })
	w, err := d.takeWorker(context.Background(), environments.Default)
	if err != nil {
		t.Fatalf("a default session at the cap, with b holding 3 idle above its floor 0: %v", err)
	}
	if w.env != environments.Default {
		t.Fatalf("got a worker of %q", w.env)
	}
	if idle, _, _ := d.poolState("b"); idle != 2 {
		t.Fatalf("b keeps %d idle, want 2", idle)
	}
	if st := d.Status(); st.TotalWorkers > 3 {
		t.Fatalf("over the cap: %+v", st)
	}
}

// An image that cannot run the agent makes its environment unavailable, with a reason its
// sessions get in a 503; the others serve.
func TestUnavailableEnvironments(t *testing.T) {
	fw := newWorld(t)
	fw.probes["noipy"] = &runtime.Probe{ExitCode: 4, Stderr: "codebox-agent: IPython does not import\n"}
	fw.exitAtBoot["nopy"] = 127 // its probe passed; its workers' agents do not start
	d := envDaemon(t, fw, 6, `{"environments": [
		{"name": "noipy", "image": "img:a"}, {"name": "nopy", "image": "img:b"},
		{"name": "badseed", "image": "img:c", "seed": {"python": "raise"}}]}`)
	d.Start()
	waitFor(t, "nopy and badseed to fail", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.poolOf("nopy").unavailable != "" && d.poolOf("badseed").unavailable != ""
	})
	for name, want := range map[string]string{
		"noipy":   "its image cannot run the agent: IPython does not import with its python3",
		"nopy":    "its image cannot run the agent: no python3 on its PATH",
		"badseed": "its python seed raised NameError",
	} {
		_, err := d.takeWorker(context.Background(), name)
		var p *api.Problem
		if !errors.As(err, &p) || p.Kind != api.Busy || !strings.Contains(p.Detail, want) || !strings.Contains(p.Detail, name) {
			t.Errorf("a session of %s: %v, want a 503 saying %q", name, err, want)
		}
	}
	envs, err := d.Environments(as("ops", true))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range envs {
		if e.Available != (e.Name == environments.Default) || (e.Name != environments.Default && e.UnavailableReason == "") {
			t.Errorf("environment %+v", e)
		}
	}
	if _, err := d.takeWorker(context.Background(), environments.Default); err != nil {
		t.Fatalf("the default serves on: %v", err)
	}
	if st := d.Status(); st.IsInitializing {
		t.Fatalf("unavailable pools hold up is_initializing: %+v", st)
	}
}

// Seeds run in every worker, by language in order, before it joins its pool; sessions take
// their environment's limits and variables; a language the image lacks is refused.
func TestEnvironmentSeedsAndShape(t *testing.T) {
	fw := newWorld(t)
	fw.probes["b"] = &runtime.Probe{Stdout: `{"python": "3.12.0", "ipython": "8.20.0", "languages": ["python"]}`}
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 1,
		"limits": {"memory_mb": 300}, "env": {"B_VAR": "from-b", "BOTH": "b"},
		"seed": {"bash": "x=1", "python": "import pandas"}}]}`)
	d.Start()
	waitFor(t, "b's floor", func() bool { idle, _, _ := d.poolState("b"); return idle == 1 })
	fw.mu.Lock()
	seeds := slices.Clone(fw.seeds)
	fw.mu.Unlock()
	if want := []string{"python: import pandas", "bash: x=1"}; !slices.Equal(seeds, want) {
		t.Fatalf("seeds %q, want %q", seeds, want)
	}

	ctx := as("alice", false)
	s, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "in-b", Environment: "b", Env: map[string]string{"BOTH": "mine"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Environment != "b" || s.Limits.MemoryMB != 300 || s.Limits.CPU != d.cfg.WorkerCPU {
		t.Fatalf("session of b: %+v", s)
	}
	w := fw.worker(s.WorkerID)
	w.agent.mu.Lock()
	env := w.agent.env
	w.agent.mu.Unlock()
	if env["B_VAR"] != "from-b" || env["BOTH"] != "mine" {
		t.Fatalf("the session's variables %v: want b's, the session's over them", env)
	}
	if _, err := d.CreateSession(ctx, api.CreateSessionRequest{Environment: "nope"}); err == nil ||
		!strings.Contains(err.Error(), `unknown environment "nope" (known: default, b)`) {
		t.Fatalf("an unknown environment: %v", err)
	}
	_, err = api.Collect(api.WithCaller(context.Background(), api.Caller{Tenant: "alice"}), d, "in-b",
		api.ExecuteRequest{Code: "echo", Language: "bash"})
	if err == nil || !strings.Contains(err.Error(), `environment "b" does not run bash (it runs python)`) {
		t.Fatalf("bash in b: %v", err)
	}
	envs, _ := d.Environments(ctx)
	if len(envs) != 2 || envs[1].Pool != nil || !envs[1].Seed || !slices.Equal(envs[1].Languages, []string{"python"}) {
		t.Fatalf("environments as a tenant: %+v", envs)
	}
}

// A pool above its target once demand has decayed gives the surplus up.
func TestTrimAfterQuiet(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 1}]}`)
	d.Start()
	d.mu.Lock()
	for i := 0; i < 4; i++ {
		d.poolOf("b").demand.Observe(time.Now())
	}
	d.refillLocked()
	d.mu.Unlock()
	waitFor(t, "b's learned target", func() bool { idle, _, _ := d.poolState("b"); return idle == 4 })
	d.trim()
	if idle, _, _ := d.poolState("b"); idle != 4 {
		t.Fatalf("trimmed while the demand is fresh: %d idle", idle)
	}
	d.mu.Lock()
	d.poolOf("b").demand = environments.NewDemand(environments.DemandWindow, environments.DemandHalfLife) // quiet since
	d.mu.Unlock()
	d.trim()
	if idle, _, _ := d.poolState("b"); idle != 1 {
		t.Fatalf("after quiet: %d idle, want the floor 1", idle)
	}
}

// A restarted codeboxd adopts idle workers into their own pool when their environment is
// still what made them (its fingerprint); a session's worker stays its session's even when its environment
// is gone from the file.
func TestAdoptIntoEnvironments(t *testing.T) {
	fw := newWorld(t)
	d0 := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	for id, env := range map[string]string{"w-b-idle": "b", "w-b-old": "b", "w-gone-idle": "gone", "w-gone-session": "gone"} {
		spec := labelsFor(fw, d0, id)
		l := ParseLabels(spec.Labels)
		l.Environment, l.Fingerprint = env, "something else"
		if env == "b" && id != "w-b-old" { // made by b as it is now; w-b-old by b as it was
			l.Fingerprint = d0.poolOf("b").fingerprint
		}
		spec.Labels = l.Encode()
		if _, err := (fakeContainers{fw}).Start(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		fw.mu.Lock()
		fw.managed[id] = spec.Labels
		fw.mu.Unlock()
		fakeDisks{fw}.Prepare(id)
		fakeDisks{fw}.Make(context.Background(), id, 1, 0)
	}
	d0.assigned.set("w-b-idle", record{State: stateIdle})
	d0.assigned.set("w-b-old", record{State: stateIdle})
	d0.assigned.set("w-gone-idle", record{State: stateIdle})
	d0.assigned.set("w-gone-session", record{State: stateSession, User: "alice", Shape: &shapeRecord{Environment: "gone", IdleTimeout: time.Hour}})

	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	if err := d.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	for id, destroyed := range map[string]bool{"w-b-idle": false, "w-b-old": true, "w-gone-idle": true, "w-gone-session": false} {
		if fw.wasDestroyed(id) != destroyed {
			t.Errorf("%s destroyed %v, want %v", id, !destroyed, destroyed)
		}
	}
	if idle, busy, _ := d.poolState("b"); idle != 1 || busy != 0 {
		t.Fatalf("b after recovery: %d idle %d busy", idle, busy)
	}
	if r, p := run(t, d, "alice", "ok", 0); p != nil || r.WorkerID != "w-gone-session" {
		t.Fatalf("alice's session of a removed environment: %+v %v", r, p)
	}
}

// A worker made while its environment was taken out of service is given up, not left idle
// where no session can take it.
func TestNoIdleWorkerInAnUnavailablePool(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	d.Start()
	d.mu.Lock()
	p := d.poolOf("b")
	d.markUnavailableLocked(p, "its image cannot run the agent: a test says so")
	p.creating++
	d.wg.Add(1)
	go d.createForPool(p) // as a refill started just before
	d.mu.Unlock()
	waitFor(t, "the creation to end", func() bool { _, _, c := d.poolState("b"); return c == 0 })
	waitFor(t, "its worker given up", func() bool {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		return len(fw.destroyed) == 1
	})
	if idle, busy, _ := d.poolState("b"); idle != 0 || busy != 0 {
		t.Fatalf("b holds %d idle, %d busy", idle, busy)
	}
	// Five minutes later it is tried again.
	d.mu.Lock()
	p.unavailableAt = time.Now().Add(-retryUnavailable)
	d.mu.Unlock()
	d.retryUnavailable()
	if _, err := d.takeWorker(context.Background(), "b"); err != nil {
		t.Fatalf("b after its retry: %v", err)
	}
}

// Sessions waiting in one pool hold their places under the cap: another pool's session at
// the cap is refused at once, not left waiting for a worker that cannot come.
func TestWaitersOfOtherPoolsCount(t *testing.T) {
	fw := newWorld(t)
	f := &fakeFactory{gate: make(chan struct{})}
	fw.factory = f
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	d.Start()
	got := make(chan error, 6)
	for i := 0; i < 6; i++ {
		go func() { _, err := d.takeWorker(context.Background(), environments.Default); got <- err }()
	}
	waitFor(t, "six default sessions waiting", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.pools[0].waiters) == 6
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := d.takeWorker(ctx, "b")
	var p *api.Problem
	if !errors.As(err, &p) || p.Kind != api.Busy || !strings.Contains(p.Detail, "max-total-workers is 6") {
		t.Fatalf("a session of b with six default ones waiting under a cap of 6: %v, want a 503 at once", err)
	}
	for i := 0; i < 6; i++ {
		f.gate <- struct{}{}
	}
	for i := 0; i < 6; i++ {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
}

// Refused sessions are no demand: a pool at its cap does not learn a target from them.
func TestRefusalsAreNoDemand(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 2, `{"environments": []}`)
	d.Start()
	for i := 0; i < 2; i++ {
		if _, err := d.takeWorker(context.Background(), environments.Default); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 20; i++ {
		if _, err := d.takeWorker(context.Background(), environments.Default); err == nil {
			t.Fatal("over the cap")
		}
	}
	d.mu.Lock()
	level := d.pools[0].demand.Level(time.Now())
	d.mu.Unlock()
	if level != 2 {
		t.Fatalf("demand %g after 2 served and 20 refused, want 2", level)
	}
}

// An environment's variables and a session's together stay within a session's bounds.
func TestEnvironmentVariablesCountAgainstTheBounds(t *testing.T) {
	fw := newWorld(t)
	vars := map[string]string{}
	for i := 0; i < api.MaxEnvVars; i++ {
		vars[fmt.Sprintf("E%d", i)] = "x"
	}
	b, _ := json.Marshal(map[string]any{"environments": []any{map[string]any{"name": "full", "image": "img", "min_idle": 0, "env": vars}}})
	d := envDaemon(t, fw, 4, string(b))
	_, err := d.CreateSession(as("alice", false), api.CreateSessionRequest{Environment: "full", Env: map[string]string{"MINE": "1"}})
	if err == nil || !strings.Contains(err.Error(), `with the variables of environment "full"`) {
		t.Fatalf("one variable past the bound: %v", err)
	}
}

// max_idle bounds what a pool learns: 0 keeps no idle worker, whatever the demand.
func TestMaxIdleBoundsTheTarget(t *testing.T) {
	fw := newWorld(t)
	d := envDaemon(t, fw, 6, `{"environments": [{"name": "default", "min_idle": 0, "max_idle": 0}, {"name": "b", "image": "img:b", "min_idle": 0, "max_idle": 2}]}`)
	d.Start()
	for i := 0; i < 4; i++ {
		if _, err := d.takeWorker(context.Background(), environments.Default); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	for i := 0; i < 5; i++ {
		d.poolOf("b").demand.Observe(time.Now())
	}
	d.refillLocked()
	d.mu.Unlock()
	waitFor(t, "b's bounded target", func() bool { idle, _, c := d.poolState("b"); return idle == 2 && c == 0 })
	time.Sleep(50 * time.Millisecond)
	if idle, _, c := d.poolState(environments.Default); idle != 0 || c != 0 {
		t.Fatalf("default with max_idle 0 after 4 sessions: %d idle, %d creating", idle, c)
	}
	if idle, _, _ := d.poolState("b"); idle != 2 {
		t.Fatalf("b with max_idle 2 after 5 sessions: %d idle", idle)
	}
}
