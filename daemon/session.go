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

const (
	// interruptGrace is how long a kernel has, after SIGINT, to become idle again before
	// its worker is given up.
	interruptGrace = 3 * time.Second
	// exitGrace is how long a call whose connection dropped waits to learn whether the task
	// exited (the kernel died) or not (the worker is unreachable).
	exitGrace = 3 * time.Second
	// retryAfter is what a caller turned away is told to wait.
	retryAfter = 2 * time.Second
)

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

	lastUsed atomic.Int64 // unix nanoseconds of the end of the last call
}

func (s *session) acquire(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *session) tryAcquire() bool {
	select {
	case s.turn <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *session) release() { <-s.turn }

// lookup returns user's session, making it if there is none.
func (d *Daemon) lookup(user string) *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[user]
	if s == nil {
		s = &session{user: user, turn: make(chan struct{}, 1)}
		s.lastUsed.Store(time.Now().UnixNano())
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
		start := time.Now()
		resp, err := d.executeIn(ctx, s, req.Code, timeout)
		s.lastUsed.Store(time.Now().UnixNano())
		s.release()
		d.metrics.observeExecute(outcome(resp, err), start)
		return resp, err
	}
}

// outcome classifies an execute's answer for the metrics.
func outcome(resp *api.ExecuteResponse, err error) string {
	var ae *api.Error
	switch {
	case err == nil && resp.Error != nil:
		return outcomeError
	case err == nil:
		return outcomeOK
	case errors.As(err, &ae) && ae.Status == http.StatusGatewayTimeout:
		return outcomeTimeout
	case errors.As(err, &ae) && ae.Fields["kernel_restarted"] != nil:
		return outcomeKernelDied
	case errors.Is(err, context.Canceled):
		return outcomeCancelled
	}
	return outcomeUnavailable
}

// executeIn runs code in s, which the caller holds.
func (d *Daemon) executeIn(ctx context.Context, s *session, code string, timeout time.Duration) (*api.ExecuteResponse, error) {
	if s.worker == nil {
		if err := d.assign(ctx, s); err != nil {
			return nil, err
		}
	}
	w := s.worker
	l := w.life // only the holder of the turn replaces it
	if l.hasExited() {
		d.dropWorker(ctx, s)
		return nil, &api.Error{Status: http.StatusServiceUnavailable,
			Detail: fmt.Sprintf("this session's worker stopped (exit status %d) since its last call; its state is lost and the next call starts afresh", l.exitCode),
			Fields: map[string]any{"worker_id": w.id, "files_kept": false}}
	}

	start := time.Now()
	execCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	call, err := l.kernel.Start(execCtx, code)
	if err != nil {
		return nil, d.kernelGone(ctx, s, l, nil)
	}
	defer call.Finish()
	res, err := call.Wait(execCtx)
	switch {
	case err == nil:
		return toResponse(w.id, res, time.Since(start)), nil
	case errors.Is(err, kernel.ErrClosed):
		return nil, d.kernelGone(ctx, s, l, res)
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

// kernelGone answers a call whose kernel connection dropped. When the task exited, the
// kernel died (the memory limit, os._exit): it is restarted in the same worker, so the
// files on /sandbox stay. Otherwise the worker is unreachable and is replaced.
func (d *Daemon) kernelGone(ctx context.Context, s *session, l *life, res *kernel.Result) error {
	w := s.worker
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing && !l.hasExited() {
		// Close dropped the connection, not the worker: it stays for the next codeboxd.
		return &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter,
			Detail: "codeboxd is restarting; the session and its worker are kept, retry shortly",
			Fields: partialFields(w.id, res, map[string]any{"files_kept": true})}
	}
	select {
	case <-l.exited:
	case <-time.After(exitGrace):
	}
	if !l.hasExited() {
		d.dropWorker(ctx, s)
		return &api.Error{Status: http.StatusServiceUnavailable,
			Detail: "the worker became unreachable during the call; it was replaced and the session's state is lost",
			Fields: partialFields(w.id, res, map[string]any{"files_kept": false})}
	}
	why := fmt.Sprintf("exit status %d", l.exitCode)
	if l.exitCode == 128+uint32(syscall.SIGKILL) {
		why = "killed, most likely by the memory limit"
	}
	restartCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentStartTimeout)
	defer cancel()
	if err := d.restartKernel(restartCtx, w); err != nil {
		d.log.Error("kernel restart failed", "worker", w.id, "err", err)
		d.dropWorker(ctx, s)
		return &api.Error{Status: http.StatusServiceUnavailable,
			Detail: fmt.Sprintf("the kernel died during the call (%s) and could not be restarted; the session was reset and its files are lost", why),
			Fields: partialFields(w.id, res, map[string]any{"files_kept": false, "kernel_restarted": false})}
	}
	return &api.Error{Status: http.StatusServiceUnavailable,
		Detail: fmt.Sprintf("the kernel died during the call (%s); it was restarted in the same worker: variables are lost, files under /sandbox were kept", why),
		Fields: partialFields(w.id, res, map[string]any{"files_kept": true, "kernel_restarted": true})}
}

// dropWorker destroys the session's worker; the session's next call gets a new one.
func (d *Daemon) dropWorker(ctx context.Context, s *session) {
	w := s.worker
	if w == nil {
		return
	}
	s.worker = nil
	d.mu.Lock()
	d.removeLocked(w)
	d.mu.Unlock()
	if err := d.assigned.set(w.id, ""); err != nil {
		d.log.Warn("session record", "err", err)
	}
	d.destroy(context.WithoutCancel(ctx), w)
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

// recycleSessions releases sessions unused for --idle-timeout. A session in a call is
// skipped: it is in use.
func (d *Daemon) recycleSessions() {
	cutoff := time.Now().Add(-d.cfg.IdleTimeout).UnixNano()
	d.mu.Lock()
	var stale []*session
	for _, s := range d.sessions {
		if s.lastUsed.Load() < cutoff {
			stale = append(stale, s)
		}
	}
	d.mu.Unlock()
	for _, s := range stale {
		if !s.tryAcquire() {
			continue
		}
		if s.lastUsed.Load() < cutoff && !s.gone {
			d.mu.Lock()
			if d.sessions[s.user] == s {
				delete(d.sessions, s.user)
			}
			d.mu.Unlock()
			s.gone = true
			if s.worker != nil {
				d.log.Info("idle session recycled", "worker", s.worker.id)
			}
			d.dropWorker(d.bg, s)
		}
		s.release()
	}
}
