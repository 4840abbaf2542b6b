package daemon

import (
	"context"
	"slices"
	"sync"

	"github.com/codebox/codebox/api"
)

// turn orders a session's calls: one holds it at a time, and it is handed from one caller
// to the next through a queue, explicitly, in arrival order, rather than relying on the
// order in which the runtime wakes blocked goroutines.
type turn struct {
	mu    sync.Mutex
	held  bool
	queue []chan struct{} // callers waiting for the turn, oldest first
}

// take waits for the turn, in arrival order, unless ctx or abandon ends first (abandon:
// errGone).
func (t *turn) take(ctx context.Context, abandon context.Context) error {
	t.mu.Lock()
	if !t.held {
		t.held = true
		t.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	t.queue = append(t.queue, ch)
	t.mu.Unlock()

	var err error
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		err = &api.Problem{Kind: api.Busy, Detail: "request cancelled while waiting for the session", Cause: ctx.Err()}
	case <-abandon.Done():
		err = errGone
	}
	t.mu.Lock()
	if i := slices.Index(t.queue, ch); i >= 0 {
		t.queue = slices.Delete(t.queue, i, i+1)
		t.mu.Unlock()
		return err
	}
	t.mu.Unlock()
	t.pass() // handed the turn just as it gave up: pass it on
	return err
}

// tryTake takes the turn if nobody holds it.
func (t *turn) tryTake() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held {
		return false
	}
	t.held = true
	return true
}

// pass hands the turn to the oldest waiter, if any; otherwise it is free.
func (t *turn) pass() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) == 0 {
		t.held = false
		return
	}
	next := t.queue[0]
	t.queue = t.queue[1:]
	close(next)
}
