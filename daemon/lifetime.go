package daemon

import (
	"context"
	"time"

	"github.com/codebox/codebox/api"
)

// How a session ends, and when it must. A session ends when it is released or deleted, when
// its lifetime runs out (hard: a call in flight is cut), when it was idle for its idle
// timeout (never during a call), when its worker is lost, and when codeboxd stops with
// --destroy-on-stop or finds its worker gone at start. Every end goes through end or
// endHeld: the session leaves the registry at once, its access token dies, why it ended is
// remembered (ended.go), and its worker is given up once no call holds it.

// end ends s for reason; the caller does not hold s's turn. The call in flight is
// cancelled, never waited for past releaseWait: if it has not let go by then the worker is
// given up when it does, and the caller is told to retry.
func (d *Daemon) end(ctx context.Context, s *session, reason string) error {
	if !d.unregister(s, reason) {
		return nil
	}
	s.endNow(errReleased)
	wait, cancel := context.WithTimeout(ctx, releaseWait)
	defer cancel()
	if err := s.take(wait, context.Background()); err != nil {
		d.log.Error("session end: the call in flight did not end", "session_worker", s.workerID(), "err", err)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			s.take(context.Background(), context.Background())
			d.finishEnd(s, "session ended: "+reason)
			s.pass()
		}()
		return &api.Problem{Kind: api.Busy, RetryAfter: retryAfter,
			Detail: "the session ended, but its call in flight has not let go yet; its worker is destroyed when it does", Cause: err}
	}
	d.finishEnd(s, "session ended: "+reason)
	s.pass()
	return nil
}

// endHeld ends s for reason (why says more, for the log); the caller holds s's turn (and
// passes it on afterwards).
func (d *Daemon) endHeld(s *session, reason, why string) {
	if d.unregister(s, reason) {
		d.finishEnd(s, why)
	}
}

// unregister takes s out of the registry, kills its token and remembers why it ended. It
// reports whether s was registered (false: it ended already).
func (d *Daemon) unregister(s *session, reason string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sessions[s.key] != s {
		return false
	}
	delete(d.sessions, s.key)
	s.stopExpiryLocked()
	if s.shape.token != ([32]byte{}) {
		delete(d.tokens, s.shape.token)
	}
	e := endedSession{Tenant: s.key.tenant, ID: s.key.id, Reason: reason, At: time.Now(),
		Environment: s.shape.environment, Limits: s.shape.limits, Metadata: s.shape.metadata,
		CreatedAt: s.shape.created, LastActivityAt: time.Unix(0, s.lastUsed.Load())}
	if w := s.worker; w != nil {
		e.WorkerID = w.id
	}
	d.ended.put(e)
	d.egress.Forget(s.key.owner())
	d.vols.Release(s.key.owner())
	d.metrics.sessionsEnded.WithLabelValues(reason).Inc()
	d.log.Info("session ended", "tenant", s.key.tenant, "session", s.key.id, "reason", reason, "worker", e.WorkerID)
	return true
}

// finishEnd gives up s's worker (why, for the log); the caller holds s's turn.
func (d *Daemon) finishEnd(s *session, why string) {
	s.gone = true
	if w := s.worker; w != nil {
		d.mu.Lock()
		s.worker = nil
		d.mu.Unlock()
		d.giveUp(context.Background(), w, why)
	}
}

// minRecheck is the least time between two looks at a session in a call: a timer that
// fires in a tight loop would take Daemon.mu from everyone.
const minRecheck = time.Second

// deadline is when s must be looked at next: its lifetime's end or its idle deadline,
// whichever comes first. Under Daemon.mu.
func (s *session) deadline() time.Time {
	next := time.Unix(0, s.lastUsed.Load()).Add(s.shape.idleTimeout)
	if e := s.shape.expires; !e.IsZero() && e.Before(next) {
		next = e
	}
	return next
}

// armExpiryLocked (re)starts s's timer for its deadline. Under Daemon.mu.
func (d *Daemon) armExpiryLocked(s *session) {
	wait := time.Until(s.deadline())
	if s.expiry == nil {
		s.expiry = time.AfterFunc(wait, func() { d.checkExpiry(s) })
		return
	}
	s.expiry.Reset(wait)
}

func (s *session) stopExpiryLocked() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// checkExpiry ends s if its lifetime ran out, or if it was idle for its idle timeout and
// is not in a call; otherwise it looks again at its next deadline. Activity does not move
// the timer (that would cost every call); the timer finds it when it fires.
func (d *Daemon) checkExpiry(s *session) {
	d.mu.Lock()
	if d.sessions[s.key] != s || d.closing {
		d.mu.Unlock()
		return
	}
	now := time.Now()
	if e := s.shape.expires; !e.IsZero() && !now.Before(e) {
		d.mu.Unlock()
		d.end(d.bg, s, api.EndTTLExpired)
		return
	}
	idleAt := time.Unix(0, s.lastUsed.Load()).Add(s.shape.idleTimeout)
	if now.Before(idleAt) {
		d.armExpiryLocked(s)
		d.mu.Unlock()
		return
	}
	if !s.tryTake() { // in a call: in use; look again an idle timeout later (a second at least)
		s.expiry.Reset(max(s.shape.idleTimeout, minRecheck))
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	if time.Unix(0, s.lastUsed.Load()).Add(s.shape.idleTimeout).After(time.Now()) { // used meanwhile
		s.pass()
		d.mu.Lock()
		d.armExpiryLocked(s)
		d.mu.Unlock()
		return
	}
	d.endHeld(s, api.EndIdleTimeout, "idle session recycled")
	s.pass()
}

// sweepExpired looks at every session's deadline: the timers' backstop, every
// --recycle-interval.
func (d *Daemon) sweepExpired() {
	d.mu.Lock()
	var due []*session
	now := time.Now()
	for _, s := range d.sessions {
		if !s.deadline().After(now) {
			due = append(due, s)
		}
	}
	d.mu.Unlock()
	for _, s := range due {
		d.checkExpiry(s)
	}
}
