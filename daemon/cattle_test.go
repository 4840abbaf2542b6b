package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
)

// run executes code in user's session and returns the answer or the Problem.
func run(t *testing.T, d *Daemon, user, code string, timeout float64) (*api.ExecuteResponse, *api.Problem) {
	t.Helper()
	req := api.ExecuteRequest{Code: code}
	if timeout > 0 {
		req.Timeout = &timeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := api.Collect(ctx, d, user, req)
	if err == nil {
		return resp, nil
	}
	var p *api.Problem
	if !errors.As(err, &p) {
		t.Fatalf("%q: %v is no Problem", code, err)
	}
	return nil, p
}

// TestCattle is the cattle table of docs/ARCHITECTURE.md, row by row: what the daemon
// answers when a call goes wrong, and what becomes of the worker.
func TestCattle(t *testing.T) {

	type want struct {
		kind      api.Kind
		fields    map[string]any // fields the answer must carry
		destroyed bool           // the worker was destroyed
		restarted bool           // its kernel was restarted in place
		same      bool           // the next call runs on the same worker
		fresh     bool           // the next call says new_session
	}
	for _, row := range []struct {
		name    string
		code    string
		timeout float64
		during  func(fw *fakeWorld, d *Daemon, w *fakeWorker) // while the call runs
		between func(fw *fakeWorld, w *fakeWorker)            // after a good call, before this one
		want    want
	}{
		{name: "code runs past its limit, stops on SIGINT", code: "stops-on-sigint", timeout: 0.05,
			want: want{kind: api.Timeout, fields: map[string]any{"state_preserved": true}, same: true}},
		{name: "code runs past its limit, misses the first SIGINT", code: "misses-a-sigint", timeout: 0.05,
			want: want{kind: api.Timeout, fields: map[string]any{"state_preserved": true}, same: true}},
		{name: "code runs past its limit, its language interpreter is killed", code: "loses-language", timeout: 0.05,
			want: want{kind: api.Timeout, fields: map[string]any{"state_preserved": false}, same: true}},
		{name: "code runs past its limit, ignores SIGINT", code: "ignores-sigint", timeout: 0.05,
			want: want{kind: api.Timeout, fields: map[string]any{"state_preserved": false}, destroyed: true, fresh: true}},
		{name: "agent connection drops, task exited (memory limit)", code: "dies",
			want: want{kind: api.Lost, fields: map[string]any{"kernel_restarted": true, "files_kept": true}, restarted: true, same: true, fresh: true}},
		{name: "agent connection drops, task still running", code: "drops",
			want: want{kind: api.Lost, fields: map[string]any{"files_kept": false}, destroyed: true, fresh: true}},
		{name: "the worker sent frames outside a call", code: "misbehaves",
			want: want{kind: api.Lost, fields: map[string]any{"files_kept": false}, destroyed: true, fresh: true}},
		{name: "the task exited between calls", code: "ok",
			between: func(fw *fakeWorld, w *fakeWorker) { w.task.exit(137) },
			want:    want{kind: api.Lost, fields: map[string]any{"files_kept": false}, destroyed: true, fresh: true}},
		{name: "release during a call", code: "ignores-sigint",
			during: func(fw *fakeWorld, d *Daemon, w *fakeWorker) {
				if err := d.Release(context.Background(), "u"); err != nil {
					t.Errorf("release: %v", err)
				}
			},
			want: want{kind: api.Lost, fields: map[string]any{"state_preserved": false}, destroyed: true, fresh: true}},
	} {
		t.Run(row.name, func(t *testing.T) {
			fw := newWorld(t)
			fw.timings = timings{interruptGrace: 300 * time.Millisecond, exitGrace: 300 * time.Millisecond,
				interruptEvery: 50 * time.Millisecond, busyAfter: defaultTimings.busyAfter}
			d := fw.daemon(Config{})
			d.Start()
			first, p := run(t, d, "u", "ok", 0)
			if p != nil || !first.NewSession {
				t.Fatalf("first call: %+v %v", first, p)
			}
			w := fw.worker(first.WorkerID)
			if row.between != nil {
				row.between(fw, w)
				time.Sleep(50 * time.Millisecond) // the exit reaches the daemon
			}
			type result struct{ p *api.Problem }
			got := make(chan result, 1)
			go func() {
				_, p := run(t, d, "u", row.code, row.timeout)
				got <- result{p}
			}()
			if row.during != nil {
				time.Sleep(100 * time.Millisecond)
				row.during(fw, d, w)
			}
			var r result
			select {
			case r = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not end")
			}
			if r.p == nil || r.p.Kind != row.want.kind {
				t.Fatalf("answer %+v, want kind %v", r.p, row.want.kind)
			}
			fields := bodyFields(t, r.p.After)
			for k, v := range row.want.fields {
				if fields[k] != v {
					t.Errorf("field %s = %v, want %v (%+v)", k, fields[k], v, fields)
				}
			}
			if got := fw.wasDestroyed(w.id); got != row.want.destroyed {
				t.Errorf("worker destroyed: %v, want %v", got, row.want.destroyed)
			}
			fw.mu.Lock()
			restarted := len(fw.restarted) > 0
			fw.mu.Unlock()
			if restarted != row.want.restarted {
				t.Errorf("kernel restarted: %v, want %v", restarted, row.want.restarted)
			}
			next, p := run(t, d, "u", "ok", 0)
			if p != nil {
				t.Fatalf("the next call: %v", p)
			}
			if (next.WorkerID == w.id) != row.want.same || next.NewSession != row.want.fresh {
				t.Errorf("next call on %s (new_session %v); want same worker %v, new_session %v",
					next.WorkerID, next.NewSession, row.want.same, row.want.fresh)
			}
			if strings.Contains(row.name, "SIGINT") {
				w.task.mu.Lock()
				n := len(w.task.signals)
				w.task.mu.Unlock()
				if n == 0 {
					t.Error("the kernel was not interrupted")
				}
			}
		})
	}
}

// TestRecoverDecisions: a new codeboxd adopts what its records say served a session or the
// pool, and destroys what was retired, what it has no record of, and what cannot be adopted.
func TestRecoverDecisions(t *testing.T) {
	fw := newWorld(t)
	// carol's worker (below) answers once interrupted: after busyAfter.
	fw.timings = defaultTimings
	fw.timings.busyAfter = 200 * time.Millisecond
	// The workers an earlier codeboxd left.
	d0 := fw.daemon(Config{})
	for _, id := range []string{"w-idle", "w-alice", "w-retired", "w-unknown", "w-dead", "w-busy"} {
		spec := labelsFor(fw, d0, id)
		if _, err := (fakeContainers{fw}).Start(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		fw.mu.Lock()
		fw.managed[id] = spec.Labels
		fw.mu.Unlock()
		fakeDisks{fw}.Prepare(id)
		fakeDisks{fw}.Make(context.Background(), id, 1, 0)
	}
	d0.assigned.set("w-idle", record{State: stateIdle})
	d0.assigned.set("w-alice", record{State: stateSession, User: "alice"})
	d0.assigned.set("w-retired", record{State: stateRetired})
	d0.assigned.set("w-dead", record{State: stateSession, User: "bob"})
	d0.assigned.set("w-busy", record{State: stateSession, User: "carol"})
	fw.noAdopt["w-dead"] = true
	// carol's worker still runs a call the earlier codeboxd left: it answers once
	// interrupted.
	busy := fw.worker("w-busy")
	busy.agent.busy.Store(true)
	busy.task.mu.Lock()
	busy.task.onSignal = func(syscall.Signal) { busy.agent.busy.Store(false) }
	busy.task.mu.Unlock()

	d := fw.daemon(Config{})
	if err := d.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"w-retired", "w-unknown", "w-dead"} {
		if !fw.wasDestroyed(id) {
			t.Errorf("%s was not destroyed", id)
		}
	}
	for _, id := range []string{"w-idle", "w-alice", "w-busy"} {
		if fw.wasDestroyed(id) {
			t.Errorf("%s was destroyed, want it adopted", id)
		}
	}
	st := d.Status()
	if st.IdleWorkers != 1 || st.TotalWorkers != 3 {
		t.Fatalf("after recovery: %+v, want 1 idle of 3", st)
	}
	for user, id := range map[string]string{"alice": "w-alice", "carol": "w-busy"} {
		r, p := run(t, d, user, "ok", 0)
		if p != nil || r.WorkerID != id || r.NewSession {
			t.Fatalf("%s after recovery: %+v %v, want its worker %s", user, r, p, id)
		}
	}
	if r, p := run(t, d, "bob", "ok", 0); p != nil || !r.NewSession {
		t.Fatalf("bob, whose worker died: %+v %v, want a new session", r, p)
	}
}

// labelsFor is the spec of a worker d made for its default environment.
func labelsFor(fw *fakeWorld, d *Daemon, id string) runtime.WorkerSpec {
	fw.mu.Lock()
	fw.nextIP++
	ip := "10.99.1." + strconv.Itoa(fw.nextIP)
	fw.mu.Unlock()
	return runtime.WorkerSpec{ID: id, Labels: Labels{IP: net.ParseIP(ip), NetNS: "/fake/netns/" + id,
		Environment: environments.Default, Fingerprint: d.pools[0].fingerprint}.Encode()}
}

// TestNoCreationBeforeStart: an adopted worker that exits while Recover still runs asks for a
// refill, which must wait for Start — Recover's sweep removes the leftovers of half-made
// workers, a creation's among them.
func TestNoCreationBeforeStart(t *testing.T) {
	fw := newWorld(t)
	d0 := fw.daemon(Config{})
	spec := labelsFor(fw, d0, "w-idle")
	if _, err := (fakeContainers{fw}).Start(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	fw.mu.Lock()
	fw.managed["w-idle"] = spec.Labels
	fw.mu.Unlock()
	fakeDisks{fw}.Prepare("w-idle")
	fakeDisks{fw}.Make(context.Background(), "w-idle", 1, 0)
	d0.assigned.set("w-idle", record{State: stateIdle})

	d := fw.daemon(Config{MinIdleWorkers: 1})
	if err := d.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	fw.worker("w-idle").task.exit(137)
	waitFor(t, "the exited worker destroyed", func() bool { return fw.wasDestroyed("w-idle") })
	if st := d.Status(); st.CreatingWorkers != 0 || st.TotalWorkers != 0 {
		t.Fatalf("before Start: %+v, want no worker made", st)
	}
	d.Start()
	waitFor(t, "the pool filled after Start", func() bool { return d.Status().IdleWorkers == 1 })
}

// bodyFields is an Aftermath as the fields of an error body.
func bodyFields(t *testing.T, a *api.Aftermath) map[string]any {
	t.Helper()
	m := map[string]any{}
	if a == nil {
		return m
	}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}
