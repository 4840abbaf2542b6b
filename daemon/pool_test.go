package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
)

// fakeFactory gates and fails the fake world's container starts and destructions, and
// counts them.
type fakeFactory struct {
	mu        sync.Mutex
	made      int
	destroyed int
	gate      chan struct{} // when set, each start waits for a value
	fail      atomic.Bool
	// failDestroy makes destructions fail (containerd unreachable, say).
	failDestroy atomic.Bool
}

func (f *fakeFactory) start(ctx context.Context) error {
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.fail.Load() {
		return errors.New("image broken")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.made++
	return nil
}

func (f *fakeFactory) destroy() error {
	if f.failDestroy.Load() {
		return errors.New("containerd unreachable")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed++
	return nil
}

// testDaemon is a daemon on a fake world whose starts and destructions f controls.
func testDaemon(t *testing.T, minIdle, maxTotal int, f *fakeFactory) *Daemon {
	t.Helper()
	fw := newWorld(t)
	fw.factory = f
	return fw.daemon(Config{MinIdleWorkers: minIdle, MaxTotalWorkers: maxTotal})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPrewarmAndTake(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 3, 5, f)
	if st := d.Status(); !st.IsInitializing {
		t.Fatalf("initializing before start: %+v", st)
	}
	d.Start()
	waitFor(t, "pre-warm", func() bool { return d.Status().IdleWorkers == 3 })
	st := d.Status()
	if st.IsInitializing || st.TotalWorkers != 3 || st.BusyWorkers != 0 || st.CreatingWorkers != 0 || st.IdleWorkersInPool != 3 {
		t.Fatalf("after pre-warm: %+v", st)
	}
	w, err := d.takeWorker(context.Background(), environments.Default)
	if err != nil || w == nil {
		t.Fatal(err)
	}
	waitFor(t, "refill", func() bool { s := d.Status(); return s.IdleWorkers == 3 && s.BusyWorkers == 1 })
	if st := d.Status(); st.TotalWorkers != 4 {
		t.Fatalf("after refill: %+v", st)
	}
}

func TestCapIs503WithRetryAfter(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 0, 2, f)
	d.Start()
	for i := 0; i < 2; i++ {
		if _, err := d.takeWorker(context.Background(), environments.Default); err != nil {
			t.Fatal(err)
		}
	}
	_, err := d.takeWorker(context.Background(), environments.Default)
	var ae *api.Problem
	if !errors.As(err, &ae) || ae.Kind != api.Busy || ae.RetryAfter <= 0 {
		t.Fatalf("at the cap: %v", err)
	}
}

func TestWaiterGetsTheNextWorkerAndCancelReturnsIt(t *testing.T) {
	f := &fakeFactory{gate: make(chan struct{})}
	d := testDaemon(t, 0, 3, f)
	d.Start()
	got := make(chan error, 1)
	go func() { _, err := d.takeWorker(context.Background(), environments.Default); got <- err }()
	waitFor(t, "creation for the waiter", func() bool { return d.Status().CreatingWorkers == 1 })
	if st := d.Status(); st.TotalWorkers != 1 || st.IdleWorkers != 0 {
		t.Fatalf("while creating: %+v", st)
	}
	f.gate <- struct{}{}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// The pool has now served a session: its target is one idle worker.
	waitFor(t, "a creation for the pool's target", func() bool { return d.Status().CreatingWorkers == 1 })

	// A waiter that gives up does not lose the worker made for it: the creation it claimed
	// ends in the pool.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, err := d.takeWorker(ctx, environments.Default); got <- err }()
	waitFor(t, "the second waiter", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.pools[0].waiters) == 1
	})
	cancel()
	if err := <-got; err == nil {
		t.Fatal("a cancelled waiter got a worker")
	}
	f.gate <- struct{}{}
	waitFor(t, "worker parked as idle", func() bool { return d.Status().IdleWorkers == 1 })
	if st := d.Status(); st.BusyWorkers != 1 || st.TotalWorkers > 3 {
		t.Fatalf("after the cancelled waiter: %+v", st)
	}
}

func TestFailedCreationFailsTheWaiter(t *testing.T) {
	f := &fakeFactory{}
	f.fail.Store(true)
	d := testDaemon(t, 0, 3, f)
	d.Start()
	_, err := d.takeWorker(context.Background(), environments.Default)
	var ae *api.Problem
	if !errors.As(err, &ae) || ae.Kind != api.Busy || ae.Detail != "could not start a worker" {
		t.Fatalf("err = %v", err)
	}
	// The creation for the pool's target fails too; then the failure clears.
	waitFor(t, "the creations to end", func() bool { return d.Status().CreatingWorkers == 0 })
	f.fail.Store(false)
	if _, err := d.takeWorker(context.Background(), environments.Default); err != nil {
		t.Fatalf("after the failure cleared: %v", err)
	}
}

func TestConcurrentAcquiresNeverExceedTheCap(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 2, 10, f)
	d.Start()
	var wg sync.WaitGroup
	var ok, refused atomic.Int32
	stopWatch := make(chan struct{})
	var watchErr atomic.Value
	go func() {
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			if st := d.Status(); st.TotalWorkers > 10 || st.BusyWorkers+st.IdleWorkers+st.CreatingWorkers != st.TotalWorkers {
				watchErr.Store(fmt.Sprintf("inconsistent status %+v", st))
			}
		}
	}()
	for i := 0; i < 50; i++ {
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
	close(stopWatch)
	if v := watchErr.Load(); v != nil {
		t.Fatal(v)
	}
	if ok.Load() != 10 || refused.Load() != 40 {
		t.Fatalf("ok %d refused %d, want 10 and 40", ok.Load(), refused.Load())
	}
}

func TestCloseKeepsWorkersUnlessAsked(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 2, 5, f)
	d.Start()
	waitFor(t, "pre-warm", func() bool { return d.Status().IdleWorkers == 2 })
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed != 0 {
		t.Fatalf("Close destroyed %d workers; they are for the next codeboxd", f.destroyed)
	}
}

func TestCloseDestroysEverything(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 3, 5, f)
	d.cfg.DestroyOnStop = true
	d.Start()
	waitFor(t, "pre-warm", func() bool { return d.Status().IdleWorkers == 3 })
	d.takeWorker(context.Background(), environments.Default)
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed != f.made {
		t.Fatalf("made %d, destroyed %d", f.made, f.destroyed)
	}
	if _, err := d.takeWorker(context.Background(), environments.Default); err == nil {
		t.Fatal("acquire after Close succeeded")
	}
}

func TestSessionsSerialiseInArrivalOrder(t *testing.T) {
	s := newSession(sessionKey{api.DefaultTenant, "u"}, shape{})
	_, done, err := s.takeTurn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, done, err := s.takeTurn(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			done()
		}()
		waitFor(t, "the caller to queue", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.queue) == i+1
		})
	}
	done()
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("order = %v", order)
		}
	}
}
