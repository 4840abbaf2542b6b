package daemon

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// recorder is a streaming caller: it keeps the events, and interrupts when told to.
type recorder struct {
	mu          sync.Mutex
	events      []api.Event
	interruptAt bool // interrupt as soon as the code runs
	resp        *api.ExecuteResponse
	err         error
}

func (r *recorder) Stream(e api.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) Started(interrupt func()) {
	if r.interruptAt {
		go interrupt()
	}
}

func (r *recorder) Reply(ctx context.Context, resp *api.ExecuteResponse, err error) error {
	r.resp, r.err = resp, err
	return nil
}

func TestStreamedCallDeliversOutputAsItComes(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Execute(ctx, "u", api.ExecuteRequest{Code: "streams"}, rec); err != nil {
		t.Fatal(err)
	}
	if rec.err != nil || len(rec.events) != 2 || rec.events[0].Type != "stdout" || rec.events[1].Text != "two\n" {
		t.Fatalf("events %+v, err %v", rec.events, rec.err)
	}
	if rec.resp.DroppedBytes != 3 || !rec.resp.NewSession || rec.resp.Interrupted {
		t.Fatalf("answer %+v", rec.resp)
	}
}

// The caller's interrupt stops the code with KeyboardInterrupt and keeps the session.
func TestStreamedCallInterrupt(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, p := run(t, d, "u", "ok", 0)
	if p != nil {
		t.Fatal(p)
	}
	rec := &recorder{interruptAt: true}
	if err := d.Execute(ctx, "u", api.ExecuteRequest{Code: "stops-on-sigint"}, rec); err != nil {
		t.Fatal(err)
	}
	if rec.err != nil || !rec.resp.Interrupted || rec.resp.Error.Ename != "KeyboardInterrupt" {
		t.Fatalf("answer %+v, err %v", rec.resp, rec.err)
	}
	again, p := run(t, d, "u", "ok", 0)
	if p != nil || again.WorkerID != first.WorkerID || again.NewSession {
		t.Fatalf("after the interrupt: %+v %v", again, p)
	}
	// Code that raised KeyboardInterrupt by itself was not interrupted by the caller.
	rec = &recorder{}
	go func() {
		time.Sleep(100 * time.Millisecond)
		fw.worker(first.WorkerID).task.Signal(2)
	}()
	if err := d.Execute(ctx, "u", api.ExecuteRequest{Code: "stops-on-sigint"}, rec); err != nil {
		t.Fatal(err)
	}
	if rec.resp == nil || rec.resp.Interrupted {
		t.Fatalf("answer %+v, err %v", rec.resp, rec.err)
	}
}

// A caller gone before its code was sent never sends it.
func TestCancelledCallSendsNoCode(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	if _, p := run(t, d, "u", "ok", 0); p != nil {
		t.Fatal(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := &recorder{}
	d.Execute(ctx, "u", api.ExecuteRequest{Code: "ok"}, rec)
	var p *api.Problem
	if rec.resp != nil || !errors.As(rec.err, &p) || p.Kind != api.Busy {
		t.Fatalf("answer %+v, err %v", rec.resp, rec.err)
	}
	if again, p := run(t, d, "u", "ok", 0); p != nil || again.ExecutionCount != 2 {
		t.Fatalf("the cancelled call ran: next call %+v %v", again, p)
	}
}
