package egress

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Regressions for what an attack review of this package found, each as the tenant would
// try it.

// tcpPair is a loopback TCP connection: the accepted side (as the proxy sees it) and the
// dialling side (the worker).
func tcpPair(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := (<-ch).(*net.TCPConn)
	t.Cleanup(func() { s.Close(); c.Close() })
	return s, c.(*net.TCPConn)
}

// A session ended while its worker's connections close on their own: Release must not
// read the worker's connections unlocked (a concurrent map write is fatal to codeboxd).
func TestReleaseWhileConnectionsClose(t *testing.T) {
	s := testServer(t)
	ip := netip.MustParseAddr("10.213.0.5")
	s.Assign(ip, "s1", mustParse(t, "allowed.test"))
	s.mu.Lock()
	w := s.workers[ip]
	s.mu.Unlock()
	var wg sync.WaitGroup
	for range 200 {
		srv, _ := tcpPair(t)
		p := &proxied{w: w, client: srv}
		s.mu.Lock()
		w.conns[p] = struct{}{}
		s.conns++
		s.mu.Unlock()
		wg.Add(1)
		go func() { // what handle does when its connection ends
			defer wg.Done()
			io.Copy(io.Discard, srv)
			s.mu.Lock()
			if _, ok := w.conns[p]; ok {
				delete(w.conns, p)
				s.conns--
			}
			s.mu.Unlock()
		}()
	}
	s.Release(ip)
	wg.Wait()
	if s.conns != 0 {
		t.Fatalf("%d connections still counted", s.conns)
	}
}

// dnsServer serves s's resolver on loopback with upstream as its resolver.
func dnsServer(t *testing.T, upstream string) (*Server, string) {
	t.Helper()
	port := freeUDPPort(t)
	s, err := New(Config{Gateway: netip.MustParseAddr("127.0.0.1"), Subnet: netip.MustParsePrefix("127.0.0.0/8"),
		DNSPort: port, ProxyPort: 1, Upstream: upstream})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.serveDNS(ctx); err != nil {
		t.Fatal(err)
	}
	return s, fmt.Sprintf("127.0.0.1:%d", port)
}

// One worker's names at a slow authoritative server must not take every place at the
// upstream resolver: another session's allowed name is still answered.
func TestSlowNamesDoNotStarveOtherSessions(t *testing.T) {
	up, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var mu sync.Mutex
	var asked []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := up.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			mu.Lock()
			asked = append(asked, q.Question[0].Name)
			mu.Unlock()
			if !strings.HasSuffix(q.Question[0].Name, "ok.test.") {
				continue // the tenant's own server: never answers
			}
			m := new(dns.Msg)
			m.SetReply(q)
			rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 203.0.113.2")
			m.Answer = []dns.RR{rr}
			b, _ := m.Pack()
			up.WriteTo(b, from)
		}
	}()
	s, addr := dnsServer(t, up.LocalAddr().String())
	attacker, victim := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	s.Assign(attacker, "a", mustParse(t, "*.slow.test"))
	s.Assign(victim, "b", mustParse(t, "ok.test"))
	ask := func(from netip.Addr, name string) int {
		c := &dns.Client{Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}}
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(q, addr)
		if err != nil {
			return -1
		}
		return r.Rcode
	}
	for i := range 150 {
		go ask(attacker, fmt.Sprintf("x%d.slow.test.", i))
	}
	time.Sleep(300 * time.Millisecond)
	if rc := ask(victim, "ok.test."); rc != dns.RcodeSuccess {
		t.Fatalf("another session's allowed name: rcode %d", rc)
	}
	mu.Lock()
	slow := 0
	for _, n := range asked {
		if strings.HasSuffix(n, "slow.test.") {
			slow++
		}
	}
	mu.Unlock()
	if slow > maxUpstreamPerW {
		t.Fatalf("one worker had %d questions at the upstream at once; at most %d", slow, maxUpstreamPerW)
	}
}

// DNS over TCP: one source holds at most a few connections, the rest are closed at once.
func TestDNSOverTCPConnectionsBounded(t *testing.T) {
	_, addr := dnsServer(t, "127.0.0.1:9")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 20 {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{0xff, 0xff, 1, 2, 3}) // the start of a 64 KiB message
		conns = append(conns, c)
	}
	open := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			open++ // held by the server, waiting for the rest
		}
	}
	if open > maxTCPPerWorker {
		t.Fatalf("one source holds %d DNS-over-TCP connections; at most %d", open, maxTCPPerWorker)
	}
}

// The name check cannot be stepped around by what the first bytes look like.
func TestSniffKinds(t *testing.T) {
	noSNI := func() []byte {
		a, b := net.Pipe()
		go tls.Client(a, &tls.Config{InsecureSkipVerify: true}).Handshake() // no ServerName: no SNI
		buf := make([]byte, 16<<10)
		n, _ := b.Read(buf)
		a.Close()
		b.Close()
		return buf[:n]
	}()
	withSNI := func() []byte {
		a, b := net.Pipe()
		go tls.Client(a, &tls.Config{ServerName: "Allowed.Test"}).Handshake()
		buf := make([]byte, 16<<10)
		n, _ := b.Read(buf)
		a.Close()
		b.Close()
		return buf[:n]
	}()
	for _, c := range []struct {
		what, payload string
		kind          int
		name          string
	}{
		{"a request", "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n", sniffNamed, "allowed.test"},
		{"leading CRLF", "\r\n\r\nGET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", sniffNamed, "evil.example"},
		{"another method", "PROPFIND / HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n", sniffNamed, "evil.example"},
		{"h2c prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sniffNameless, ""},
		{"an address as the Host", "GET / HTTP/1.1\r\nHost: 203.0.113.9\r\n\r\n", sniffNameless, ""},
		{"no Host", "GET / HTTP/1.0\r\n\r\n", sniffNameless, ""},
		{"two Host headers", "GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: evil.example\r\n\r\n", sniffIncomplete, ""},
		{"ClientHello without SNI", string(noSNI), sniffNameless, ""},
		{"ClientHello", string(withSNI), sniffNamed, "allowed.test"},
		{"half a ClientHello", string(withSNI[:40]), sniffIncomplete, ""},
		{"a head that never ends", "GET / HTTP/1.1\r\nHost: allowed.test\r\n", sniffIncomplete, ""},
		{"ssh", "SSH-2.0-OpenSSH_9.2\r\n", sniffOther, ""},
	} {
		srv, cli := tcpPair(t)
		cli.Write([]byte(c.payload))
		_, name, kind := sniff(srv)
		if kind != c.kind || name != c.name {
			t.Errorf("%s: kind %d name %q, want %d %q", c.what, kind, name, c.kind, c.name)
		}
	}
	srv, _ := tcpPair(t)
	if _, _, kind := sniff(srv); kind != sniffSilent {
		t.Errorf("nothing sent: kind %d", kind)
	}
}

// A policy change that keeps a connection's rule does not cut it, however old the answer
// that allowed it; one that drops the rule does.
func TestRecheckKeepsWhatStillStands(t *testing.T) {
	s := testServer(t)
	ip := netip.MustParseAddr("10.213.0.5")
	s.Assign(ip, "s1", mustParse(t, "allowed.test"))
	srv, _ := tcpPair(t)
	s.mu.Lock()
	w := s.workers[ip]
	s.rememberLocked(w, netip.MustParseAddr("203.0.113.2"), "allowed.test", -ttlGrace-time.Second) // long expired
	p := &proxied{w: w, client: srv, dst: netip.MustParseAddrPort("203.0.113.2:443"), name: "allowed.test"}
	w.conns[p] = struct{}{}
	s.conns++
	s.mu.Unlock()
	s.SetPolicy("s1", mustParse(t, "allowed.test", "pypi.org"))
	if p.cutForGood.Load() {
		t.Fatal("adding a rule cut an open connection its rule still allows")
	}
	s.SetPolicy("s1", mustParse(t, "pypi.org"))
	if !p.cutForGood.Load() {
		t.Fatal("dropping its rule did not cut the connection")
	}
}

// Addresses no rule opens, and private ones a name cannot open (DNS rebinding).
func TestGuardHolds(t *testing.T) {
	s := testServer(t, netip.MustParsePrefix("10.9.0.0/16"))
	ip := netip.MustParseAddr("10.213.0.5")
	s.Assign(ip, "s1", mustParse(t, "*.attacker.test", "0.0.0.0/0"))
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[ip]
	s.rememberLocked(w, netip.MustParseAddr("10.9.1.1"), "x.attacker.test", time.Minute)
	w.policy = mustParse(t, "*.attacker.test")
	if d := s.decideLocked(w, netip.MustParseAddrPort("10.9.1.1:5432")); d.allowed || d.reason != ReasonPrivate {
		t.Errorf("an allowlisted private address through a name rule: %+v", d)
	}
	w.policy = mustParse(t, "10.9.1.0/24")
	if d := s.decideLocked(w, netip.MustParseAddrPort("10.9.1.1:5432")); !d.allowed {
		t.Errorf("an allowlisted private address through an address rule: %+v", d)
	}
	w.policy = mustParse(t, "0.0.0.0/0")
	for _, dst := range []string{"168.63.129.16:80", "192.0.0.170:80", "100.100.100.200:80", "169.254.169.254:80", "10.213.0.9:8888"} {
		if d := s.decideLocked(w, netip.MustParseAddrPort(dst)); d.allowed {
			t.Errorf("%s opened by 0.0.0.0/0", dst)
		}
	}
}

// A name with an escaped dot is not below the suffix it seems to be: never asked upstream.
func TestEscapedDotNeverLeaves(t *testing.T) {
	var asked atomic.Int32
	up := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	up.NotifyStartedFunc = func() { close(started) }
	go up.ListenAndServe()
	<-started
	defer up.Shutdown()
	s, addr := dnsServer(t, up.PacketConn.LocalAddr().String())
	s.Assign(netip.MustParseAddr("127.0.0.1"), "s1", mustParse(t, "*.pypi.org"))
	q := new(dns.Msg)
	q.SetQuestion(`secret-data\.pypi.org.`, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNameError || asked.Load() != 0 {
		t.Fatalf("rcode %d, upstream asked %d times", r.Rcode, asked.Load())
	}
}

// One address answered for thousands of names: a decision reads at most a few of them.
func TestNamesPerAddressBounded(t *testing.T) {
	s := testServer(t)
	ip := netip.MustParseAddr("10.213.0.5")
	s.Assign(ip, "s1", mustParse(t, "*.attacker.test:443"))
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[ip]
	for i := range 1000 {
		s.rememberLocked(w, netip.MustParseAddr("203.0.113.2"), fmt.Sprintf("n%d.attacker.test", i), time.Hour)
	}
	if n := len(w.names[netip.MustParseAddr("203.0.113.2")]); n > maxNamesPerAddr {
		t.Fatalf("%d names kept for one address", n)
	}
	if w.nNames > maxNamesPerAddr {
		t.Fatalf("the worker counts %d names", w.nNames)
	}
}
