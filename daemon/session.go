package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/kernel"
)

// interruptGrace is how long a kernel has, after SIGINT, to become idle again before its
// worker is given up.
const interruptGrace = 3 * time.Second

// retryAfter is what a caller turned away at the cap is told to wait.
const retryAfter = 2 * time.Second

// session is one user_uuid's claim on a worker.
type session struct {
	user string
	// turn is held (a value in it) by the call using the session. Goroutines blocked
	// sending on a channel are woken in the order they blocked, so calls run in arrival
	// order.
	turn chan struct{}
	// Guarded by turn:
	worker *worker
	gone   bool // released: a call that gets the turn must look the session up again

	hasWorker atomic.Bool // for Status, which must not wait for a turn
}

func (s *session) acquire(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *session) release() { <-s.turn }

func (s *session) setWorker(w *worker) {
	s.worker = w
	s.hasWorker.Store(w != nil)
}

// lookup returns user's session, making it if there is none.
func (d *Daemon) lookup(user string) *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[user]
	if s == nil {
		s = &session{user: user, turn: make(chan struct{}, 1)}
		d.sessions[user] = s
	}
	return s
}

// Execute implements api.Backend.
func (d *Daemon) Execute(ctx context.Context, user string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	timeout := d.cfg.ExecTimeout
	if req.Timeout > 0 {
		timeout = time.Duration(req.Timeout * float64(time.Second))
		if timeout > d.cfg.MaxExecTimeout {
			return nil, api.Errorf(http.StatusUnprocessableEntity, "timeout must be at most %g seconds", d.cfg.MaxExecTimeout.Seconds())
		}
	}
	for {
		s := d.lookup(user)
		if err := s.acquire(ctx); err != nil {
			return nil, &api.Error{Status: http.StatusServiceUnavailable, Detail: "request cancelled while waiting for the session", Cause: err}
		}
		if s.gone {
			s.release()
			continue
		}
		resp, err := d.executeIn(ctx, s, req.Code, timeout)
		s.release()
		return resp, err
	}
}

// executeIn runs code in s, which the caller holds.
func (d *Daemon) executeIn(ctx context.Context, s *session, code string, timeout time.Duration) (*api.ExecuteResponse, error) {
	if s.worker == nil {
		if !d.reserve() {
			return nil, &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter,
				Detail: fmt.Sprintf("all %d workers are busy; retry later", d.cfg.MaxTotalWorkers)}
		}
		w, err := d.createWorker(ctx)
		d.created(w)
		if err != nil {
			return nil, &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter,
				Detail: "could not start a worker", Cause: err}
		}
		s.setWorker(w)
	}
	w := s.worker
	start := time.Now()
	execCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	call, err := w.kernel.Start(execCtx, code)
	if err != nil {
		d.dropWorker(ctx, s)
		return nil, &api.Error{Status: http.StatusServiceUnavailable, Detail: "the worker is unreachable; the session was reset",
			Fields: map[string]any{"worker_id": w.id, "files_kept": false}, Cause: err}
	}
	defer call.Finish()
	res, err := call.Wait(execCtx)
	switch {
	case err == nil:
		return toResponse(w.id, res, time.Since(start)), nil
	case errors.Is(err, kernel.ErrClosed):
		d.dropWorker(ctx, s)
		return nil, &api.Error{Status: http.StatusServiceUnavailable,
			Detail: "the kernel died during the call (killed by the memory limit, or exited); the session was reset",
			Fields: partialFields(w.id, res, map[string]any{"files_kept": false})}
	}
	// Out of time (or the caller went away): interrupt, and keep the session if the
	// kernel comes back.
	if serr := d.rt.Signal(context.WithoutCancel(ctx), w.id, syscall.SIGINT); serr != nil {
		d.log.Warn("interrupt failed", "worker", w.id, "err", serr)
	}
	graceCtx, cancelGrace := context.WithTimeout(context.WithoutCancel(ctx), interruptGrace)
	defer cancelGrace()
	res, werr := call.Wait(graceCtx)
	preserved := werr == nil
	if !preserved {
		d.dropWorker(ctx, s)
	}
	d.log.Info("execute timed out", "worker", w.id, "timeout", timeout, "state_preserved", preserved)
	detail := fmt.Sprintf("execution exceeded %g seconds and was interrupted", timeout.Seconds())
	if !preserved {
		detail += "; the kernel did not stop, so the worker was replaced and the session's state is lost"
	}
	return nil, &api.Error{Status: http.StatusGatewayTimeout, Detail: detail,
		Fields: partialFields(w.id, res, map[string]any{"state_preserved": preserved})}
}

// dropWorker destroys the session's worker; the session's next call gets a new one.
func (d *Daemon) dropWorker(ctx context.Context, s *session) {
	w := s.worker
	if w == nil {
		return
	}
	s.setWorker(nil)
	d.forget(context.WithoutCancel(ctx), w)
}

// Release implements api.Backend.
func (d *Daemon) Release(ctx context.Context, user string) error {
	d.mu.Lock()
	s := d.sessions[user]
	delete(d.sessions, user)
	d.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := s.acquire(ctx); err != nil {
		return &api.Error{Status: http.StatusServiceUnavailable, Detail: "request cancelled while waiting for the session", Cause: err}
	}
	s.gone = true
	d.dropWorker(ctx, s)
	s.release()
	return nil
}
