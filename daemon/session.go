package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
)

// errReleased ends the call in flight when its session ends.
var errReleased = errors.New("the session was released")

// errGone is returned to a caller that waited for a session which ended meanwhile: it
// looks the session up again and gets a new one.
var errGone = errors.New("session ended while waiting")

// sessionKey names a session: its id within its tenant (two tenants' "alice" are two
// sessions).
type sessionKey struct{ tenant, id string }

// session is one session's claim on a worker. Its calls run one at a time, in arrival
// order (turn.go).
type session struct {
	key sessionKey
	// ended is cancelled (cause errReleased) when the session ends: the call holding the
	// turn stops at once, and callers waiting for it look again.
	ended  context.Context
	endNow context.CancelCauseFunc

	turn

	// Guarded by the turn:
	worker *worker
	gone   bool // ended: a caller that gets the turn must look the session up again
	// fresh: the session's kernel has run none of its code yet although the session had a
	// worker (its kernel was restarted): the next call says new_session.
	fresh bool
	// previous is the ended session this one replaced, said by the answer that made it.
	previous *api.PreviousSession

	// lastUsed is when the session was last active (unix nanoseconds): a call or file call
	// began or ended, a stream message came.
	lastUsed atomic.Int64

	transfers chan struct{} // the session's share of the transfer slots

	// Guarded by Daemon.mu; PATCH changes it holding patchMu (one PATCH at a time, and
	// no kernel restart's fitting in between).
	shape   shape
	patchMu sync.Mutex
	expiry  *time.Timer // ends the session at its lifetime or idle deadline (lifetime.go)
}

func newSession(key sessionKey, sh shape) *session {
	s := &session{key: key, shape: sh, transfers: make(chan struct{}, maxSessionTransfers)}
	s.ended, s.endNow = context.WithCancelCause(context.Background())
	s.touch()
	return s
}

// touch records activity: the idle clock starts again.
func (s *session) touch() { s.lastUsed.Store(time.Now().UnixNano()) }

// takeTurn waits for the session's turn in arrival order. It returns the call's context:
// ctx, also ended when the session ends. The caller calls done when finished.
// errGone: the session ended while the caller waited.
func (s *session) takeTurn(ctx context.Context) (callCtx context.Context, done func(), err error) {
	if err := s.take(ctx, s.ended); err != nil {
		return nil, nil, err
	}
	if s.gone || s.ended.Err() != nil {
		s.pass()
		return nil, nil, errGone
	}
	s.touch()
	callCtx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ended, func() { cancel(context.Cause(s.ended)) })
	return callCtx, func() {
		stop()
		cancel(nil)
		s.touch()
		s.pass()
	}, nil
}

// keyFor is the session a call of ctx names by id: its caller's tenant's. A session's
// access token reaches its own session alone; another id is one it does not know.
func keyFor(ctx context.Context, id string) (sessionKey, error) {
	c := api.CallerOf(ctx)
	if c.Session != "" && c.Session != id {
		return sessionKey{}, api.Fail(api.NotFound, "no session %q for this access token", api.Echo(id))
	}
	return sessionKey{tenant: c.Tenant, id: id}, nil
}

// existing returns the caller's session id, or the answer for one that does not exist
// (with why it ended, when it is remembered).
func (d *Daemon) existing(ctx context.Context, id string) (sessionKey, *session, error) {
	key, err := keyFor(ctx, id)
	if err != nil {
		return key, nil, err
	}
	d.mu.Lock()
	s := d.sessions[key]
	d.mu.Unlock()
	if s == nil {
		return key, nil, d.notFound(key)
	}
	return key, s, nil
}

// lookup returns the session of key, making it (with the default shape) if there is none.
// A session made in place of an ended one remembers why that one ended.
func (d *Daemon) lookup(key sessionKey) *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[key]
	if s == nil {
		s = newSession(key, d.defaultShapeLocked(time.Now()))
		if e, ok := d.ended.get(key); ok {
			s.previous = &api.PreviousSession{EndedReason: e.Reason, EndedAt: e.At}
		}
		d.sessions[key] = s
		d.armExpiryLocked(s)
	}
	return s
}

// defaultShape is the shape of a session made by a call that names an unknown id: the
// default environment's. The caller holds d.mu.
func (d *Daemon) defaultShapeLocked(now time.Time) shape {
	expires, _ := d.lifetime(nil, now)                               // the operator's defaults are valid
	limits, env, _ := d.environmentShapeLocked(environments.Default) // the default always is
	return shape{environment: environments.Default, limits: limits, env: env, created: now,
		expires: expires, idleTimeout: d.cfg.IdleTimeout}
}

// withSession runs fn holding id's session, so its worker is neither released nor
// replaced meanwhile; fn's context ends when the session ends. Without create (or when the
// call said ?create=false), an id with no session is a 404 that says why an earlier one
// ended.
func (d *Daemon) withSession(ctx context.Context, id string, create bool, fn func(ctx context.Context, s *session) error) error {
	key, err := keyFor(ctx, id)
	if err != nil {
		return err
	}
	// A session's access token reaches its session while it lives, never a new one.
	create = create && api.MayCreate(ctx) && api.CallerOf(ctx).Session == ""
	for {
		var s *session
		if create {
			s = d.lookup(key)
		} else {
			d.mu.Lock()
			s = d.sessions[key]
			d.mu.Unlock()
			if s == nil {
				return d.notFound(key)
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

// notFound is the 404 of a session that is not there: why it ended, when it is known.
func (d *Daemon) notFound(key sessionKey) error {
	if e, ok := d.ended.get(key); ok {
		return &api.Problem{Kind: api.NotFound,
			Detail: fmt.Sprintf("session %q ended (%s) at %s", key.id, e.Reason, e.At.UTC().Format(time.RFC3339)),
			Ended:  &api.PreviousSession{EndedReason: e.Reason, EndedAt: e.At}}
	}
	return api.Fail(api.NotFound, "no session %q", key.id)
}

// forgetIfEmpty drops s from the sessions when it has no worker (its call was refused, at
// the cap, say) and nobody waits for it: otherwise every id ever refused would stay until
// --idle-timeout.
func (d *Daemon) forgetIfEmpty(s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sessions[s.key] != s || !s.tryTake() {
		return
	}
	if s.worker == nil && !s.gone {
		delete(d.sessions, s.key)
		s.stopExpiryLocked()
		s.gone = true
	}
	s.pass()
}

// Release implements api.Backend: the caller's session id ends (released). It never waits
// behind a call: the call in flight is cancelled, callers queued behind it get a new
// session, and the worker is destroyed as soon as the cancelled call has let go. No such
// session is not an error.
func (d *Daemon) Release(ctx context.Context, id string) error {
	key, err := keyFor(ctx, id)
	if err != nil {
		return nil
	}
	d.mu.Lock()
	s := d.sessions[key]
	d.mu.Unlock()
	if s == nil {
		return nil
	}
	return d.end(ctx, s, api.EndReleased)
}

// workerID names the session's worker for a log line; it reads without the turn.
func (s *session) workerID() string {
	if w := s.worker; w != nil {
		return w.id
	}
	return ""
}
