package daemon

import (
	"context"
	"errors"
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

// A restarted codeboxd adopts idle workers into their own pool when their environment
// still has their image; a session's worker stays its session's even when its environment
// is gone from the file.
func TestAdoptIntoEnvironments(t *testing.T) {
	fw := newWorld(t)
	d0 := envDaemon(t, fw, 6, `{"environments": [{"name": "b", "image": "img:b", "min_idle": 0}]}`)
	for id, env := range map[string]string{"w-b-idle": "b", "w-b-old": "b", "w-gone-idle": "gone", "w-gone-session": "gone"} {
		spec := labelsFor(fw, id)
		l := ParseLabels(spec.Labels)
		l.Environment = env
		spec.Labels = l.Encode()
		if _, err := (fakeContainers{fw}).Start(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		fw.mu.Lock()
		fw.managed[id] = spec.Labels
		fw.images[id] = "img:" + env
		fw.mu.Unlock()
		fakeDisks{fw}.Prepare(id)
		fakeDisks{fw}.Make(context.Background(), id, 1, 0)
	}
	fw.images["w-b-old"] = "img:b-before"
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
