// Package connguard owns the admission of the API's connections: how many may be open, how
// many of them may be of callers that have not yet shown a valid key, how many of those one
// source address may hold, and how long such a connection may sit idle. A connection is
// "unauthenticated" until a request on it passes authentication (the handlers say so with
// Authenticated); /healthz and the console's page need no key, so anyone can hold
// connections, and without these bounds a few thousand idle keep-alive connections lock
// every caller out (and a load balancer takes the node out of its fleet).
//
// When a bound is reached, the oldest idle unauthenticated connection (of the same source,
// for the per-source bound) is closed to make room; when none is idle, the new connection is
// closed. Authenticated connections are never closed to make room.
package connguard

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Config are the bounds.
type Config struct {
	// Max bounds all open connections (not hijacked ones: websockets have bounds of their own).
	Max int
	// MaxUnauthenticated bounds the connections that have carried no authenticated request;
	// the rest of Max is kept for callers with a key.
	MaxUnauthenticated int
	// PerSource bounds the unauthenticated connections of one source address. Trusted
	// sources (a load balancer in front) are exempt.
	PerSource int
	// UnauthenticatedIdle closes an unauthenticated connection idle this long.
	UnauthenticatedIdle time.Duration
	// Trusted reports whether a source address is a proxy whose connections carry many
	// callers; nil: none is.
	Trusted func(net.IP) bool
	Log     *slog.Logger
}

// Guard tracks the connections of one http.Server: set its ConnState and ConnContext.
type Guard struct {
	cfg Config

	mu      sync.Mutex
	conns   map[net.Conn]*conn
	unauth  int
	perSrc  map[string]int
	seq     uint64
	refused atomic.Int64 // new connections closed at once
	evicted atomic.Int64 // idle unauthenticated connections closed to make room
	expired atomic.Int64 // unauthenticated connections closed for idling

	lastLog time.Time
}

type conn struct {
	c      net.Conn
	src    string
	seq    uint64 // order of arrival
	authed bool
	idle   bool
	// idleSeq changes at every state change, so that a timer set at an earlier idle
	// period does nothing.
	idleSeq uint64
	closed  bool
}

type ctxKey struct{}

// New returns a guard with cfg's bounds.
func New(cfg Config) *Guard {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Guard{cfg: cfg, conns: map[net.Conn]*conn{}, perSrc: map[string]int{}}
}

// ConnContext puts the connection's record into its requests' contexts, for Authenticated.
func (g *Guard) ConnContext(ctx context.Context, c net.Conn) context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	if tc := g.conns[c]; tc != nil {
		return context.WithValue(ctx, ctxKey{}, &handle{g: g, c: tc})
	}
	return context.WithValue(ctx, ctxKey{}, &handle{g: g, c: g.addLocked(c)})
}

type handle struct {
	g *Guard
	c *conn
}

// Authenticated marks the connection of the request whose context is ctx as one of a
// caller with a valid key: it no longer counts against the unauthenticated bounds, and is
// never closed for idling before the server's own idle timeout.
func Authenticated(ctx context.Context) {
	h, _ := ctx.Value(ctxKey{}).(*handle)
	if h == nil {
		return
	}
	h.g.mu.Lock()
	defer h.g.mu.Unlock()
	if h.c.authed || h.c.closed {
		return
	}
	h.c.authed = true
	h.g.unauth--
	h.g.dropSourceLocked(h.c.src)
}

// ConnState is the server's connection state hook.
func (g *Guard) ConnState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		g.mu.Lock()
		tc := g.conns[c]
		if tc == nil {
			tc = g.addLocked(c)
		}
		refuse := g.admitLocked(tc)
		g.mu.Unlock()
		if refuse {
			g.refused.Add(1)
			g.note()
			c.Close()
		}
	case http.StateActive:
		g.mu.Lock()
		if tc := g.conns[c]; tc != nil {
			tc.idle = false
			tc.idleSeq++
		}
		g.mu.Unlock()
	case http.StateIdle:
		g.mu.Lock()
		tc := g.conns[c]
		if tc != nil {
			tc.idle = true
			tc.idleSeq++
			if !tc.authed {
				seq := tc.idleSeq
				time.AfterFunc(g.cfg.UnauthenticatedIdle, func() { g.expire(tc, seq) })
			}
		}
		g.mu.Unlock()
	case http.StateHijacked, http.StateClosed:
		g.mu.Lock()
		if tc := g.conns[c]; tc != nil {
			g.removeLocked(tc)
		}
		g.mu.Unlock()
	}
}

func (g *Guard) addLocked(c net.Conn) *conn {
	g.seq++
	tc := &conn{c: c, src: sourceOf(c), seq: g.seq}
	g.conns[c] = tc
	g.unauth++
	if !g.trusted(tc.src) {
		g.perSrc[tc.src]++
	}
	return tc
}

func (g *Guard) removeLocked(tc *conn) {
	if tc.closed {
		return
	}
	tc.closed = true
	delete(g.conns, tc.c)
	if !tc.authed {
		g.unauth--
		g.dropSourceLocked(tc.src)
	}
}

func (g *Guard) dropSourceLocked(src string) {
	if g.trusted(src) {
		return
	}
	if g.perSrc[src]--; g.perSrc[src] <= 0 {
		delete(g.perSrc, src)
	}
}

func (g *Guard) trusted(src string) bool {
	return g.cfg.Trusted != nil && g.cfg.Trusted(net.ParseIP(src))
}

// admitLocked makes room for the new connection tc within each bound, closing the oldest
// idle unauthenticated connection where one is over; true when tc itself must go.
func (g *Guard) admitLocked(tc *conn) bool {
	over := []struct {
		n, max int
		src    string
	}{
		{len(g.conns), g.cfg.Max, ""},
		{g.unauth, g.cfg.MaxUnauthenticated, ""},
	}
	if !g.trusted(tc.src) {
		over = append(over, struct {
			n, max int
			src    string
		}{g.perSrc[tc.src], g.cfg.PerSource, tc.src})
	}
	for _, o := range over {
		if o.max <= 0 || o.n <= o.max {
			continue
		}
		victim := g.oldestIdleLocked(o.src, tc)
		if victim == nil {
			g.removeLocked(tc)
			return true
		}
		g.removeLocked(victim)
		g.evicted.Add(1)
		go victim.c.Close()
	}
	return false
}

// oldestIdleLocked is the idle unauthenticated connection (of src, when not empty) that
// arrived first, other than except.
func (g *Guard) oldestIdleLocked(src string, except *conn) *conn {
	var best *conn
	for _, tc := range g.conns {
		if tc == except || tc.authed || !tc.idle || (src != "" && tc.src != src) {
			continue
		}
		if best == nil || tc.seq < best.seq {
			best = tc
		}
	}
	return best
}

// expire closes an unauthenticated connection still idle since the period seq began.
func (g *Guard) expire(tc *conn, seq uint64) {
	g.mu.Lock()
	if tc.closed || tc.authed || !tc.idle || tc.idleSeq != seq {
		g.mu.Unlock()
		return
	}
	g.removeLocked(tc)
	g.mu.Unlock()
	g.expired.Add(1)
	tc.c.Close()
}

// note logs, at most every 10 s, how many connections were refused so far: under a flood
// one line a connection would be one more way to flood the log.
func (g *Guard) note() {
	g.mu.Lock()
	if time.Since(g.lastLog) < 10*time.Second {
		g.mu.Unlock()
		return
	}
	g.lastLog = time.Now()
	g.mu.Unlock()
	s := g.Stats()
	g.cfg.Log.Warn("connections refused: a connection bound is reached", "open", s.Open, "unauthenticated", s.Unauthenticated,
		"refused_total", s.Refused, "evicted_total", s.Evicted, "expired_total", s.Expired)
}

// Stats are the guard's counts.
type Stats struct {
	Open, Unauthenticated int
	// IdleUnauthenticated are the unauthenticated connections between requests: those
	// that may be closed to make room.
	IdleUnauthenticated       int
	Refused, Evicted, Expired int64
}

// Stats returns the current counts.
func (g *Guard) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	idle := 0
	for _, tc := range g.conns {
		if tc.idle && !tc.authed && !tc.closed {
			idle++
		}
	}
	return Stats{Open: len(g.conns), Unauthenticated: g.unauth, IdleUnauthenticated: idle,
		Refused: g.refused.Load(), Evicted: g.evicted.Load(), Expired: g.expired.Load()}
}

// sourceOf is the address a connection comes from.
func sourceOf(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}
