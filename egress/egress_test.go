package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func mustParse(t *testing.T, allow ...string) *Policy {
	t.Helper()
	p, err := Parse(allow)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParse(t *testing.T) {
	p := mustParse(t, "pypi.org", "*.GitHubUserContent.com.", "api.example.com:443", "203.0.113.0/24", "198.51.100.7:5432", "[2001:db8::1]:443")
	got := []string{}
	for _, r := range p.Rules {
		got = append(got, fmt.Sprintf("%s|%v|%s|%d", r.Host, r.Suffix, r.Prefix, r.Port))
	}
	want := []string{"pypi.org|false|invalid Prefix|0", "githubusercontent.com|true|invalid Prefix|0", "api.example.com|false|invalid Prefix|443",
		"|false|203.0.113.0/24|0", "|false|198.51.100.7/32|5432", "|false|2001:db8::1/128|443"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("parsed %v, want %v", got, want)
	}
	for _, bad := range []string{"", "a b", "ex*mple.com", "*", "host:0", "host:70000", "1.2.3.4/33", "[::1", "-bad.com", strings.Repeat("a", 301)} {
		if _, err := Parse([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	many := make([]string, MaxRules+1)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.example", i)
	}
	if _, err := Parse(many); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("65 rules: %v", err)
	}
}

func TestMatch(t *testing.T) {
	p := mustParse(t, "pypi.org", "*.example.com", "api.test:443", "203.0.113.0/24:80")
	for name, want := range map[string]bool{"pypi.org": true, "files.pypi.org": false, "a.example.com": true, "a.b.example.com": true,
		"example.com": false, "api.test": true, "evil.test": false} {
		if _, ok := p.matchName(name, 0); ok != want {
			t.Errorf("%s: %v, want %v", name, ok, want)
		}
	}
	if _, ok := p.matchName("api.test", 80); ok {
		t.Error("api.test on port 80 allowed")
	}
	if _, ok := p.matchAddr(netip.MustParseAddr("203.0.113.9"), 80); !ok {
		t.Error("203.0.113.9:80 denied")
	}
	if _, ok := p.matchAddr(netip.MustParseAddr("203.0.113.9"), 443); ok {
		t.Error("203.0.113.9:443 allowed")
	}
}

func testServer(t *testing.T, allowPrivate ...netip.Prefix) *Server {
	t.Helper()
	s, err := New(Config{Gateway: netip.MustParseAddr("10.213.0.1"), Subnet: netip.MustParsePrefix("10.213.0.0/16"),
		DNSPort: 1, ProxyPort: 2, Upstream: "127.0.0.1:53", PrivateAllowlist: allowPrivate})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The connection decision before a connection's first bytes, reason by reason.
func TestDecide(t *testing.T) {
	s := testServer(t, netip.MustParsePrefix("10.9.0.0/16"))
	worker := netip.MustParseAddr("10.213.0.5")
	s.Assign(worker, "s1", mustParse(t, "allowed.test:443", "other.test", "203.0.7.0/24:80", "10.9.1.0/24", "10.8.0.0/16"))
	s.mu.Lock()
	w := s.workers[worker]
	s.rememberLocked(w, netip.MustParseAddr("203.0.0.2"), "allowed.test", time.Minute)
	s.rememberLocked(w, netip.MustParseAddr("203.0.0.3"), "gone.test", time.Minute)
	s.rememberLocked(w, netip.MustParseAddr("203.0.0.4"), "old.test", -2*ttlGrace)
	s.mu.Unlock()
	for dst, want := range map[string]string{
		"203.0.0.2:443":      "allowed",
		"203.0.0.2:80":       ReasonPort,
		"203.0.0.3:443":      ReasonNotAllowed,
		"203.0.0.4:443":      ReasonIPLiteral, // its answer expired
		"203.0.0.9:443":      ReasonIPLiteral,
		"203.0.7.1:80":       "allowed",
		"203.0.7.1:81":       ReasonPort,
		"10.9.1.1:22":        "allowed",     // private, and in the operator's allowlist
		"10.8.0.1:22":        ReasonPrivate, // private, a rule but not the operator's
		"127.0.0.1:80":       ReasonPrivate, // loopback
		"169.254.169.254:80": ReasonPrivate, // the metadata address
		"10.213.0.7:8888":    ReasonPrivate, // another worker
		"10.213.0.1:3874":    ReasonPrivate, // the host, on the bridge
	} {
		s.mu.Lock()
		d := s.decideLocked(w, netip.MustParseAddrPort(dst))
		s.mu.Unlock()
		got := d.reason
		if d.allowed {
			got = "allowed"
		}
		if got != want {
			t.Errorf("%s: %s, want %s", dst, got, want)
		}
	}
	// The name a connection carries must be allowed and answered with its address.
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.decideNameLocked(w, netip.MustParseAddrPort("203.0.0.2:443"), "allowed.test"); !d.allowed {
		t.Error("the SNI of its own name denied")
	}
	for _, name := range []string{"other.test", "evil.test"} {
		if d := s.decideNameLocked(w, netip.MustParseAddrPort("203.0.0.2:443"), name); d.allowed || d.reason != ReasonSNIMismatch {
			t.Errorf("SNI %s on allowed.test's address: %+v", name, d)
		}
	}
}

// clientHello is what a TLS client sends first for name.
func clientHello(t *testing.T, name string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return buf[:n]
}

func TestSniffNames(t *testing.T) {
	hello := clientHello(t, "Allowed.Test")
	if name, state := clientHelloName(hello); state != parsed || name != "allowed.test" {
		t.Errorf("a ClientHello: %q %d", name, state)
	}
	if _, state := clientHelloName(hello[:len(hello)/2]); state != incomplete {
		t.Errorf("half a ClientHello: %d", state)
	}
	if _, state := clientHelloName([]byte{0x16, 3, 1, 0, 4, 9, 9, 9, 9}); state != invalid {
		t.Errorf("garbage in a handshake record: %d", state)
	}
	for req, want := range map[string]string{
		"GET / HTTP/1.1\r\nHost: Other.Test:8080\r\n\r\n": "other.test",
		"GET / HTTP/1.1\r\nHost: 203.0.0.2\r\n\r\n":       "",
	} {
		if name, state := httpHost([]byte(req)); state != parsed || name != want {
			t.Errorf("%q: %q %d", req, name, state)
		}
	}
	if _, state := httpHost([]byte("GET / HTTP/1.1\r\nHo")); state != incomplete {
		t.Error("half a request head: not incomplete")
	}
	if !looksLikeHTTP([]byte("PO")) || looksLikeHTTP([]byte("SSH-2.0")) {
		t.Error("looksLikeHTTP")
	}
}

func TestRing(t *testing.T) {
	r := &ring{}
	var seen []string
	var mu sync.Mutex
	stop, ok := r.watch(func(e Event) { mu.Lock(); seen = append(seen, e.Reason); mu.Unlock() })
	if !ok {
		t.Fatal("no watcher")
	}
	mark := r.mark()
	for i := 0; i < ringSize+10; i++ {
		d := DecisionAllowed
		reason := ""
		if i%2 == 0 {
			d, reason = DecisionDenied, ReasonDNSDenied
		}
		r.add(&Event{Kind: "dns", Decision: d, Reason: reason})
	}
	stop()
	r.add(&Event{Kind: "dns", Decision: DecisionDenied, Reason: ReasonUDP})
	events, next, dropped := r.since(0, 5)
	if len(events) != 5 || events[0].Seq != 11 || next != 16 || dropped != 11 {
		t.Fatalf("since(0, 5): %d events from %d, next %d, dropped %d", len(events), events[0].Seq, next, dropped)
	}
	first, total := r.denials(mark, 10)
	if len(first) != 10 || total < (ringSize+10)/2 {
		t.Fatalf("denials: %d shown of %d", len(first), total)
	}
	if len(seen) != ringSize+10 {
		t.Fatalf("the watcher saw %d events", len(seen))
	}
}

// The resolver answers allowed names alone; a denied name never reaches the upstream.
func TestResolver(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	up := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		mu.Lock()
		asked = append(asked, q.Question[0].Name)
		mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(q)
		rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 203.0.0.2")
		m.Answer = []dns.RR{rr}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	up.NotifyStartedFunc = func() { close(started) }
	go up.ListenAndServe()
	<-started
	defer up.Shutdown()

	port := freeUDPPort(t)
	s, err := New(Config{Gateway: netip.MustParseAddr("127.0.0.1"), Subnet: netip.MustParsePrefix("127.0.0.0/8"),
		DNSPort: port, ProxyPort: 1, Upstream: up.PacketConn.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.serveDNS(ctx); err != nil {
		t.Fatal(err)
	}
	s.Assign(netip.MustParseAddr("127.0.0.1"), "s1", mustParse(t, "*.allowed.test"))
	c := &dns.Client{Timeout: 2 * time.Second}
	ask := func(name string, qtype uint16) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		r, _, err := c.Exchange(q, fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := ask("www.Allowed.test.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("an allowed name: %v", r)
	}
	if r := ask("www.allowed.test.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("AAAA of an allowed name: %v", r)
	}
	for i := 0; i < 20; i++ {
		if r := ask(fmt.Sprintf("x%d-secret.evil.test.", i), dns.TypeTXT); r.Rcode != dns.RcodeNameError {
			t.Fatalf("a denied name: %v", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 || asked[0] != "www.allowed.test." {
		t.Fatalf("the upstream was asked %v", asked)
	}
	s.mu.Lock()
	names := s.namesOfLocked(s.workers[netip.MustParseAddr("127.0.0.1")], netip.MustParseAddr("203.0.0.2"))
	s.mu.Unlock()
	if len(names) != 1 || names[0] != "www.allowed.test" {
		t.Fatalf("remembered %v", names)
	}
	events, _, _ := s.Events("s1", 0, 100)
	if len(events) != 22 || events[2].Reason != ReasonDNSDenied || events[0].IP != "203.0.0.2" {
		t.Fatalf("events %+v", events[:3])
	}
	if _, total := s.Denials("s1", 0, 10); total != 20 {
		t.Fatalf("denials %d", total)
	}
}

func freeUDPPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func TestUDPHeaders(t *testing.T) {
	p := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 213, 0, 5, 198, 18, 0, 2, 0x30, 0x39, 0, 7, 0, 8, 0, 0}
	src, dst, port, ok := udpHeaders(p)
	if !ok || src.String() != "10.213.0.5" || dst.String() != "198.18.0.2" || port != 7 {
		t.Fatalf("%v %v %d %v", src, dst, port, ok)
	}
	if _, _, _, ok := udpHeaders(bytes.Repeat([]byte{0x45}, 10)); ok {
		t.Fatal("a short packet parsed")
	}
}
