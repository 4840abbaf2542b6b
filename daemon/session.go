package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
)

// Graces, variables so the unit tests can shorten them.
var (
	// interruptGrace is how long a kernel has, after SIGINT, to become idle again before
	// its worker is given up.
	interruptGrace = 3 * time.Second
	// exitGrace is how long a call whose connection dropped waits to learn whether the task
	// exited (the kernel died) or not (the worker is unreachable).
	exitGrace = 3 * time.Second
)

const (
	// retryAfter is what a caller turned away is told to wait.
	retryAfter = 2 * time.Second
	// releaseWait bounds how long Release waits for the call it cancelled to give the
	// session back. Every call ends promptly once cancelled; this is a backstop.
	releaseWait = 30 * time.Second
)

// errReleased ends the call in flight when its session is released.
var errReleased = errors.New("the session was released")

// errGone is returned to a caller that waited for a session which ended meanwhile: it
// looks the user_uuid up again and gets a new session.
var errGone = errors.New("session ended while waiting")

// session is one user_uuid's claim on a worker.
//
// Calls of a session run one at a time in arrival order: the turn is handed from one
// caller to the next through a queue, explicitly, rather than relying on the order in
// which the runtime wakes blocked goroutines.
type session struct {
	user string
	// ended is cancelled (cause errReleased) when the session is released or recycled:
	// the call holding the turn stops at once, and callers waiting for it look again.
	ended  context.Context
	endNow context.CancelCauseFunc

	mu    sync.Mutex
	held  bool
	queue []chan struct{} // callers waiting for the turn, oldest first

	// Guarded by the turn:
	worker *worker
	gone   bool // released: a caller that gets the turn must look the session up again
	// fresh: the session's kernel has run none of its code yet although the session had a
	// worker (its kernel was restarted): the next call says new_session.
	fresh bool

	lastUsed atomic.Int64 // unix nanoseconds of the end of the last call

	transfers chan struct{} // the session's share of the transfer slots
}

func newSession(user string) *session {
	s := &session{user: user, transfers: make(chan struct{}, maxSessionTransfers)}
	s.ended, s.endNow = context.WithCancelCause(context.Background())
	s.lastUsed.Store(time.Now().UnixNano())
	return s
}

// acquire waits for the session's turn in arrival order. It returns the call's context:
// ctx, also ended when the session is released. The caller calls done when finished.
// errGone: the session ended while the caller waited.
func (s *session) acquire(ctx context.Context) (callCtx context.Context, done func(), err error) {
	if err := s.wait(ctx, s.ended); err != nil {
		return nil, nil, err
	}
	if s.gone || s.ended.Err() != nil {
		s.release()
		return nil, nil, errGone
	}
	callCtx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ended, func() { cancel(context.Cause(s.ended)) })
	return callCtx, func() {
		stop()
		cancel(nil)
		s.lastUsed.Store(time.Now().UnixNano())
		s.release()
	}, nil
}

// wait takes the turn, in arrival order, unless ctx or abandon ends first.
func (s *session) wait(ctx context.Context, abandon context.Context) error {
	s.mu.Lock()
	if !s.held {
		s.held = true
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.queue = append(s.queue, ch)
	s.mu.Unlock()

	var err error
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		err = &api.Problem{Kind: api.Busy, Detail: "request cancelled while waiting for the session", Cause: ctx.Err()}
	case <-abandon.Done():
		err = errGone
	}
	s.mu.Lock()
	if i := slices.Index(s.queue, ch); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()
	s.release() // handed the turn just as it gave up: pass it on
	return err
}

func (s *session) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held {
		return false
	}
	s.held = true
	return true
}

// release hands the turn to the oldest waiter, if any.
func (s *session) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		s.held = false
		return
	}
	next := s.queue[0]
	s.queue = s.queue[1:]
	close(next)
}

// lookup returns user's session, making it if there is none.
func (d *Daemon) lookup(user string) *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[user]
	if s == nil {
		s = newSession(user)
		d.sessions[user] = s
	}
	return s
}

// withSession runs fn holding user's session, so its worker is neither released nor
// replaced meanwhile; fn's context ends when the session is released. Without create, a
// user_uuid with no session is a 404.
func (d *Daemon) withSession(ctx context.Context, user string, create bool, fn func(ctx context.Context, s *session) error) error {
	for {
		var s *session
		if create {
			s = d.lookup(user)
		} else {
			d.mu.Lock()
			s = d.sessions[user]
			d.mu.Unlock()
			if s == nil {
				return api.Fail(api.NotFound, "no session for this user_uuid")
			}
		}
		callCtx, done, err := s.acquire(ctx)
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return err
		}
		err = fn(callCtx, s)
		done()
		d.forgetIfEmpty(s)
		return err
	}
}

// forgetIfEmpty drops s from the sessions when it has no worker (its call was refused, at
// the cap, say) and nobody waits for it: otherwise every user_uuid ever refused would stay
// until --idle-timeout.
func (d *Daemon) forgetIfEmpty(s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sessions[s.user] != s || !s.tryAcquire() {
		return
	}
	if s.worker == nil && !s.gone {
		delete(d.sessions, s.user)
		s.gone = true
	}
	s.release()
}

// execTimeout is the limit of a call that asked for seconds (nil: the default). It refuses
// what no duration can express rather than letting the conversion overflow.
func (d *Daemon) execTimeout(seconds *float64) (time.Duration, error) {
	if seconds == nil {
		return d.cfg.ExecTimeout, nil
	}
	t := *seconds
	if math.IsNaN(t) || math.IsInf(t, 0) || t <= 0 {
		return 0, api.Fail(api.Invalid, "timeout must be a positive number of seconds")
	}
	if t > d.cfg.MaxExecTimeout.Seconds() {
		return 0, api.Fail(api.Invalid, "timeout must be at most %g seconds", d.cfg.MaxExecTimeout.Seconds())
	}
	return max(time.Duration(t*float64(time.Second)), time.Microsecond), nil
}

// Execute implements api.Backend: the answer goes to out while the session is held.
func (d *Daemon) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	timeout, err := d.execTimeout(req.Timeout)
	if err != nil {
		return out.Reply(ctx, nil, err)
	}
	start := time.Now()
	replied := false
	err = d.withSession(ctx, user, true, func(ctx context.Context, s *session) error {
		st, _ := out.(api.Streamer)
		resp, err := d.executeIn(ctx, s, req.Code, req.Language, timeout, st)
		d.metrics.observeExecute(outcome(resp, err), start)
		replied = true
		return out.Reply(ctx, resp, err)
	})
	if !replied { // no session could be had
		d.metrics.observeExecute(outcome(nil, err), start)
		return out.Reply(ctx, nil, err)
	}
	return err
}

// outcome classifies an execute's answer for the metrics.
func outcome(resp *api.ExecuteResponse, err error) string {
	var p *api.Problem
	switch {
	case err == nil && resp.Error != nil:
		return outcomeError
	case err == nil:
		return outcomeOK
	case errors.As(err, &p) && p.Kind == api.Timeout:
		return outcomeTimeout
	case errors.As(err, &p) && p.Fields["kernel_restarted"] != nil:
		return outcomeKernelDied
	case errors.Is(err, context.Canceled):
		return outcomeCancelled
	}
	return outcomeUnavailable
}

// executeIn runs code in s, which the caller holds, with language's interpreter ("" is
// Python). A streaming caller (st not nil) gets the output as it arrives and may
// interrupt the code.
func (d *Daemon) executeIn(ctx context.Context, s *session, code, language string, timeout time.Duration, st api.Streamer) (*api.ExecuteResponse, error) {
	newSession := s.fresh
	if s.worker == nil {
		if err := d.assign(ctx, s); err != nil {
			return nil, err
		}
		newSession = true
	}
	w := s.worker
	l := w.life // only the holder of the turn replaces it
	if l.hasExited() {
		d.dropWorker(ctx, s, "task exited between calls")
		return nil, &api.Problem{Kind: api.Lost,
			Detail: fmt.Sprintf("this session's worker stopped (exit status %d) since its last call; its state is lost and the next call starts afresh", l.exitCode),
			Fields: map[string]any{"worker_id": w.id, "files_kept": false}}
	}

	if err := ctx.Err(); err != nil { // the caller left (or interrupted) before the code was sent
		return nil, &api.Problem{Kind: api.Busy, Detail: "the call was cancelled before its code ran", Cause: context.Cause(ctx)}
	}
	start := time.Now()
	var sink func(agent.Event)
	if st != nil {
		sink = func(e agent.Event) { st.Stream(streamEvent(e)) }
	}
	call, err := l.kernel.Start(code, language, sink)
	if err != nil {
		return nil, d.kernelGone(ctx, s, l, nil)
	}
	defer call.Finish()
	s.fresh = false
	var intr *interrupter
	if st != nil {
		intr = &interrupter{task: l.task, log: d.log.With("worker", w.id)}
		st.Started(intr.interrupt)
	}
	execCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := call.Wait(execCtx)
	// The caller's interrupt ends with the call's first wait: past it the daemon signals
	// (on a timeout), replaces or restarts the task, never the caller.
	intr.end()
	switch {
	case err == nil:
		resp := toResponse(w.id, res, time.Since(start))
		resp.NewSession = newSession
		resp.DroppedBytes = res.DroppedBytes
		resp.Interrupted = intr.stopped(resp)
		return resp, nil
	case errors.Is(err, agent.ErrClosed):
		return nil, d.kernelGone(ctx, s, l, res)
	case errors.Is(context.Cause(ctx), errReleased):
		// Release destroys the worker as soon as this call gives the session back.
		return nil, &api.Problem{Kind: api.Lost,
			Detail: "the session was released during the call; its worker was destroyed",
			Fields: partialFields(w.id, res, map[string]any{"state_preserved": false, "files_kept": false})}
	}

	// Out of time (or the caller went away): interrupt, and keep the session if the
	// kernel comes back. A release meanwhile cuts the grace short.
	graceCtx, cancelGrace := context.WithTimeout(context.WithoutCancel(ctx), interruptGrace)
	defer cancelGrace()
	stop := context.AfterFunc(s.ended, cancelGrace)
	defer stop()
	res, werr := d.interrupt(graceCtx, w.id, l.task, call)
	if werr != nil && s.ended.Err() == nil {
		d.dropWorker(ctx, s, "kernel ignored the interrupt")
	}
	// The agent kills a language interpreter that outlives its interrupt and says so:
	// that language's state is lost, the worker and the other languages' are not.
	languageLost := werr == nil && res != nil && res.StateLost
	preserved := werr == nil && !languageLost
	d.log.Info("execute timed out", "worker", w.id, "timeout", timeout, "language", language, "state_preserved", preserved)
	detail := fmt.Sprintf("execution exceeded %g seconds and was interrupted", timeout.Seconds())
	switch {
	case werr != nil:
		detail += "; the kernel did not stop, so the worker was replaced and the session's state is lost"
	case languageLost:
		detail += fmt.Sprintf("; the %s interpreter did not stop, so it was restarted and its state is lost", language)
	}
	return nil, &api.Problem{Kind: api.Timeout, Detail: detail,
		Fields: partialFields(w.id, res, map[string]any{"state_preserved": preserved})}
}

// interruptEvery is how often a kernel that has not stopped is sent SIGINT again.
var interruptEvery = 250 * time.Millisecond

// interrupt sends SIGINT until the kernel is idle or ctx ends. Once is not always enough: a
// signal that lands as the code is sent, before the agent runs it, is ignored (the agent
// never interrupts itself), and the code would run on.
func (d *Daemon) interrupt(ctx context.Context, workerID string, t task, call kernelCall) (*agent.Result, error) {
	for {
		if err := t.Signal(syscall.SIGINT); err != nil {
			d.log.Warn("interrupt failed", "worker", workerID, "err", err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, interruptEvery)
		res, err := call.Wait(waitCtx)
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, agent.ErrClosed) {
			return res, err
		}
	}
}

// interrupter is a streamed call's interrupt, asked for by its caller: SIGINT to the
// kernel while the call runs, nothing once it ended.
type interrupter struct {
	task  task
	log   *slog.Logger
	mu    sync.Mutex
	ended bool
	asked bool
}

func (i *interrupter) interrupt() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.ended {
		return
	}
	i.asked = true
	// The agent ignores a SIGINT that arrives after user code ended: one racing the
	// call's end does no harm.
	if err := i.task.Signal(syscall.SIGINT); err != nil {
		i.log.Warn("interrupt failed", "err", err)
	}
}

// end makes later interrupts do nothing; one in progress has finished when it returns.
func (i *interrupter) end() {
	if i == nil {
		return
	}
	i.mu.Lock()
	i.ended = true
	i.mu.Unlock()
}

// stopped says whether the caller's interrupt ended the call: it asked, and the code
// stopped with KeyboardInterrupt.
func (i *interrupter) stopped(resp *api.ExecuteResponse) bool {
	if i == nil {
		return false
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.asked && resp.Error != nil && resp.Error.Ename == "KeyboardInterrupt"
}

// streamEvent is a piece of output as the API streams it.
func streamEvent(e agent.Event) api.Event {
	ev := api.Event{Type: e.Kind, Text: e.Text, Data: e.Data, ExecutionCount: e.ExecutionCount}
	if e.Error != nil {
		ev.Ename, ev.Evalue, ev.Traceback, ev.ExitCode = e.Error.Ename, e.Error.Evalue, e.Error.Traceback, e.Error.ExitCode
	}
	return ev
}

// kernelGone answers a call whose kernel connection dropped. When the task exited, the
// kernel died (the memory limit, os._exit): it is restarted in the same worker, so the
// files on /sandbox stay. Otherwise the worker is unreachable and is replaced.
func (d *Daemon) kernelGone(ctx context.Context, s *session, l *life, res *agent.Result) error {
	w := s.worker
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing && !l.hasExited() {
		// Close dropped the connection, not the worker: it stays for the next codeboxd.
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "codeboxd is restarting; the session and its worker are kept, retry shortly",
			Fields: partialFields(w.id, res, map[string]any{"files_kept": true})}
	}
	misbehaved := errors.Is(l.kernel.Err(), agent.ErrMisbehaved)
	if !misbehaved { // the client closed it: nothing died
		select {
		case <-l.exited:
		case <-time.After(exitGrace):
		}
	}
	if !l.hasExited() {
		why := "kernel connection lost"
		if misbehaved {
			why = "the worker sent frames outside a call"
		}
		d.dropWorker(ctx, s, why)
		return &api.Problem{Kind: api.Lost,
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
		d.dropWorker(ctx, s, "kernel restart failed")
		return &api.Problem{Kind: api.Lost,
			Detail: fmt.Sprintf("the kernel died during the call (%s) and could not be restarted; the session was reset and its files are lost", why),
			Fields: partialFields(w.id, res, map[string]any{"files_kept": false, "kernel_restarted": false})}
	}
	s.fresh = true
	return &api.Problem{Kind: api.Lost,
		Detail: fmt.Sprintf("the kernel died during the call (%s); it was restarted in the same worker: variables are lost, files under /sandbox were kept", why),
		Fields: partialFields(w.id, res, map[string]any{"files_kept": true, "kernel_restarted": true})}
}

// dropWorker destroys the session's worker (see retire); the session's next call gets a
// new one. The caller holds the turn.
func (d *Daemon) dropWorker(ctx context.Context, s *session, why string) {
	w := s.worker
	if w == nil {
		return
	}
	s.worker = nil
	d.retire(context.WithoutCancel(ctx), w, why)
}

// Release implements api.Backend. It never waits behind a call: the call in flight is
// cancelled (its kernel is not waited for), callers queued behind it get a new session,
// and the worker is destroyed as soon as the cancelled call has let go.
func (d *Daemon) Release(ctx context.Context, user string) error {
	d.mu.Lock()
	s := d.sessions[user]
	delete(d.sessions, user)
	d.mu.Unlock()
	if s == nil {
		return nil
	}
	s.endNow(errReleased)
	ctx, cancel := context.WithTimeout(ctx, releaseWait)
	defer cancel()
	if err := s.wait(ctx, context.Background()); err != nil {
		d.log.Error("release: the call in flight did not end", "session_worker", s.workerID(), "err", err)
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "the session's call in flight did not end; retry the release", Cause: err}
	}
	s.gone = true
	d.dropWorker(ctx, s, "released")
	s.release()
	return nil
}

// workerID names the session's worker for a log line; it reads without the turn.
func (s *session) workerID() string {
	if w := s.worker; w != nil {
		return w.id
	}
	return ""
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
			s.endNow(errReleased)
			s.gone = true
			if s.worker != nil {
				d.log.Info("idle session recycled", "worker", s.worker.id)
			}
			d.dropWorker(d.bg, s, "idle session recycled")
		}
		s.release()
	}
}
