package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/containerd/containerd/v2/client"
)

// containerIDs lists the workers in the tests' namespace.
func containerIDs(t *testing.T) []string {
	t.Helper()
	c, err := client.New(env.containerd, client.WithDefaultNamespace(namespace))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs, err := c.Containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ct := range cs {
		ids = append(ids, ct.ID())
	}
	sort.Strings(ids)
	return ids
}

// waitStatus polls /status until ok accepts it.
func waitStatus(t *testing.T, d *daemon, what string, within time.Duration, ok func(api.Status) bool) api.Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok(*st) {
			return *st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; status %+v", what, within, *st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPool(t *testing.T) {
	start := time.Now()
	d := startDaemon(t, "--min-idle-workers", "3", "--max-total-workers", "5")
	st := waitStatus(t, d, "pre-warm", 2*time.Minute, func(s api.Status) bool { return s.IdleWorkers == 3 && !s.IsInitializing })
	t.Logf("pre-warm of 3 workers: %s from start", time.Since(start).Round(time.Millisecond))
	if st.TotalWorkers != 3 || st.BusyWorkers != 0 || st.IdleWorkersInPool != 3 || st.MinIdleWorkers != 3 || st.MaxTotalWorkers != 5 {
		t.Fatalf("status after pre-warm: %+v", st)
	}

	t.Run("a new session gets a pre-warmed worker", func(t *testing.T) {
		idle := containerIDs(t)
		r := d.exec(t, "e2e-pool-a", "'hi'")
		if !slices.Contains(idle, r.WorkerID) {
			t.Fatalf("worker %s was not among the idle %v", r.WorkerID, idle)
		}
		if r.ExecutionCount != 1 {
			t.Fatalf("the health check left a trace: execution_count %d", r.ExecutionCount)
		}
		waitStatus(t, d, "refill", time.Minute, func(s api.Status) bool { return s.IdleWorkers == 3 && s.BusyWorkers == 1 })
	})

	t.Run("at the cap: 503 with Retry-After", func(t *testing.T) {
		d.exec(t, "e2e-pool-b", "1") // 2 busy + 3 idle = 5 = max
		waitStatus(t, d, "at cap", time.Minute, func(s api.Status) bool { return s.TotalWorkers == 5 && s.CreatingWorkers == 0 })
		d.exec(t, "e2e-pool-c", "1")
		d.exec(t, "e2e-pool-d", "1")
		d.exec(t, "e2e-pool-e", "1")
		st := waitStatus(t, d, "all busy", time.Minute, func(s api.Status) bool { return s.BusyWorkers == 5 })
		if st.TotalWorkers != 5 || st.IdleWorkers != 0 {
			t.Fatalf("status at the cap: %+v", st)
		}
		code, hdr, body := d.request(t, "POST", "/api/v1/execute?user_uuid=e2e-pool-f", `{"code":"1"}`, map[string]string{"X-Auth-Token": d.token})
		if code != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(body, "busy") {
			t.Fatalf("at the cap: %d %v %s", code, hdr, body)
		}
		for _, u := range []string{"c", "d", "e"} {
			if err := d.client.Release(context.Background(), "e2e-pool-"+u); err != nil {
				t.Fatal(err)
			}
		}
		waitStatus(t, d, "refill after release", time.Minute, func(s api.Status) bool { return s.IdleWorkers == 3 && s.BusyWorkers == 2 })
	})

	t.Run("calls of one session keep their order", func(t *testing.T) {
		d.exec(t, "e2e-pool-a", "order = []")
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.exec(t, "e2e-pool-a", fmt.Sprintf("import time\ntime.sleep(0.01)\norder.append(%d)", i))
			}()
			time.Sleep(15 * time.Millisecond) // arrival order is the order they are sent in
		}
		wg.Wait()
		r := d.exec(t, "e2e-pool-a", "order")
		want := "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]"
		if r.ResultText == nil || *r.ResultText != want {
			t.Fatalf("order = %v", *r.ResultText)
		}
	})

	t.Run("idle health check replaces a worker killed from outside", func(t *testing.T) {
		before := idleIDs(t, d)
		victim := before[0]
		killTask(t, victim)
		waitStatus(t, d, "replacement", time.Minute, func(s api.Status) bool {
			return s.IdleWorkers == 3 && !slices.Contains(containerIDs(t), victim)
		})
	})

	t.Run("a session whose worker was killed between calls starts afresh", func(t *testing.T) {
		r := d.exec(t, "e2e-pool-b", "kept = 1")
		killTask(t, r.WorkerID)
		time.Sleep(500 * time.Millisecond)
		_, err := d.client.Execute(context.Background(), "e2e-pool-b", "kept", 0)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 503 || !flagIs(afterOf(ae).FilesKept, false) {
			t.Fatalf("want 503 for the lost worker, got %v", err)
		}
		r2 := d.exec(t, "e2e-pool-b", "'fresh'")
		if r2.WorkerID == r.WorkerID || *r2.ResultText != "'fresh'" {
			t.Fatalf("after the loss: %+v", r2)
		}
	})

	d.client.Release(context.Background(), "e2e-pool-a")
	d.client.Release(context.Background(), "e2e-pool-b")
}

// idleIDs are the containers no session has: all but those the test's sessions use.
func idleIDs(t *testing.T, d *daemon) []string {
	t.Helper()
	busy := map[string]bool{}
	for _, u := range []string{"e2e-pool-a", "e2e-pool-b"} {
		busy[d.exec(t, u, "1").WorkerID] = true
	}
	var idle []string
	for _, id := range containerIDs(t) {
		if !busy[id] {
			idle = append(idle, id)
		}
	}
	if len(idle) == 0 {
		t.Fatal("no idle worker")
	}
	return idle
}

func killTask(t *testing.T, id string) {
	t.Helper()
	task, err := loadContainer(t, id).Task(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(context.Background(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestParallelSessionsKeepTheirState(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "4", "--max-total-workers", "20")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("e2e-par-%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if _, err := d.client.Execute(ctx, user, fmt.Sprintf("mine = %d", i), 0); err != nil {
				errs <- fmt.Errorf("%s: %w", user, err)
				return
			}
			for round := 1; round <= 3; round++ {
				r, err := d.client.Execute(ctx, user, "mine += 1000\nmine", 0)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", user, err)
					return
				}
				if want := fmt.Sprint(i + 1000*round); r.ResultText == nil || *r.ResultText != want {
					errs <- fmt.Errorf("%s round %d: got %v, want %s", user, round, r.ResultText, want)
					return
				}
			}
			d.client.Release(ctx, user)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestIdleSessionsAreRecycled(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "1", "--idle-timeout", "2s", "--recycle-interval", "500ms")
	r := d.exec(t, "e2e-recycle", "x = 1")
	waitStatus(t, d, "session recycled", 30*time.Second, func(s api.Status) bool {
		return s.BusyWorkers == 0 && s.IdleWorkers == 1 && !slices.Contains(containerIDs(t), r.WorkerID)
	})
	r2 := d.exec(t, "e2e-recycle", "x")
	if r2.Error == nil || r2.Error.Ename != "NameError" {
		t.Fatalf("a recycled session should start fresh: %+v", r2)
	}
	d.client.Release(context.Background(), "e2e-recycle")
}

func TestCattle(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "1", "--exec-timeout", "2s")
	ctx := context.Background()

	t.Run("code that ignores KeyboardInterrupt: worker replaced", func(t *testing.T) {
		r := d.exec(t, "e2e-stubborn", "gone_soon = 1")
		_, err := d.client.Execute(ctx, "e2e-stubborn", `
import time
while True:
    try:
        time.sleep(10)
    except KeyboardInterrupt:
        pass
`, 0)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, false) {
			t.Fatalf("want 504 state_preserved false, got %v", err)
		}
		r2 := d.exec(t, "e2e-stubborn", "gone_soon")
		if r2.WorkerID == r.WorkerID || r2.Error == nil || r2.Error.Ename != "NameError" {
			t.Fatalf("after a stubborn timeout: %+v", r2)
		}
		if slices.Contains(containerIDs(t), r.WorkerID) {
			t.Fatalf("the stuck worker %s was not destroyed", r.WorkerID)
		}
		d.client.Release(ctx, "e2e-stubborn")
	})

	t.Run("os._exit: 503, kernel restarted, files kept", func(t *testing.T) {
		r := d.exec(t, "e2e-exit", "open('/sandbox/keep.txt', 'w').write('still here')\nvariable = 1")
		_, err := d.client.Execute(ctx, "e2e-exit", "import os\nos._exit(1)", 0)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 503 || !strings.Contains(ae.Detail, "kernel died") ||
			!flagIs(afterOf(ae).FilesKept, true) || !flagIs(afterOf(ae).KernelRestarted, true) {
			t.Fatalf("want 503 kernel died with files kept, got %#v", err)
		}
		r2 := d.exec(t, "e2e-exit", "open('/sandbox/keep.txt').read()")
		if r2.WorkerID != r.WorkerID || r2.ResultText == nil || *r2.ResultText != "'still here'" {
			t.Fatalf("after the restart: %+v", r2)
		}
		if r3 := d.exec(t, "e2e-exit", "variable"); r3.Error == nil {
			t.Fatalf("variables should be gone after a kernel restart: %+v", r3)
		}
		d.client.Release(ctx, "e2e-exit")
	})
}

// TestRestartRecovery stops codeboxd (SIGTERM, and SIGKILL: no clean shutdown) and starts
// a new one on the same state: the session keeps its variables and files, idle workers
// rejoin the pool, a worker whose task died meanwhile is destroyed, nothing is duplicated.
func TestRestartRecovery(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDaemon(t, "--min-idle-workers", "2", "--destroy-on-stop=false")
			user := "e2e-restart-" + randomHex(3)
			r := d.exec(t, user, "x = 'kept'\nopen('/sandbox/f.txt', 'w').write('file kept')")
			waitStatus(t, d, "pool", time.Minute, func(s api.Status) bool { return s.IdleWorkers == 2 && s.BusyWorkers == 1 })
			before := containerIDs(t)
			d.cmd.Process.Signal(sig)
			<-d.done

			var idle []string
			for _, id := range before {
				if id != r.WorkerID {
					idle = append(idle, id)
				}
			}
			killTask(t, idle[0]) // dies while no codeboxd watches

			d2 := startDaemon(t, "--min-idle-workers", "2", "--state-dir", d.stateDir)
			r2 := d2.exec(t, user, "x, open('/sandbox/f.txt').read()")
			if r2.WorkerID != r.WorkerID || r2.ResultText == nil || *r2.ResultText != "('kept', 'file kept')" {
				t.Fatalf("after the restart: %+v", r2)
			}
			waitStatus(t, d2, "pool after restart", time.Minute, func(s api.Status) bool {
				return s.IdleWorkers == 2 && s.BusyWorkers == 1 && s.TotalWorkers == 3
			})
			after := containerIDs(t)
			if len(after) != 3 || !slices.Contains(after, r.WorkerID) || !slices.Contains(after, idle[1]) || slices.Contains(after, idle[0]) {
				t.Fatalf("workers before %v, after %v: want the session's and the healthy idle one kept, the dead one replaced", before, after)
			}
			if n := strings.Count(d2.logs.String(), "worker adopted"); n != 2 {
				t.Fatalf("%d workers adopted, want 2", n)
			}
		})
	}
}

// loadContainer loads a worker's container from the tests' namespace.
func loadContainer(t *testing.T, id string) client.Container {
	t.Helper()
	c, err := client.New(env.containerd, client.WithDefaultNamespace(namespace))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctr, err := c.LoadContainer(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return ctr
}

// TestRestartDuringALongCall: codeboxd dies while a session's cell runs. The agent's main
// thread is busy with the cell and cannot answer the new codeboxd, which interrupts the
// orphaned cell, as its timeout would have, and takes the worker over with its state.
func TestRestartDuringALongCall(t *testing.T) {
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	d := startDaemon(t, "--state-dir", stateDir, "--destroy-on-stop=false")
	users := []string{"e2e-long-a-" + randomHex(3), "e2e-long-b-" + randomHex(3)}
	for _, u := range users {
		d.exec(t, u, "kept = 'yes'")
	}
	for _, u := range users {
		go d.client.Execute(context.Background(), u, "import time\nwhile True: time.sleep(0.01)", 120*time.Second)
	}
	time.Sleep(time.Second)
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	start := time.Now()
	d2 := startDaemonAs(t, d.token, "--state-dir", stateDir, "--destroy-on-stop=false")
	t.Logf("the new codeboxd answered %s after its start", time.Since(start).Round(time.Millisecond))
	for _, u := range users {
		r := d2.exec(t, u, "kept")
		if r.ResultText == nil || *r.ResultText != "'yes'" || r.NewSession {
			t.Fatalf("%s after the restart: %+v, want its state", u, r)
		}
	}
	if n := strings.Count(d2.logs.String(), "interrupting what it runs"); n != 2 {
		t.Fatalf("%d busy workers interrupted, want 2:\n%s", n, d2.logs.String())
	}
	for _, u := range users {
		d2.client.Release(context.Background(), u)
	}
	d2.cmd.Process.Signal(syscall.SIGTERM)
	<-d2.done
	cleanupAll(t, stateDir)
}
