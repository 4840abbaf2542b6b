package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// sniffTimeout is how long the proxy waits for a connection's first bytes (a TLS
	// ClientHello, an HTTP request) before it decides on the address alone: protocols where
	// the server speaks first send nothing.
	sniffTimeout = 1 * time.Second
	maxSniff     = 16 << 10
	dialTimeout  = 10 * time.Second
)

// proxied is one connection a worker opened, through the proxy.
type proxied struct {
	w          *workerState
	dst        netip.AddrPort
	name       string // the name it was allowed by (a resolved answer, SNI or Host)
	sniName    string // the TLS SNI or HTTP Host it carried
	ev         *Event
	client     *net.TCPConn
	out, in    atomic.Int64
	cutForGood atomic.Bool

	mu       sync.Mutex
	upstream net.Conn
	closed   bool
}

// cut closes both sides at once (a policy change, the worker gone).
func (c *proxied) cut() {
	c.cutForGood.Store(true)
	c.close()
}

func (c *proxied) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.client.SetLinger(0) // RST: the worker learns at once
	c.client.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
}

// setUpstream records the connection to the destination; false when the client side was
// closed meanwhile (up is closed then).
func (c *proxied) setUpstream(up net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		up.Close()
		return false
	}
	c.upstream = up
	return true
}

// serveProxy accepts the workers' TCP connections the firewall redirects to it.
func (s *Server) serveProxy(ctx context.Context) error {
	lc := net.ListenConfig{Control: freebind}
	ln, err := lc.Listen(ctx, "tcp4", netip.AddrPortFrom(s.cfg.Gateway, s.cfg.ProxyPort).String())
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				s.log.Error("egress proxy: accept", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			go s.handle(ctx, c.(*net.TCPConn))
		}
	}()
	return nil
}

// decision is what the proxy makes of a connection.
type decision struct {
	allowed bool
	reason  string
	rule    Rule
	name    string
}

// decideLocked decides a connection of w to dst on what is known before its first bytes:
// the destination's address and port, and the names the resolver answered w with it.
func (s *Server) decideLocked(w *workerState, dst netip.AddrPort) decision {
	ip, port := dst.Addr().Unmap(), dst.Port()
	if !s.guard.allowed(ip) {
		return decision{reason: ReasonPrivate}
	}
	p := w.policy
	if r, ok := p.matchAddr(ip, port); ok {
		return decision{allowed: true, rule: r}
	}
	if s.guard.private(ip) {
		return decision{reason: ReasonPrivate} // an allowlisted private address: by an address rule only
	}
	names := s.namesOfLocked(w, ip)
	for _, n := range names {
		if r, ok := p.matchName(n, port); ok {
			return decision{allowed: true, rule: r, name: n}
		}
	}
	for _, n := range names {
		if p.nameListed(n) {
			return decision{reason: ReasonPort, name: firstOf(names)}
		}
	}
	switch {
	case p.addrListed(ip):
		return decision{reason: ReasonPort}
	case len(names) > 0:
		return decision{reason: ReasonNotAllowed, name: firstOf(names)}
	}
	return decision{reason: ReasonIPLiteral}
}

// decideNameLocked checks the name a connection carries (TLS SNI, HTTP Host) against w's
// policy: allowed on port, and answered to w with the connection's address.
func (s *Server) decideNameLocked(w *workerState, dst netip.AddrPort, name string) decision {
	r, ok := w.policy.matchName(name, dst.Port())
	if !ok {
		return decision{reason: ReasonSNIMismatch, name: name}
	}
	for _, n := range s.namesOfLocked(w, dst.Addr().Unmap()) {
		if n == name {
			return decision{allowed: true, rule: r, name: name}
		}
	}
	return decision{reason: ReasonSNIMismatch, name: name}
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func (s *Server) handle(ctx context.Context, c *net.TCPConn) {
	src := addrOf(c.RemoteAddr())
	dst, err := originalDst(c)
	if err != nil {
		c.SetLinger(0)
		c.Close()
		return
	}
	s.mu.Lock()
	w := s.workers[src]
	if w == nil && s.cfg.Subnet.Contains(src) {
		w = s.workerLocked(src)
	}
	if w == nil {
		s.mu.Unlock()
		c.SetLinger(0)
		c.Close()
		return
	}
	if s.packages != nil && dst == netip.AddrPortFrom(s.cfg.Gateway, s.cfg.PackagePort) {
		s.mu.Unlock()
		s.packages.handOff(s, w, c)
		return
	}
	d := s.decideLocked(w, dst)
	if d.allowed && (len(w.conns) >= maxConnsPerWorker || s.conns >= maxConnsTotal) {
		d = decision{reason: ReasonConnLimit}
	}
	p := &proxied{w: w, dst: dst, client: c, name: d.name}
	if d.allowed {
		w.conns[p] = struct{}{}
		s.conns++
	}
	s.mu.Unlock()
	ev := Event{Kind: "tcp", Name: d.name, IP: dst.Addr().String(), Port: dst.Port(), Rule: d.rule.Text}
	if !d.allowed {
		ev.Decision, ev.Reason = DecisionDenied, d.reason
		s.record(w, ev)
		p.close()
		return
	}
	defer func() {
		s.mu.Lock()
		if _, ok := w.conns[p]; ok { // not already taken out by a recheck
			delete(w.conns, p)
			s.conns--
		}
		s.mu.Unlock()
	}()

	// Allowed by a name: the first bytes' TLS ClientHello SNI or HTTP request Host must be
	// allowed and answered with this address too (no spoofing, no fronting a shared address
	// with another name in clear). Bytes that carry no name are denied, unless the rule
	// names a port of its own, not 80 or 443 (ssh, a database's protocol); a connection
	// that sends nothing in time goes on the address (the server speaks first). Allowed by
	// an address rule: what it carries is its own.
	//
	// The connection to the destination is made meanwhile (its address is allowed; only
	// the name may still deny it): the worker's first bytes and the handshake overlap.
	type dialed struct {
		c   net.Conn
		err error
	}
	dialc := make(chan dialed, 1)
	dctx, cancelDial := context.WithCancel(ctx)
	defer cancelDial()
	go func() {
		up, err := (&net.Dialer{Timeout: dialTimeout}).DialContext(dctx, "tcp", dst.String())
		dialc <- dialed{up, err}
	}()
	abandon := func() {
		cancelDial()
		if r := <-dialc; r.c != nil {
			r.c.Close()
		}
	}
	var first []byte
	if d.rule.Host != "" {
		var name string
		var kind int
		first, name, kind = sniff(c)
		switch {
		case kind == sniffNamed:
			s.mu.Lock()
			d = s.decideNameLocked(w, dst, name)
			if d.allowed {
				p.name, p.sniName = name, name
			}
			s.mu.Unlock()
			ev.Name, ev.Rule = name, d.rule.Text
		case kind == sniffOther && d.rule.Port != 0 && d.rule.Port != 80 && d.rule.Port != 443, kind == sniffSilent:
		case kind == sniffIncomplete:
			d = decision{reason: ReasonSNIMismatch}
		default:
			d = decision{reason: ReasonNoName}
		}
		if !d.allowed {
			ev.Decision, ev.Reason = DecisionDenied, d.reason
			s.record(w, ev)
			p.close()
			abandon()
			return
		}
	}
	if p.cutForGood.Load() {
		abandon()
		return // cut by a policy change meanwhile
	}
	r := <-dialc
	if r.err != nil {
		ev.Decision = DecisionAllowed
		s.record(w, ev)
		p.close()
		return
	}
	up := r.c.(*net.TCPConn)
	if !p.setUpstream(up) {
		return // cut meanwhile
	}
	ev.Decision = DecisionAllowed
	p.ev = s.record(w, ev)
	if _, err := up.Write(first); err != nil {
		p.close()
		return
	}
	p.out.Add(int64(len(first)))
	// TCPConn.ReadFrom of a TCPConn splices in the kernel: no copy through the proxy.
	done := make(chan struct{})
	go func() { n, _ := up.ReadFrom(c); p.out.Add(n); up.CloseWrite(); close(done) }()
	n, _ := c.ReadFrom(up)
	p.in.Add(n)
	c.CloseWrite()
	<-done
	p.close()
	if p.ev != nil {
		s.mu.Lock()
		r := s.rings[w.owner]
		s.mu.Unlock()
		if r != nil {
			r.update(p.ev, p.out.Load(), p.in.Load())
		}
	}
}

// recheckLocked cuts w's open connections its policy no longer allows. A connection
// keeps what allowed it (its name, its address rule): an answer's TTL running out does
// not cut a connection whose rule still stands.
func (s *Server) recheckLocked(w *workerState) {
	for c := range w.conns {
		d := s.stillAllowedLocked(w, c)
		if !d.allowed {
			delete(w.conns, c)
			s.conns--
			c.cut()
			go s.record(w, Event{Kind: "tcp", Name: c.name, IP: c.dst.Addr().String(), Port: c.dst.Port(),
				Decision: DecisionDenied, Reason: d.reason})
		}
	}
}

func (s *Server) stillAllowedLocked(w *workerState, c *proxied) decision {
	ip, port := c.dst.Addr().Unmap(), c.dst.Port()
	if !s.guard.allowed(ip) {
		return decision{reason: ReasonPrivate}
	}
	if c.name != "" && !s.guard.private(ip) {
		if r, ok := w.policy.matchName(c.name, port); ok {
			return decision{allowed: true, rule: r, name: c.name}
		}
	}
	if r, ok := w.policy.matchAddr(ip, port); ok {
		return decision{allowed: true, rule: r}
	}
	d := s.decideLocked(w, c.dst)
	if d.allowed && c.sniName != "" {
		d = s.decideNameLocked(w, c.dst, c.sniName)
	}
	return d
}

// originalDst is where the worker meant the connection to go, before the firewall
// redirected it here (SO_ORIGINAL_DST).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var addr *unix.IPv6Mreq
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		addr, gerr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, 80) // SO_ORIGINAL_DST
	}); err != nil {
		return netip.AddrPort{}, err
	}
	if gerr != nil {
		return netip.AddrPort{}, gerr
	}
	// A sockaddr_in: family, port (big endian), address.
	port := binary.BigEndian.Uint16(addr.Multiaddr[2:4])
	ip := netip.AddrFrom4([4]byte(addr.Multiaddr[4:8]))
	return netip.AddrPortFrom(ip, port), nil
}

// What a connection's first bytes were.
const (
	sniffSilent     = iota // none within sniffTimeout: a protocol where the server speaks first
	sniffNamed             // a TLS ClientHello with an SNI, an HTTP/1 request with a Host name
	sniffNameless          // a ClientHello or request head that names no host (or an address)
	sniffIncomplete        // a ClientHello or request head begun, not whole in time, or malformed
	sniffOther             // anything else
)

// sniff reads a connection's first bytes, within sniffTimeout and maxSniff, and returns
// them with what they were and the name they carry: a TLS ClientHello's SNI (read by
// crypto/tls itself) or an HTTP/1 request's Host, without its port.
func sniff(c *net.TCPConn) (first []byte, name string, kind int) {
	var buf bytes.Buffer
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer c.SetReadDeadline(time.Time{})
	chunk := make([]byte, 4096)
	for {
		n, err := c.Read(chunk)
		buf.Write(chunk[:n])
		b := buf.Bytes()
		// Servers skip empty lines before a request line (RFC 9112 2.2).
		head := bytes.TrimLeft(b, "\r\n")
		switch {
		case len(b) == 0:
		case b[0] == 0x16: // a TLS handshake record
			if name, state := clientHelloName(b); state != incomplete {
				return b, name, nameKind(name, state)
			}
		case len(head) == 0 || looksLikeHTTP(head):
			if len(head) > 0 {
				if name, state := httpHost(head); state != incomplete {
					return b, name, nameKind(name, state)
				}
			}
		default:
			return b, "", sniffOther
		}
		if err != nil || buf.Len() >= maxSniff {
			if len(b) == 0 {
				return b, "", sniffSilent
			}
			return b, "", sniffIncomplete
		}
	}
}

func nameKind(name string, state int) int {
	switch {
	case state != parsed:
		return sniffIncomplete
	case name == "":
		return sniffNameless
	}
	return sniffNamed
}

// The states of a sniffed protocol's head.
const (
	incomplete = iota
	parsed
	invalid
)

// clientHelloName parses b as the start of a TLS connection with crypto/tls, and returns
// the ClientHello's server name once b holds all of it.
func clientHelloName(b []byte) (string, int) {
	var name string
	got := false
	conn := tls.Server(&replay{r: bytes.NewReader(b)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name, got = h.ServerName, true
			return nil, errSniffed
		},
	})
	err := conn.Handshake()
	switch {
	case got:
		return lowerName(name), parsed
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "", incomplete
	}
	return "", invalid
}

var errSniffed = errors.New("sniffed")

// httpHost parses b as an HTTP/1 request's head and returns its Host once the head is
// complete.
func httpHost(b []byte) (string, int) {
	if !bytes.Contains(b, []byte("\r\n\r\n")) {
		return "", incomplete
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		return "", invalid
	}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "", parsed // an address as the Host: the connection goes on its address
	}
	return lowerName(host), parsed
}

// looksLikeHTTP reports whether b may still become an HTTP request line: a method (any
// token of capital letters, WebDAV's and PRI among them) and a space.
func looksLikeHTTP(b []byte) bool {
	for i, c := range b {
		switch {
		case c == ' ':
			return i > 0
		case c < 'A' || c > 'Z' || i >= 24:
			return false
		}
	}
	return true
}

func lowerName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(bytes.TrimSuffix(b, []byte(".")))
}

// replay is a net.Conn that reads recorded bytes and writes nowhere: crypto/tls parses a
// ClientHello from it.
type replay struct {
	net.Conn
	r io.Reader
}

func (r *replay) Read(p []byte) (int, error)       { return r.r.Read(p) }
func (r *replay) Write(p []byte) (int, error)      { return len(p), nil }
func (r *replay) Close() error                     { return nil }
func (r *replay) SetDeadline(time.Time) error      { return nil }
func (r *replay) SetReadDeadline(time.Time) error  { return nil }
func (r *replay) SetWriteDeadline(time.Time) error { return nil }
func (r *replay) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (r *replay) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
