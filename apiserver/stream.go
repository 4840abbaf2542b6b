package apiserver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
)

// size is what an event holds of the caller's output: what a stream's buffer counts.
func eventSize(e api.Event) int64 {
	n := len(e.Text) + len(e.Evalue) + len(e.Ename)
	for k, v := range e.Data {
		n += len(k) + len(v)
	}
	for _, l := range e.Traceback {
		n += len(l)
	}
	if e.Network != nil {
		// A denial is small but a worker can cause many: each is charged what it holds.
		n += 128 + len(e.Network.Name) + len(e.Network.Reason) + len(e.Network.Rule)
	}
	return int64(n)
}

// doneEvent says how a call ended: its answer, or the failure that ended it.
func doneEvent(id string, resp *api.ExecuteResponse, err error) api.Event {
	e := api.Event{Type: api.EventDone, ID: id}
	var p *api.Problem
	var he *api.Error
	switch {
	case err == nil:
		e.Status, e.StatePreserved = api.DoneOK, resp.StatePreserved == nil || *resp.StatePreserved
		if resp.Error != nil {
			e.Status, e.Detail = api.DoneError, resp.Detail
		}
		if resp.Interrupted {
			e.Status = api.DoneInterrupted
		}
		e.ExecutionCount, e.DurationMS, e.NewSession, e.WorkerID = resp.ExecutionCount, resp.DurationMS, resp.NewSession, resp.WorkerID
		e.PreviousSession = resp.PreviousSession
		e.DroppedBytes = resp.DroppedBytes
		e.NetworkDenials, e.NetworkDenialsTotal = resp.NetworkDenials, resp.NetworkDenialsTotal
	case errors.As(err, &p):
		e.Detail = p.Detail
		switch p.Kind {
		case api.Timeout:
			e.Status = api.DoneTimeout
			e.StatePreserved = p.After != nil && p.After.StatePreserved != nil && *p.After.StatePreserved
		case api.Busy:
			e.Status, e.StatePreserved = api.DoneBusy, true
		case api.Lost:
			e.Status = api.DoneDied
		case api.Internal:
			e.Status, e.StatePreserved, e.Detail = api.DoneError, true, "internal error"
		default:
			e.Status, e.StatePreserved = api.DoneError, true
		}
		if p.After != nil {
			e.WorkerID = p.After.WorkerID
		}
	case errors.As(err, &he):
		e.Status, e.StatePreserved, e.Detail = api.DoneError, true, he.Detail
		if he.Status >= 500 {
			e.Status = api.DoneBusy
		}
	default:
		e.Status, e.StatePreserved, e.Detail = api.DoneError, true, "internal error"
	}
	return e
}

// Bounds of a stream (per websocket or server-sent event stream).
const (
	// outputBufferBytes is how much output waits for a slow reader; past it, output is
	// dropped and counted in its call's done.dropped_bytes. One event is let through
	// whatever its size when nothing waits, so a reader that keeps up gets a large image.
	outputBufferBytes = 1 << 20
	// maxNotes bounds the other events waiting (done, protocol errors): a client that
	// sends bad messages and does not read the answers is disconnected.
	maxNotes = 64
)

// outbox queues a stream's events for its writer, bounded (see outputBufferBytes).
type outbox struct {
	mu      sync.Mutex
	queue   []queued
	bytes   int64 // output waiting
	notes   int   // other events waiting
	dropped map[string]int64
	wake    chan struct{}
	closed  bool
}

type queued struct {
	e      api.Event
	output bool
}

func newOutbox() *outbox {
	return &outbox{dropped: map[string]int64{}, wake: make(chan struct{}, 1)}
}

// output queues a piece of a call's output, or drops and counts it when too much waits.
func (o *outbox) output(e api.Event) {
	n := eventSize(e)
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if o.bytes > 0 && o.bytes+n > outputBufferBytes {
		o.dropped[e.ID] += n
		o.mu.Unlock()
		return
	}
	o.bytes += n
	o.queue = append(o.queue, queued{e, true})
	o.mu.Unlock()
	o.signal()
}

// note queues an event that is not output; false when too many wait already (the reader
// is gone or does not read).
func (o *outbox) note(e api.Event) bool {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return true
	}
	if o.notes >= maxNotes && e.Type != closeEvent {
		o.mu.Unlock()
		return false
	}
	if e.Type == api.EventDone { // what was dropped of the call, and nothing more is
		e.DroppedBytes += o.dropped[e.ID]
		delete(o.dropped, e.ID)
	}
	o.notes++
	o.queue = append(o.queue, queued{e, false})
	o.mu.Unlock()
	o.signal()
	return true
}

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// next waits for the next event; false when the outbox is closed and empty, or ctx ended.
// A tick of idle while nothing waits returns with the third result true (the writer's
// keep-alive).
func (o *outbox) next(ctx context.Context, idle <-chan time.Time) (api.Event, bool, bool) {
	for {
		o.mu.Lock()
		if len(o.queue) > 0 {
			q := o.queue[0]
			o.queue[0] = queued{}
			o.queue = o.queue[1:]
			if q.output {
				o.bytes -= eventSize(q.e)
			} else {
				o.notes--
			}
			o.mu.Unlock()
			return q.e, true, false
		}
		closed := o.closed
		o.mu.Unlock()
		if closed {
			return api.Event{}, false, false
		}
		select {
		case <-o.wake:
		case <-idle:
			return api.Event{}, true, true
		case <-ctx.Done():
			return api.Event{}, false, false
		}
	}
}

// close lets the writer finish what is queued; nothing more is taken.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.signal()
}

// streamCall is the Output of one streamed call: its output goes to the outbox as it
// arrives, its answer as the done event.
type streamCall struct {
	id  string
	box *outbox
	// cancel ends the call's context: an interrupt before the code runs stops the call
	// waiting for its session or its worker.
	cancel context.CancelFunc

	mu     sync.Mutex
	stop   func() // the kernel's interrupt, once the code was sent
	early  bool   // interrupted before the code was sent
	closed bool   // done was queued
}

// errNotReading: a stream's client does not read its answers (see maxNotes).
var errNotReading = errors.New("the client does not read its answers")

func (c *streamCall) Stream(e api.Event) {
	e.ID = c.id
	c.box.output(e)
}

func (c *streamCall) Started(interrupt func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stop = interrupt
}

// interrupt stops the call: SIGINT to its kernel once the code was sent, or, before that,
// the call's end without running it.
func (c *streamCall) interrupt() {
	c.mu.Lock()
	stop := c.stop
	if stop == nil && !c.closed {
		c.early = true
	}
	c.mu.Unlock()
	if stop != nil {
		stop()
		return
	}
	c.cancel()
}

func (c *streamCall) Reply(ctx context.Context, resp *api.ExecuteResponse, err error) error {
	c.mu.Lock()
	early := c.early
	c.closed = true
	c.mu.Unlock()
	e := doneEvent(c.id, resp, err)
	if early && err != nil && e.Status != api.DoneDied {
		// Stopped by cancelling the call: while it waited (nothing of the session was
		// touched), or as its code was sent (the kernel was interrupted as on a timeout).
		e.Detail = "interrupted before the code ran"
		if e.Status == api.DoneTimeout {
			e.Detail = "interrupted as the code started"
		} else {
			e.StatePreserved = true
		}
		e.Status = api.DoneInterrupted
	}
	if !c.box.note(e) {
		return errNotReading
	}
	return nil
}
