package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// A session with a worker from the fake factory, as assign would leave it.
func sessionWithWorker(t *testing.T, d *Daemon, user string) *worker {
	t.Helper()
	var w *worker
	err := d.withSession(context.Background(), user, true, func(ctx context.Context, s *session) error {
		if err := d.assign(ctx, s); err != nil {
			return err
		}
		w = s.worker
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Release cancels the call in flight instead of waiting behind it, sends the callers queued
// behind it to a new session, and destroys the worker.
func TestReleaseCancelsTheCallInFlight(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 0, 5, f)
	d.Start()
	w := sessionWithWorker(t, d, "u")

	inCall := make(chan struct{})
	callErr := make(chan error, 1)
	go func() {
		callErr <- d.withSession(context.Background(), "u", true, func(ctx context.Context, s *session) error {
			close(inCall)
			<-ctx.Done() // a wedged call: it ends only when cancelled
			return context.Cause(ctx)
		})
	}()
	<-inCall
	queued := make(chan *worker, 1)
	go func() {
		d.withSession(context.Background(), "u", true, func(ctx context.Context, s *session) error {
			queued <- s.worker // nil: a new session, no worker yet
			return nil
		})
	}()
	waitFor(t, "the second call to queue", func() bool {
		d.mu.Lock()
		s := d.sessions[sessionKey{api.DefaultTenant, "u"}]
		d.mu.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queue) == 1
	})

	start := time.Now()
	if err := d.Release(context.Background(), "u"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("release took %s behind a wedged call", took)
	}
	if err := <-callErr; !errors.Is(err, errReleased) {
		t.Fatalf("the call in flight ended with %v, want errReleased", err)
	}
	if qw := <-queued; qw != nil {
		t.Fatalf("the queued call got the released session's worker %s", qw.id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed != 1 {
		t.Fatalf("%d workers destroyed, want the session's", f.destroyed)
	}
	if _, ok := d.assigned.get(w.id); ok {
		t.Fatalf("the destroyed worker %s is still recorded", w.id)
	}
}

// A worker whose destruction fails stays recorded as retired, never as its session's or
// idle, so no later codeboxd hands it to anyone; the destruction is retried.
func TestDestroyBeforeForget(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 0, 5, f)
	d.Start()
	w := sessionWithWorker(t, d, "u")
	if rec, _ := d.assigned.get(w.id); rec.State != stateSession || rec.User != "u" {
		t.Fatalf("record before release: %+v", rec)
	}
	f.failDestroy.Store(true)
	if err := d.Release(context.Background(), "u"); err != nil {
		t.Fatal(err)
	}
	rec, ok := d.assigned.get(w.id)
	if !ok || rec.State != stateRetired {
		t.Fatalf("after a failed destroy the record is %+v (present %v), want retired", rec, ok)
	}
	// What a restarted codeboxd reads.
	again, err := loadAssignments(d.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := again.get(w.id); rec.State != stateRetired {
		t.Fatalf("on disk: %+v, want retired", rec)
	}
	d.mu.Lock()
	back := slices.Contains(d.pools[0].idle, w)
	d.mu.Unlock()
	if back {
		t.Fatal("the retired worker is back in the pool")
	}
	f.failDestroy.Store(false)
	d.retryGraveyard()
	if _, ok := d.assigned.get(w.id); ok {
		t.Fatal("the record stays after the destruction succeeded")
	}
	d.mu.Lock()
	left := len(d.graveyard)
	d.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d workers still in the graveyard", left)
	}
}

func TestNewPoolWorkersAreRecordedIdle(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 2, 5, f)
	d.Start()
	waitFor(t, "pre-warm", func() bool { return d.Status().IdleWorkers == 2 })
	d.mu.Lock()
	idle := append([]*worker(nil), d.pools[0].idle...)
	d.mu.Unlock()
	for _, w := range idle {
		if rec, _ := d.assigned.get(w.id); rec.State != stateIdle {
			t.Fatalf("idle worker %s recorded as %+v", w.id, rec)
		}
	}
}

func TestAssignmentsOfTheFirstFormatAreRead(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"w-1":"alice"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := loadAssignments(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := a.get("w-1"); rec.State != stateSession || rec.User != "alice" {
		t.Fatalf("%+v", rec)
	}
	// Taken over: one file per worker, the old file gone.
	if _, err := os.Stat(filepath.Join(dir, "sessions.json")); !os.IsNotExist(err) {
		t.Fatalf("sessions.json stays: %v", err)
	}
	again, err := loadAssignments(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := again.get("w-1"); rec.State != stateSession || rec.User != "alice" {
		t.Fatalf("after the migration: %+v", rec)
	}
}

func TestAssignmentsOfTheSecondFormatAreRead(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sessions.json"), []byte(`{"w-1":{"state":"idle"},"w-2":{"state":"session","user":"bob"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := loadAssignments(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r1, _ := a.get("w-1"); r1.State != stateIdle {
		t.Fatalf("w-1: %+v", r1)
	}
	if r2, _ := a.get("w-2"); r2.State != stateSession || r2.User != "bob" || recordKey(r2) != (sessionKey{api.DefaultTenant, "bob"}) {
		t.Fatalf("w-2: %+v", r2)
	}
}

func TestExecTimeoutRefusesWhatNoDurationExpresses(t *testing.T) {
	d := newWorld(t).daemon(Config{ExecTimeout: 30 * time.Second, MaxExecTimeout: 300 * time.Second})
	f := func(v float64) *float64 { return &v }
	for _, bad := range []*float64{f(0), f(-1), f(math.NaN()), f(math.Inf(1)), f(1e10), f(1e300), f(300.5)} {
		_, err := d.execTimeout(bad)
		var ae *api.Problem
		if !errors.As(err, &ae) || ae.Kind != api.Invalid {
			t.Errorf("timeout %v: %v, want 422", *bad, err)
		}
	}
	for in, want := range map[*float64]time.Duration{nil: 30 * time.Second, f(1e-9): time.Microsecond, f(2.5): 2500 * time.Millisecond, f(300): 300 * time.Second} {
		if got, err := d.execTimeout(in); err != nil || got != want {
			t.Errorf("timeout %v: %v %v, want %v", in, got, err, want)
		}
	}
}

// A user_uuid whose call was refused leaves nothing behind: before, each stayed in the
// sessions until --idle-timeout (100k refused calls held 130 MB).
func TestRefusedSessionsAreNotKept(t *testing.T) {
	f := &fakeFactory{}
	d := testDaemon(t, 0, 1, f)
	d.Start()
	sessionWithWorker(t, d, "holder") // the only worker
	for i := 0; i < 100; i++ {
		err := d.withSession(context.Background(), fmt.Sprintf("refused-%d", i), true, func(ctx context.Context, s *session) error {
			return d.assign(ctx, s)
		})
		var ae *api.Problem
		if !errors.As(err, &ae) || ae.Kind != api.Busy {
			t.Fatalf("call %d: %v, want 503 at the cap", i, err)
		}
	}
	d.mu.Lock()
	n := len(d.sessions)
	d.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sessions kept, want only the holder's", n)
	}
}
