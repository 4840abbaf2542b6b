package egress

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

const (
	upstreamTimeout   = 2 * time.Second
	maxUpstreamAtOnce = 128
	// DNS over TCP: connections a worker may hold, and all workers.
	maxTCPPerWorker = 4
	maxTCPTotal     = 256
)

// serveDNS listens on the gateway, UDP and TCP. The sockets bind before the bridge has its
// address (IP_FREEBIND: CNI makes the bridge with the first worker).
func (s *Server) serveDNS(ctx context.Context) error {
	addr := netip.AddrPortFrom(s.cfg.Gateway, s.cfg.DNSPort).String()
	lc := net.ListenConfig{Control: freebind}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return err
	}
	tl, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		pc.Close()
		return err
	}
	ln := &limitListener{Listener: tl, perSource: maxTCPPerWorker, total: maxTCPTotal, open: map[netip.Addr]int{}}
	upstream := make(chan struct{}, maxUpstreamAtOnce)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) { s.answer(ctx, w, q, upstream) })
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: h},
		{Listener: ln, Handler: h, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			IdleTimeout: func() time.Duration { return 2 * time.Second }, MaxTCPQueries: 4},
	} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil && ctx.Err() == nil {
				s.log.Error("egress resolver stopped", "err", err)
			}
		}()
		go func() { <-ctx.Done(); srv.Shutdown() }()
	}
	return nil
}

// freebind lets a socket bind an address the host does not have yet.
func freebind(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) })
	if err != nil {
		return err
	}
	return serr
}

// answer is the policy at DNS: a name a rule allows is asked of the upstream resolver and
// its addresses remembered for the worker; any other name is NXDOMAIN and never leaves the
// host.
func (s *Server) answer(ctx context.Context, w dns.ResponseWriter, q *dns.Msg, upstream chan struct{}) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	src := addrOf(w.RemoteAddr())
	s.mu.Lock()
	ws := s.workers[src]
	if ws == nil && s.cfg.Subnet.Contains(src) {
		ws = s.workerLocked(src) // a worker the daemon has not assigned yet: it reaches nothing
	}
	allowed := ws != nil && s.allowDNSLocked(ws)
	var policy *Policy
	if ws != nil {
		policy = ws.policy
	}
	s.mu.Unlock()
	if ws == nil || !allowed {
		if ws != nil {
			// Said, so a call that met it knows why its names did not resolve.
			name := ""
			if len(q.Question) == 1 {
				name = strings.TrimSuffix(strings.ToLower(q.Question[0].Name), ".")
			}
			s.record(ws, Event{Kind: "dns", Name: name, Decision: DecisionDenied, Reason: ReasonRateLimited})
		}
		m.Rcode = dns.RcodeRefused
		w.WriteMsg(m)
		return
	}
	if len(q.Question) != 1 || q.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	question := q.Question[0]
	name := strings.TrimSuffix(strings.ToLower(question.Name), ".")
	rule, ok := policy.matchName(name, 0)
	if strings.ContainsRune(name, '\\') {
		// An escaped dot or byte: `a\.pypi.org` is one label "a.pypi" under .org, not a
		// name below pypi.org; no host name needs one.
		ok = false
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		s.record(ws, Event{Kind: "dns", Name: name, Decision: DecisionDenied, Reason: ReasonDNSDenied})
		w.WriteMsg(m)
		return
	}
	ev := Event{Kind: "dns", Name: name, Decision: DecisionAllowed, Rule: rule.Text}
	if question.Qtype == dns.TypeAAAA {
		// Workers have no IPv6: an empty answer sends them to the A record at once.
		s.record(ws, ev)
		w.WriteMsg(m)
		return
	}
	// One worker's slow names must not hold every place at the upstream resolver.
	s.mu.Lock()
	mine := ws.asking < maxUpstreamPerW
	if mine {
		ws.asking++
	}
	s.mu.Unlock()
	if !mine {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	defer func() {
		s.mu.Lock()
		ws.asking--
		s.mu.Unlock()
	}()
	select {
	case upstream <- struct{}{}:
		defer func() { <-upstream }()
	default:
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	up := new(dns.Msg)
	up.SetQuestion(dns.Fqdn(name), question.Qtype)
	up.RecursionDesired = true
	r, err := s.exchange(ctx, up)
	if err != nil {
		m.Rcode = dns.RcodeServerFailure
		s.record(ws, ev)
		w.WriteMsg(m)
		return
	}
	m.Rcode, m.Answer = r.Rcode, r.Answer
	s.mu.Lock()
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A); ok {
				s.rememberLocked(ws, ip.Unmap(), name, time.Duration(a.Hdr.Ttl)*time.Second)
				if ev.IP == "" {
					ev.IP = ip.Unmap().String()
				}
			}
		}
	}
	s.mu.Unlock()
	s.record(ws, ev)
	w.WriteMsg(m)
}

// exchange asks the upstream resolver, over TCP when the UDP answer is truncated.
func (s *Server) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: upstreamTimeout}
	r, _, err := c.ExchangeContext(ctx, q, s.cfg.Upstream)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, q, s.cfg.Upstream)
	}
	return r, err
}

// addrOf is the IP address of a net.Addr.
func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// limitListener bounds the DNS-over-TCP connections a source may hold, and all of them:
// the DNS server starts a goroutine and a buffer for each.
type limitListener struct {
	net.Listener
	perSource, total int

	mu   sync.Mutex
	open map[netip.Addr]int
	n    int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := addrOf(c.RemoteAddr())
		l.mu.Lock()
		ok := l.n < l.total && l.open[src] < l.perSource
		if ok {
			l.n++
			l.open[src]++
		}
		l.mu.Unlock()
		if !ok {
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: func() {
			l.mu.Lock()
			l.n--
			if l.open[src]--; l.open[src] <= 0 {
				delete(l.open, src)
			}
			l.mu.Unlock()
		}}, nil
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
