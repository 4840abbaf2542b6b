package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
)

// testHosts are servers a test starts in a network namespace of its own, reached from the
// host over a veth pair: the only outside world the tests' workers meet. Addresses are
// from 198.18.0.0/15 (set aside for benchmarks, RFC 2544), never a foreign host's.
type testHosts struct {
	nsName, vethHost string
	host             net.IP // the host's end
	a, b             net.IP // the servers' addresses
	free             string // an address of the test's range where nothing listens
	dns              string // host:port of their DNS server
	mu               sync.Mutex
	asked            []string // every name the DNS server was asked
}

// startTestHosts makes the namespace (number n keeps parallel tests apart) with:
//   - a DNS server on a:53 (UDP, TCP): allowed.test, both.test and *.wild.test are a;
//     other.test is b; every other name NXDOMAIN. It notes every question;
//   - HTTP on a:80 and b:80, answering "host=<Host> to=<address>";
//   - HTTPS on a:443 with a certificate for allowed.test and other.test, the same answer;
//   - a UDP echo on a:7.
//
// Everything goes when the test ends.
func startTestHosts(t *testing.T, n int) *testHosts {
	t.Helper()
	h := &testHosts{nsName: fmt.Sprintf("cbxt-hosts-%d", n), vethHost: fmt.Sprintf("cbxth%d", n),
		host: net.IPv4(198, 18, byte(n), 1), a: net.IPv4(198, 18, byte(n), 2), b: net.IPv4(198, 18, byte(n), 3),
		free: net.IPv4(198, 18, byte(n), 9).String()}
	h.dns = net.JoinHostPort(h.a.String(), "53")
	netnsHost(t, h.nsName, h.vethHost, h.host, h.a, h.b)

	var udpDNS, udpEcho net.PacketConn
	var tcpDNS, httpA, httpB, httpsA net.Listener
	inNetNS(t, h.nsName, func() error {
		var err error
		listen := func(addr string) net.Listener {
			l, e := net.Listen("tcp4", addr)
			if e != nil && err == nil {
				err = e
			}
			return l
		}
		udp := func(addr string) net.PacketConn {
			c, e := net.ListenPacket("udp4", addr)
			if e != nil && err == nil {
				err = e
			}
			return c
		}
		udpDNS, udpEcho = udp(h.dns), udp(net.JoinHostPort(h.a.String(), "7"))
		tcpDNS = listen(h.dns)
		httpA, httpB = listen(net.JoinHostPort(h.a.String(), "80")), listen(net.JoinHostPort(h.b.String(), "80"))
		httpsA = listen(net.JoinHostPort(h.a.String(), "443"))
		return err
	})
	zone := func(name string) net.IP {
		switch {
		case name == "allowed.test." || name == "both.test." || strings.HasSuffix(name, ".wild.test."):
			return h.a
		case name == "other.test.":
			return h.b
		}
		return nil
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		h.mu.Lock()
		h.asked = append(h.asked, name)
		h.mu.Unlock()
		if ip := zone(name); ip != nil && q.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: ip}}
		} else if ip == nil {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	for _, s := range []*dns.Server{{PacketConn: udpDNS, Handler: handler}, {Listener: tcpDNS, Handler: handler}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	echo := func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s to=%s", r.Host, r.Context().Value(http.LocalAddrContextKey))
	}
	for _, l := range []net.Listener{httpA, httpB} {
		srv := &http.Server{Handler: http.HandlerFunc(echo), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	tlsSrv := &http.Server{Handler: http.HandlerFunc(echo), ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned(t, "allowed.test", "other.test")}}}
	go tlsSrv.ServeTLS(httpsA, "", "")
	t.Cleanup(func() { tlsSrv.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := udpEcho.ReadFrom(buf)
			if err != nil {
				return
			}
			udpEcho.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { udpEcho.Close() })
	return h
}

// netnsHost makes the network namespace name, reached from the host over a veth pair:
// hostIf on the host's side with hostIP/24, the namespace's side with addrs (in hostIP's
// /24, a route back to the workers through the host). Both go when the test ends, a
// crashed run's first.
func netnsHost(t *testing.T, name, hostIf string, hostIP net.IP, addrs ...net.IP) {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "delete", name).Run()
	exec.Command("ip", "link", "delete", hostIf).Run()
	run("ip", "netns", "add", name)
	t.Cleanup(func() {
		exec.Command("ip", "link", "delete", hostIf).Run()
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("delete the test hosts' namespace: %v: %s", err, out)
		}
	})
	peer := hostIf + "p"
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", peer)
	run("ip", "link", "set", peer, "netns", name)
	run("ip", "addr", "add", hostIP.String()+"/24", "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	in := func(args ...string) { run(append([]string{"ip", "netns", "exec", name}, args...)...) }
	for _, a := range addrs {
		in("ip", "addr", "add", a.String()+"/24", "dev", peer)
	}
	in("ip", "link", "set", peer, "up")
	in("ip", "link", "set", "lo", "up")
}

// inNetNS runs fn in the namespace name: sockets it makes stay there.
func inNetNS(t *testing.T, name string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath("/run/netns/"+name, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatalf("in the namespace %s: %v", name, err)
	}
}

// askedFor reports the names the test DNS server was asked that contain sub.
func (h *testHosts) askedFor(sub string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, n := range h.asked {
		if strings.Contains(n, sub) {
			out = append(out, n)
		}
	}
	return out
}

// selfSigned is a certificate for names, signed by itself.
func selfSigned(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
