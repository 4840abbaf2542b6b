package daemon

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/codebox/codebox/api"
)

// errReleased ends the call in flight when its session is released.
var errReleased = errors.New("the session was released")

// errGone is returned to a caller that waited for a session which ended meanwhile: it
// looks the user_uuid up again and gets a new session.
var errGone = errors.New("session ended while waiting")

// session is one user_uuid's claim on a worker. Its calls run one at a time, in arrival
// order (turn.go).
type session struct {
	user string
	// ended is cancelled (cause errReleased) when the session is released or recycled:
	// the call holding the turn stops at once, and callers waiting for it look again.
	ended  context.Context
	endNow context.CancelCauseFunc

	turn

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

// takeTurn waits for the session's turn in arrival order. It returns the call's context:
// ctx, also ended when the session is released. The caller calls done when finished.
// errGone: the session ended while the caller waited.
func (s *session) takeTurn(ctx context.Context) (callCtx context.Context, done func(), err error) {
	if err := s.take(ctx, s.ended); err != nil {
		return nil, nil, err
	}
	if s.gone || s.ended.Err() != nil {
		s.pass()
		return nil, nil, errGone
	}
	callCtx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ended, func() { cancel(context.Cause(s.ended)) })
	return callCtx, func() {
		stop()
		cancel(nil)
		s.lastUsed.Store(time.Now().UnixNano())
		s.pass()
	}, nil
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
		callCtx, done, err := s.takeTurn(ctx)
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
	if d.sessions[s.user] != s || !s.tryTake() {
		return
	}
	if s.worker == nil && !s.gone {
		delete(d.sessions, s.user)
		s.gone = true
	}
	s.pass()
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
	if err := s.take(ctx, context.Background()); err != nil {
		d.log.Error("release: the call in flight did not end", "session_worker", s.workerID(), "err", err)
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "the session's call in flight did not end; retry the release", Cause: err}
	}
	s.gone = true
	d.dropWorker(ctx, s, "released")
	s.pass()
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
		if !s.tryTake() {
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
		s.pass()
	}
}
