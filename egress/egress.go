// Package egress owns what a session's worker may reach on the network (SPEC 3.12): its
// allowlist (policy.go), the resolver that is every worker's only DNS server and answers
// allowed names alone (dns.go), the transparent proxy every TCP connection of a worker is
// redirected to, which decides it on the destination the resolver gave, the TLS SNI and the
// HTTP Host (proxy.go), the log of UDP datagrams the firewall drops (udplog.go), and the
// events of every decision, kept per session in a bounded ring (events.go). The firewall
// package sends the traffic here; the daemon tells it which worker serves which session
// under which policy.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is where the server listens and what it answers with.
type Config struct {
	Gateway            netip.Addr   // the bridge's address: the workers' resolver and next hop
	Subnet             netip.Prefix // the workers'
	DNSPort, ProxyPort uint16       // on Gateway; the firewall redirects to them
	Upstream           string       // host:port of the resolver allowed names are asked of
	PrivateAllowlist   []netip.Prefix
	NFLOGGroup         uint16 // the firewall logs dropped UDP there (0: no UDP events)
	// The package cache, when the host serves one: workers reach it at Gateway:PackagePort
	// (the proxy hands those connections to it), sessions whose policy has the preset
	// "packages" (or every session, with PackagesDefault).
	PackagePort     uint16
	Packages        PackageHandler
	PackagesDefault bool
	Log             *slog.Logger
}

// The ports the resolver and the proxy listen on, on the bridge's address (the firewall
// redirects the workers' DNS and TCP there).
const (
	DNSPort   = 15353
	ProxyPort = 15001
	// PackagePort is the package cache's, on the gateway: nothing listens there, the proxy
	// serves the connections workers make to it.
	PackagePort = 15080
)

// Bounds on what one worker can make the server hold or do.
const (
	maxNamesPerWorker = 4096             // resolved addresses remembered
	maxNamesPerAddr   = 16               // names remembered for one address (a decision reads them all)
	maxUpstreamPerW   = 8                // questions of one worker's at the upstream resolver at once
	maxConnsPerWorker = 256              // proxied connections at once
	maxConnsTotal     = 8192             // proxied connections at once, all workers
	dnsRate           = 100              // questions a second, per worker
	dnsBurst          = 200              //
	ttlGrace          = 30 * time.Second // an answer stays valid this long past its TTL
	maxTTL            = time.Hour        // and at most this long
)

// Server decides the workers' DNS questions, TCP connections and UDP datagrams.
type Server struct {
	cfg   Config
	guard guard
	log   *slog.Logger

	decisions *prometheus.CounterVec

	packages *packageServer

	mu      sync.Mutex
	workers map[netip.Addr]*workerState
	rings   map[string]*ring // by owner (a session)
	conns   int              // proxied connections open, all workers
}

// workerState is what the server knows of one worker.
type workerState struct {
	owner  string  // the session it serves ("": none, it reaches nothing)
	policy *Policy // the owner's
	names  map[netip.Addr][]answer
	nNames int
	conns  map[*proxied]struct{}
	// pkgConns are its connections to the package cache.
	pkgConns map[*packageConn]struct{}
	tokens   float64 // DNS questions it may still ask (a token bucket)
	asking   int     // its questions at the upstream resolver now
	filled   time.Time
}

// answer is a name the resolver answered to a worker with an address, until when.
type answer struct {
	name  string
	until time.Time
}

// New returns a server for cfg; Start begins serving.
func New(cfg Config) (*Server, error) {
	if !cfg.Gateway.IsValid() || !cfg.Subnet.IsValid() || cfg.DNSPort == 0 || cfg.ProxyPort == 0 || cfg.Upstream == "" {
		return nil, errors.New("egress: incomplete configuration")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Server{cfg: cfg, log: cfg.Log, guard: guard{subnet: cfg.Subnet, privateAllow: cfg.PrivateAllowlist},
		workers: map[netip.Addr]*workerState{}, rings: map[string]*ring{},
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codebox_egress_decisions_total", Help: "Network decisions on the workers' DNS questions, TCP connections and UDP datagrams, by kind, decision and reason.",
		}, []string{"kind", "decision", "reason"})}, nil
}

// Collectors are the server's metrics.
func (s *Server) Collectors() []prometheus.Collector { return []prometheus.Collector{s.decisions} }

// Start serves until ctx ends: the resolver, the proxy and the UDP log.
func (s *Server) Start(ctx context.Context) error {
	if err := s.serveDNS(ctx); err != nil {
		return fmt.Errorf("egress resolver: %w", err)
	}
	if err := s.serveProxy(ctx); err != nil {
		return fmt.Errorf("egress proxy: %w", err)
	}
	if s.cfg.Packages != nil && s.cfg.PackagePort != 0 {
		s.packages = s.servePackages(ctx)
	}
	if s.cfg.NFLOGGroup != 0 {
		if err := s.logUDP(ctx); err != nil {
			return fmt.Errorf("egress UDP log: %w", err)
		}
	}
	return nil
}

// Assign makes the worker at ip serve owner under policy p (nil: it reaches nothing).
func (s *Server) Assign(ip netip.Addr, owner string, p *Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workerLocked(ip)
	w.owner, w.policy = owner, p
	if owner != "" && s.rings[owner] == nil {
		s.rings[owner] = &ring{}
	}
	s.recheckLocked(w)
}

// SetPolicy replaces owner's policy on all its workers: new connections follow at once,
// open ones it no longer allows are cut.
func (s *Server) SetPolicy(owner string, p *Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		if w.owner == owner {
			w.policy = p
			s.recheckLocked(w)
		}
	}
}

// Release forgets the worker at ip (destroyed, or back to no session): its connections
// are cut, its answers forgotten.
func (s *Server) Release(ip netip.Addr) {
	s.mu.Lock()
	w := s.workers[ip]
	delete(s.workers, ip)
	var open []*proxied
	var pkg []*packageConn
	if w != nil {
		for c := range w.conns {
			open = append(open, c)
			delete(w.conns, c)
			s.conns--
		}
		for c := range w.pkgConns {
			pkg = append(pkg, c)
		}
	}
	s.mu.Unlock()
	for _, c := range open {
		c.cut()
	}
	for _, c := range pkg {
		c.Close() // counts itself out
	}
}

// Forget drops owner's events (its session ended).
func (s *Server) Forget(owner string) {
	s.mu.Lock()
	delete(s.rings, owner)
	s.mu.Unlock()
}

// Events returns at most limit of owner's events from seq on, the seq to ask from next,
// and how many its ring dropped.
func (s *Server) Events(owner string, seq uint64, limit int) ([]Event, uint64, uint64) {
	r := s.ring(owner)
	if r == nil {
		return nil, 0, 0
	}
	return r.since(seq, limit)
}

// Mark is the seq owner's next event will have: a call notes it when it starts.
func (s *Server) Mark(owner string) uint64 {
	if r := s.ring(owner); r != nil {
		return r.mark()
	}
	return 0
}

// Denials returns owner's first n denials from seq on, and how many there were.
func (s *Server) Denials(owner string, seq uint64, n int) ([]Event, int) {
	if r := s.ring(owner); r != nil {
		return r.denials(seq, n)
	}
	return nil, 0
}

// Watch calls fn with each of owner's events from now on (it must not block), until the
// returned func is called.
func (s *Server) Watch(owner string, fn func(Event)) func() {
	if r := s.ring(owner); r != nil {
		stop, _ := r.watch(fn)
		return stop
	}
	return func() {}
}

func (s *Server) ring(owner string) *ring {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rings[owner]
}

func (s *Server) workerLocked(ip netip.Addr) *workerState {
	w := s.workers[ip]
	if w == nil {
		w = &workerState{names: map[netip.Addr][]answer{}, conns: map[*proxied]struct{}{}, pkgConns: map[*packageConn]struct{}{},
			tokens: dnsBurst, filled: time.Now()}
		s.workers[ip] = w
	}
	return w
}

// record counts a decision and puts it in the worker's owner's ring; it returns the event
// (nil when the worker serves no session).
func (s *Server) record(w *workerState, e Event) *Event {
	reason := e.Reason
	s.decisions.WithLabelValues(e.Kind, e.Decision, reason).Inc()
	s.mu.Lock()
	var r *ring
	if w != nil && w.owner != "" {
		r = s.rings[w.owner]
	}
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	e.Time = time.Now()
	ev := &e
	r.add(ev)
	return ev
}

// rememberLocked notes that the resolver answered name with ip to w, for ttl.
func (s *Server) rememberLocked(w *workerState, ip netip.Addr, name string, ttl time.Duration) {
	now := time.Now()
	until := now.Add(min(ttl, maxTTL) + ttlGrace)
	kept := s.expireLocked(w, ip, now, name) // renewed below
	if len(kept) >= maxNamesPerAddr {
		return // an address many allowed names share: the first ones are enough to decide
	}
	if w.nNames >= maxNamesPerWorker {
		s.pruneLocked(w)
		if w.nNames >= maxNamesPerWorker {
			return // full of live answers: this one is not remembered, its connections are denied
		}
	}
	w.names[ip] = append(w.names[ip], answer{name: name, until: until})
	w.nNames++
}

func (s *Server) pruneLocked(w *workerState) {
	now := time.Now()
	for ip := range w.names {
		s.expireLocked(w, ip, now, "")
	}
}

// expireLocked drops w's answers for ip that ran out by now, and the one for name, and
// returns those left.
func (s *Server) expireLocked(w *workerState, ip netip.Addr, now time.Time, name string) []answer {
	list := w.names[ip]
	kept := list[:0]
	for _, a := range list {
		if a.name != name && a.until.After(now) {
			kept = append(kept, a)
		}
	}
	w.nNames -= len(list) - len(kept)
	if len(kept) == 0 {
		delete(w.names, ip)
	} else {
		w.names[ip] = kept
	}
	return kept
}

// namesOf are the names the resolver answered w with ip, still valid.
func (s *Server) namesOfLocked(w *workerState, ip netip.Addr) []string {
	var out []string
	now := time.Now()
	for _, a := range w.names[ip] {
		if a.until.After(now) {
			out = append(out, a.name)
		}
	}
	return out
}

// allowDNS takes a token from w's bucket.
func (s *Server) allowDNSLocked(w *workerState) bool {
	now := time.Now()
	w.tokens = min(dnsBurst, w.tokens+now.Sub(w.filled).Seconds()*dnsRate)
	w.filled = now
	if w.tokens < 1 {
		return false
	}
	w.tokens--
	return true
}
