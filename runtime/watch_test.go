package runtime

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

// fakeTasks is containerd as the watcher sees it: down until up is set, and a task whose
// state after containerd's return the test chooses.
type fakeTasks struct {
	mu      sync.Mutex
	up      bool
	state   string // after the return: "running", "stopped" or "gone"
	rewaits int
	again   chan client.ExitStatus // the new wait of a running task
}

func (f *fakeTasks) IsServing(ctx context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		return false, unavailable
	}
	return true, nil
}

func (f *fakeTasks) Rewait(ctx context.Context, id string) (<-chan client.ExitStatus, Exit, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rewaits++
	switch f.state {
	case "stopped":
		return nil, Exit{Code: 3, Known: true}, true, nil
	case "gone":
		return nil, Exit{Code: 255, Known: false}, true, nil
	}
	return f.again, Exit{}, false, nil
}

func (f *fakeTasks) setUp() {
	f.mu.Lock()
	f.up = true
	f.mu.Unlock()
}

// unavailable is containerd's absence as its client reports it: a gRPC status.
var unavailable = errgrpc.ToGRPC(errdefs.ErrUnavailable)

func watchRuntime(f *fakeTasks) *Runtime {
	return &Runtime{log: slog.New(slog.NewTextHandler(io.Discard, nil)), tasks: f, watching: map[string]watched{}}
}

func status(code uint32, err error) client.ExitStatus {
	return *client.NewExitStatus(code, time.Now(), err)
}

// awaitAsync runs await and hands over its outcome.
func awaitAsync(ctx context.Context, r *Runtime, first <-chan client.ExitStatus) <-chan Exit {
	out := make(chan Exit, 1)
	go func() {
		if e, ok := r.await(ctx, "w-1", first); ok {
			out <- e
		}
		close(out)
	}()
	return out
}

func TestAwaitDeliversAnExit(t *testing.T) {
	r := watchRuntime(&fakeTasks{up: true})
	first := make(chan client.ExitStatus, 1)
	first <- status(137, nil)
	e, ok := <-awaitAsync(context.Background(), r, first)
	if !ok || e.Code != 137 || !e.Known {
		t.Fatalf("exit %+v %v, want 137 known", e, ok)
	}
}

// A wait that fails because containerd went away is no exit: the runtime says containerd is
// down, waits for it, and looks at the task again; it is running, so it waits once more.
func TestAwaitRidesOutAContainerdRestart(t *testing.T) {
	f := &fakeTasks{state: "running", again: make(chan client.ExitStatus, 1)}
	r := watchRuntime(f)
	first := make(chan client.ExitStatus, 1)
	first <- status(255, unavailable)
	out := awaitAsync(context.Background(), r, first)
	deadline := time.Now().Add(5 * time.Second)
	for up, _ := r.Available(); up; up, _ = r.Available() {
		if time.Now().After(deadline) {
			t.Fatal("containerd's absence was not noticed")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case e := <-out:
		t.Fatalf("an exit %+v while containerd is away", e)
	case <-time.After(100 * time.Millisecond):
	}
	f.setUp()
	f.again <- status(0, nil)
	select {
	case e, ok := <-out:
		if !ok || e.Code != 0 || !e.Known {
			t.Fatalf("exit %+v %v after the new wait", e, ok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after containerd came back")
	}
	if up, err := r.Available(); !up {
		t.Fatalf("containerd still taken for down: %v", err)
	}
}

// What happened to the task while containerd was away decides the exit: stopped (its status
// kept by containerd), or gone with its shim (status unknown, 255).
func TestAwaitAfterContainerdReturns(t *testing.T) {
	for state, want := range map[string]Exit{"stopped": {Code: 3, Known: true}, "gone": {Code: 255, Known: false}} {
		t.Run(state, func(t *testing.T) {
			f := &fakeTasks{up: true, state: state}
			r := watchRuntime(f)
			first := make(chan client.ExitStatus, 1)
			first <- status(255, unavailable)
			select {
			case e, ok := <-awaitAsync(context.Background(), r, first):
				if !ok || e.Code != want.Code || e.Known != want.Known {
					t.Fatalf("exit %+v %v, want %+v", e, ok, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no exit")
			}
		})
	}
}

// Watching stops without an exit when its context ends (the task is being deleted), also
// while containerd is away; a failure that is not containerd's absence is not taken for it.
func TestAwaitStopsWithoutAnExit(t *testing.T) {
	f := &fakeTasks{}
	r := watchRuntime(f)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan client.ExitStatus, 1)
	first <- status(255, unavailable)
	out := awaitAsync(ctx, r, first)
	time.Sleep(50 * time.Millisecond)
	cancel()
	if e, ok := <-out; ok {
		t.Fatalf("an exit %+v after watching stopped", e)
	}
	r.health.mu.Lock()
	r.health.closed = true // stop the poller
	r.health.mu.Unlock()

	// containerd answering "not found" is containerd serving.
	r2 := watchRuntime(&fakeTasks{up: true})
	r2.markDown(errgrpc.ToGRPC(errdefs.ErrNotFound))
	if up, _ := r2.Available(); !up {
		t.Fatal("a not-found answer was taken for containerd's absence")
	}
}
