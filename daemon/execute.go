package daemon

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
)

const (
	// retryAfter is what a caller turned away is told to wait.
	retryAfter = 2 * time.Second
	// releaseWait bounds how long Release waits for the call it cancelled to give the
	// session back. Every call ends promptly once cancelled; this is a backstop.
	releaseWait = 30 * time.Second
)

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
	case errors.As(err, &p) && p.After != nil && p.After.KernelRestarted != nil:
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
	d.mu.Lock()
	env := s.shape.environment
	d.mu.Unlock()
	if err := d.checkLanguage(env, language); err != nil {
		return nil, err
	}
	newSession := s.fresh
	if s.worker == nil {
		if err := d.assign(ctx, s); err != nil {
			return nil, err
		}
		newSession = true
	}
	w := s.worker
	in := w.current // only the holder of the turn replaces it
	if in.hasExited() {
		return nil, d.cattle(ctx, s, mishap{what: exitedBetweenCalls, inst: in})
	}

	if err := ctx.Err(); err != nil { // the caller left (or interrupted) before the code was sent
		return nil, &api.Problem{Kind: api.Busy, Detail: "the call was cancelled before its code ran", Cause: context.Cause(ctx)}
	}
	start := time.Now()
	var sink func(agent.Event)
	if st != nil {
		sink = func(e agent.Event) { st.Stream(streamEvent(e)) }
	}
	call, err := in.agent.Start(code, language, sink)
	if err != nil {
		return nil, d.cattle(ctx, s, mishap{what: connectionLost, inst: in})
	}
	defer call.Finish()
	s.fresh = false
	// The call's network denials: streamed as they happen, in its answer at its end.
	var answered *api.ExecuteResponse
	watch := d.watchCall(s.key, st)
	defer func() { watch(answered) }()
	var intr *interrupter
	if st != nil {
		intr = &interrupter{task: in.task, log: d.log.With("worker", w.id)}
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
		if newSession && s.previous != nil {
			resp.PreviousSession, s.previous = s.previous, nil
		}
		resp.DroppedBytes = res.DroppedBytes
		resp.Interrupted = intr.stopped(resp)
		answered = resp
		return resp, nil
	case errors.Is(err, agent.ErrClosed):
		return nil, d.cattle(ctx, s, mishap{what: connectionLost, inst: in, partial: res})
	case errors.Is(context.Cause(ctx), errReleased):
		// Release destroys the worker as soon as this call gives the session back.
		return nil, &api.Problem{Kind: api.Lost,
			Detail: "the session was released during the call; its worker was destroyed",
			After:  aftermath(w.id, res, api.Aftermath{StatePreserved: api.Flag(false), FilesKept: api.Flag(false)})}
	}

	// Out of time, or the caller went away.
	return nil, d.cattle(ctx, s, mishap{what: timedOut, inst: in, call: call, timeout: timeout, language: language})
}

// interrupt sends SIGINT until the kernel is idle or ctx ends. Once is not always enough: a
// signal that lands as the code is sent, before the agent runs it, is ignored (the agent
// never interrupts itself), and the code would run on.
func (d *Daemon) interrupt(ctx context.Context, workerID string, t task, call agentCall) (*agent.Result, error) {
	for {
		if err := t.Signal(syscall.SIGINT); err != nil {
			d.log.Warn("interrupt failed", "worker", workerID, "err", err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, d.timings.interruptEvery)
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
