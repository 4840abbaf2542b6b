package daemon

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
)

// Workers are cattle: one that misbehaves is replaced, never repaired. This file is the one
// place that decides what becomes of a session's worker when a call finds it misbehaving,
// and what the caller is told (ARCHITECTURE's cattle table).

// mishapKind is what went wrong with a session's worker.
type mishapKind int

const (
	// timedOut: the code ran past its limit (or its caller went away).
	timedOut mishapKind = iota
	// connectionLost: the connection to the agent dropped during the call.
	connectionLost
	// exitedBetweenCalls: the task had ended before the call began.
	exitedBetweenCalls
)

// mishap is what a call found wrong, with what cattle needs to deal with it.
type mishap struct {
	what    mishapKind
	inst    *instance     // the task the call ran on
	partial *agent.Result // what the call produced before it failed
	// For timedOut: the call to interrupt, its limit and language.
	call     agentCall
	timeout  time.Duration
	language string
}

// cattle deals with the worker of session s (whose turn the caller holds) after m, and
// returns the call's answer. Its cases are the rows of ARCHITECTURE's cattle table, in order.
func (d *Daemon) cattle(ctx context.Context, s *session, m mishap) error {
	w, in := s.worker, m.inst
	var (
		stopped, languageLost bool // timedOut: the kernel came back idle; a language was killed
		exited                bool // connectionLost: the task ended
	)
	switch m.what {
	case timedOut:
		m.partial, stopped = d.interruptWithin(ctx, s, in, m.call)
		// The agent kills a language interpreter that outlives its interrupt and says so:
		// that language's state is lost, the worker and the other languages' are not.
		languageLost = stopped && m.partial != nil && m.partial.StateLost
	case connectionLost:
		if d.isClosing() && !in.hasExited() {
			// Close dropped the connection, not the worker: it stays for the next codeboxd.
			return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
				Detail: "codeboxd is restarting; the session and its worker are kept, retry shortly",
				After:  aftermath(w.id, m.partial, api.Aftermath{FilesKept: api.Flag(true)})}
		}
		exited = d.waitExit(in)
	}
	timeoutDetail := fmt.Sprintf("execution exceeded %g seconds and was interrupted", m.timeout.Seconds())

	switch {
	// Code runs past its limit and stops on SIGINT within the grace: the session keeps all.
	case m.what == timedOut && stopped && !languageLost:
		d.log.Info("execute timed out", "worker", w.id, "timeout", m.timeout, "language", m.language, "state_preserved", true)
		return &api.Problem{Kind: api.Timeout, Detail: timeoutDetail,
			After: aftermath(w.id, m.partial, api.Aftermath{StatePreserved: api.Flag(true)})}

	// Code runs past its limit and ignores SIGINT: the worker is destroyed (unless a release
	// is destroying it already).
	case m.what == timedOut && !stopped:
		if s.ended.Err() == nil {
			d.dropWorker(ctx, s, "kernel ignored the interrupt")
		}
		d.log.Info("execute timed out", "worker", w.id, "timeout", m.timeout, "language", m.language, "state_preserved", false)
		return &api.Problem{Kind: api.Timeout,
			Detail: timeoutDetail + "; the kernel did not stop, so the worker was replaced and the session's state is lost",
			After:  aftermath(w.id, m.partial, api.Aftermath{StatePreserved: api.Flag(false)})}

	// A JavaScript/TypeScript or bash interpreter outlived its interrupt: the agent killed
	// it; it starts afresh on its language's next call. (One that exits during a call is
	// answered by the agent itself: 400 InterpreterLost, state_preserved false.)
	case m.what == timedOut && languageLost:
		d.log.Info("execute timed out", "worker", w.id, "timeout", m.timeout, "language", m.language, "state_preserved", false)
		return &api.Problem{Kind: api.Timeout,
			Detail: timeoutDetail + fmt.Sprintf("; the %s interpreter did not stop, so it was restarted and its state is lost", m.language),
			After:  aftermath(w.id, m.partial, api.Aftermath{StatePreserved: api.Flag(false)})}

	// The connection dropped and the task exited (the memory limit, os._exit): a new task in
	// the same container, so the files on /sandbox stay.
	case m.what == connectionLost && exited:
		why := fmt.Sprintf("exit status %d", in.exitCode)
		if in.exitCode == 128+uint32(syscall.SIGKILL) {
			why = "killed, most likely by the memory limit"
		}
		restartCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentStartTimeout)
		defer cancel()
		// No PATCH between reading the shape and fitting the new task to it.
		s.patchMu.Lock()
		d.mu.Lock()
		sh := s.shape
		d.mu.Unlock()
		err := d.restartKernel(restartCtx, w, sh)
		s.patchMu.Unlock()
		if err != nil {
			d.log.Error("kernel restart failed", "worker", w.id, "err", err)
			d.dropWorker(ctx, s, "kernel restart failed")
			return &api.Problem{Kind: api.Lost,
				Detail: fmt.Sprintf("the kernel died during the call (%s) and could not be restarted; the session was reset and its files are lost", why),
				After:  aftermath(w.id, m.partial, api.Aftermath{FilesKept: api.Flag(false), KernelRestarted: api.Flag(false)})}
		}
		s.fresh = true
		return &api.Problem{Kind: api.Lost,
			Detail: fmt.Sprintf("the kernel died during the call (%s); it was restarted in the same worker: variables are lost, files under /sandbox were kept", why),
			After:  aftermath(w.id, m.partial, api.Aftermath{FilesKept: api.Flag(true), KernelRestarted: api.Flag(true)})}

	// The connection dropped and the task runs on: the worker is unreachable, or it sent
	// frames outside a call. It is destroyed.
	case m.what == connectionLost:
		why := "agent connection lost"
		if errors.Is(in.agent.Err(), agent.ErrMisbehaved) {
			why = "the worker sent frames outside a call"
		}
		d.dropWorker(ctx, s, why)
		return &api.Problem{Kind: api.Lost,
			Detail: "the worker became unreachable during the call; it was replaced and the session's state is lost",
			After:  aftermath(w.id, m.partial, api.Aftermath{FilesKept: api.Flag(false)})}

	// The session's task exited between calls (killed from outside): the worker is
	// destroyed; the call after this one starts afresh.
	default: // exitedBetweenCalls
		d.dropWorker(ctx, s, "task exited between calls")
		return &api.Problem{Kind: api.Lost,
			Detail: fmt.Sprintf("this session's worker stopped (exit status %d) since its last call; its state is lost and the next call starts afresh", in.exitCode),
			After:  &api.Aftermath{WorkerID: w.id, FilesKept: api.Flag(false)}}
	}
}

// interruptWithin interrupts a call out of time until its kernel is idle again or the
// interrupt grace passes (a release meanwhile cuts the grace short). stopped: it came back.
func (d *Daemon) interruptWithin(ctx context.Context, s *session, in *instance, call agentCall) (res *agent.Result, stopped bool) {
	graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.timings.interruptGrace)
	defer cancel()
	stop := context.AfterFunc(s.ended, cancel)
	defer stop()
	res, err := d.interrupt(graceCtx, s.worker.id, in.task, call)
	return res, err == nil
}

// waitExit says whether a task whose connection dropped has exited: the kernel died, or
// the worker is unreachable. A connection the worker broke by misbehaving is not waited for.
func (d *Daemon) waitExit(in *instance) bool {
	if !errors.Is(in.agent.Err(), agent.ErrMisbehaved) {
		select {
		case <-in.exited:
		case <-time.After(d.timings.exitGrace):
		}
	}
	return in.hasExited()
}

func (d *Daemon) isClosing() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closing
}

// dropWorker gives up the session's worker: the session ends (worker_lost), and a call
// that names it later gets a new one, told why. The caller holds the turn.
func (d *Daemon) dropWorker(ctx context.Context, s *session, why string) {
	if s.worker == nil {
		return
	}
	d.endHeld(s, api.EndWorkerLost, why)
}
