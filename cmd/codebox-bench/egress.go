package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/bench"
	"github.com/codebox/codebox/internal/pkgfixture"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/coreos/go-iptables/iptables"
	"github.com/miekg/dns"
)

// The egress phase's test host: a network namespace of the bench's own, reached over a
// veth pair, with addresses from 198.19.0.0/24 (RFC 2544's benchmark range).
const (
	egressNS     = "cbxb-hosts"
	egressVeth   = "cbxbh0"
	egressHostIP = "198.19.0.1" // the host's end: where the policy layer's connections come from
	egressServer = "198.19.0.2"
	egressName   = "bench.test"
)

// egressRun measures what the network policy layer costs an allowed HTTP client in a
// worker: new connections per second (each a decision: DNS-learned address, Host sniffed)
// and a large download, through codeboxd's resolver and proxy and then the same requests
// with the proxy bypassed by bench-only forwarding rules. The test server tells the two
// paths apart by the client's address, so a round that did not take the path it meant
// to is repeated, not counted.
func egressRun(ctx context.Context, o options, state string, rep *bench.Report) error {
	srv, err := startEgressHost()
	if err != nil {
		return err
	}
	defer srv.stop()
	d, err := start(ctx, o, state, []string{"--min-idle-workers", "1", "--max-total-workers", "5",
		"--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64), "--worker-ram-mb", "1024", "--worker-disk-mb", "500",
		"--egress-resolver", net.JoinHostPort(egressServer, "53"), "--pypi-upstream", "http://" + egressServer + "/simple/"})
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "egress",
		Network: &api.NetworkPolicy{Allow: []string{egressName + ":80"}}}); err != nil {
		return fmt.Errorf("egress: create the session: %w", err)
	}
	defer d.client.DeleteSession(context.Background(), "egress")
	if v, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(v)) != "1" {
		return fmt.Errorf("egress: the direct path needs net.ipv4.ip_forward=1 (CNI's bridge sets it); it is %q", strings.TrimSpace(string(v)))
	}

	var proxied, direct []egressFigures
	for round := 0; round < 3 && (len(proxied) < 3 || len(direct) < 3); round++ {
		for _, bypass := range []bool{false, true} {
			f, err := srv.measure(ctx, d, bypass, o.egressRequests, o.egressMB)
			if err != nil {
				return err
			}
			if f.ok {
				if bypass {
					direct = append(direct, f)
				} else {
					proxied = append(proxied, f)
				}
			}
		}
	}
	if len(proxied) == 0 || len(direct) == 0 {
		rep.Comments = append(rep.Comments, "egress: no round took the path it meant to (the firewall check put its hooks back first each time)")
		return d.stop()
	}
	if err := pipFigures(ctx, d, rep); err != nil {
		return err
	}
	p, q := medianFigures(proxied), medianFigures(direct)
	rep.Figures["egress: allowed HTTP request, new connection each, via the policy layer (req/s)"] = p.rps
	rep.Figures["egress: allowed HTTP request, new connection each, direct (req/s)"] = q.rps
	rep.Figures["egress: request p50 via the policy layer (ms)"] = p.p50
	rep.Figures["egress: request p50 direct (ms)"] = q.p50
	rep.Figures["egress: download via the policy layer (MB/s)"] = p.mbps
	rep.Figures["egress: download direct (MB/s)"] = q.mbps
	rep.Figures["egress: time the policy layer adds to a new connection's request, p50 (ms)"] = p.p50 - q.p50
	rep.Figures["egress: policy layer / direct requests per second (%)"] = 100 * p.rps / q.rps
	rep.Figures["egress: policy layer / direct download throughput (%)"] = 100 * p.mbps / q.mbps
	rep.Config["egress"] = fmt.Sprintf("%d requests (100 B) and %d MB downloaded per round, %d+%d rounds (median), Python's http.client in the worker",
		o.egressRequests, o.egressMB, len(proxied), len(direct))
	return d.stop()
}

type egressFigures struct {
	rps, p50, mbps float64
	ok             bool
}

func medianFigures(fs []egressFigures) egressFigures {
	med := func(get func(egressFigures) float64) float64 {
		v := make([]float64, len(fs))
		for i, f := range fs {
			v[i] = get(f)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return egressFigures{rps: med(func(f egressFigures) float64 { return f.rps }),
		p50: med(func(f egressFigures) float64 { return f.p50 }), mbps: med(func(f egressFigures) float64 { return f.mbps }), ok: true}
}

// egressClient runs in the worker: the name resolved once (through codeboxd's resolver),
// then n requests each on a new connection, then one download.
const egressClient = `
import http.client, json, socket, time
ip = socket.gethostbyname(%q)
lat = []
t0 = time.perf_counter()
for _ in range(%d):
    s = time.perf_counter()
    c = http.client.HTTPConnection(ip, 80, timeout=10)
    c.request("GET", "/small", headers={"Host": %q})
    r = c.getresponse(); r.read(); c.close()
    assert r.status == 200, r.status
    lat.append(time.perf_counter() - s)
el = time.perf_counter() - t0
c = http.client.HTTPConnection(ip, 80, timeout=60)
s = time.perf_counter()
c.request("GET", "/big?mb=%d", headers={"Host": %q})
r = c.getresponse(); n = 0
while True:
    b = r.read(1 << 20)
    if not b: break
    n += len(b)
dl = time.perf_counter() - s
c.close()
lat.sort()
print(json.dumps({"rps": len(lat) / el, "p50": 1000 * lat[len(lat) // 2], "mbps": n / (1 << 20) / dl, "bytes": n}))
`

// measure runs one round, bypassing the proxy or not, and checks the server saw every
// request come the way the round meant.
func (s *egressHost) measure(ctx context.Context, d *daemonProc, bypass bool, n, mb int) (egressFigures, error) {
	if bypass {
		undo, err := bypassProxy()
		if err != nil {
			return egressFigures{}, err
		}
		defer undo()
	}
	s.reset()
	code := fmt.Sprintf(egressClient, egressName, n, egressName, mb, egressName)
	resp, err := d.client.Execute(ctx, "egress", code, 5*time.Minute)
	if err != nil {
		return egressFigures{}, fmt.Errorf("egress: run the client: %w", err)
	}
	if resp.Error != nil {
		return egressFigures{}, fmt.Errorf("egress: the client failed: %s: %s %v", resp.Error.Ename, resp.Error.Evalue, resp.NetworkDenials)
	}
	var out struct {
		RPS, P50, MBps float64
		Bytes          int64
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(resp.Stdout)), &out); err != nil {
		return egressFigures{}, fmt.Errorf("egress: the client's answer %q: %w", resp.Stdout, err)
	}
	if out.Bytes != int64(mb)<<20 {
		return egressFigures{}, fmt.Errorf("egress: downloaded %d bytes, not %d", out.Bytes, int64(mb)<<20)
	}
	viaProxy, other := s.counts()
	want := int64(n + 1)
	ok := (!bypass && viaProxy == want && other == 0) || (bypass && other == want && viaProxy == 0)
	return egressFigures{rps: out.RPS, p50: out.P50, mbps: out.MBps, ok: ok}, nil
}

// bypassProxy lets the worker subnet reach the test server's port 80 without the proxy:
// rules above codeboxd's hooks, for the length of one round. codeboxd's firewall check
// puts its hooks back first when it sees them (the round then does not count).
func bypassProxy() (func(), error) {
	t, err := iptables.New()
	if err != nil {
		return nil, err
	}
	rules := []struct {
		table, chain string
		spec         []string
	}{
		{"nat", "PREROUTING", []string{"-i", bridge, "-d", egressServer, "-p", "tcp", "--dport", "80", "-j", "ACCEPT"}},
		{"filter", "FORWARD", []string{"-i", bridge, "-d", egressServer, "-p", "tcp", "--dport", "80", "-j", "ACCEPT"}},
		{"filter", "FORWARD", []string{"-o", bridge, "-s", egressServer, "-p", "tcp", "--sport", "80", "-j", "ACCEPT"}},
	}
	undo := func() {
		for _, r := range rules {
			t.DeleteIfExists(r.table, r.chain, r.spec...)
		}
	}
	for _, r := range rules {
		if err := t.Insert(r.table, r.chain, 1, r.spec...); err != nil {
			undo()
			return nil, fmt.Errorf("egress: bypass rule %s/%s: %w", r.table, r.chain, err)
		}
	}
	return undo, nil
}

// egressHost is the test server: DNS for bench.test and HTTP, counting requests by
// whether they came from the host (the proxy) or from elsewhere (a worker, directly).
type egressHost struct {
	mu              sync.Mutex
	viaProxy, other int64
	stops           []func()
}

func (s *egressHost) reset() {
	s.mu.Lock()
	s.viaProxy, s.other = 0, 0
	s.mu.Unlock()
}

func (s *egressHost) counts() (int64, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.viaProxy, s.other
}

func (s *egressHost) stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
}

func startEgressHost() (s *egressHost, err error) {
	s = &egressHost{}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	run := func(args ...string) error {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	exec.Command("ip", "netns", "delete", egressNS).Run() // an interrupted run's
	exec.Command("ip", "link", "delete", egressVeth).Run()
	if err := run("ip", "netns", "add", egressNS); err != nil {
		return nil, err
	}
	s.stops = append(s.stops, func() {
		exec.Command("ip", "link", "delete", egressVeth).Run()
		exec.Command("ip", "netns", "delete", egressNS).Run()
	})
	peer := egressVeth + "p"
	in := func(args ...string) []string { return append([]string{"ip", "netns", "exec", egressNS}, args...) }
	for _, c := range [][]string{
		{"ip", "link", "add", egressVeth, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", egressNS},
		{"ip", "addr", "add", egressHostIP + "/24", "dev", egressVeth},
		{"ip", "link", "set", egressVeth, "up"},
		in("ip", "addr", "add", egressServer+"/24", "dev", peer),
		in("ip", "link", "set", peer, "up"),
		in("ip", "link", "set", "lo", "up"),
		in("ip", "route", "add", subnet, "via", egressHostIP), // the direct path's answers
	} {
		if err := run(c...); err != nil {
			return nil, err
		}
	}
	var udp net.PacketConn
	var tcpDNS, web net.Listener
	err = ns.WithNetNSPath("/run/netns/"+egressNS, func(ns.NetNS) error {
		var err error
		if udp, err = net.ListenPacket("udp4", net.JoinHostPort(egressServer, "53")); err != nil {
			return err
		}
		if tcpDNS, err = net.Listen("tcp4", net.JoinHostPort(egressServer, "53")); err != nil {
			return err
		}
		web, err = net.Listen("tcp4", net.JoinHostPort(egressServer, "80"))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("egress: test host's listeners: %w", err)
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		switch {
		case len(q.Question) != 1 || !strings.EqualFold(q.Question[0].Name, egressName+"."):
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A: net.ParseIP(egressServer)}}
		}
		w.WriteMsg(m)
	})
	for _, d := range []*dns.Server{{PacketConn: udp, Handler: handler}, {Listener: tcpDNS, Handler: handler}} {
		go d.ActivateAndServe()
		s.stops = append(s.stops, func() { d.Shutdown() })
	}
	small := strings.Repeat("x", 100)
	whl := pkgfixture.Wheel("cbxbench", "cbxbench", "1.0", "1.0")
	sum := sha256.Sum256(whl)
	index := fmt.Sprintf(`<!DOCTYPE html><html><body><a href="/files/cbxbench-1.0-py3-none-any.whl#sha256=%s">cbxbench-1.0-py3-none-any.whl</a></body></html>`,
		hex.EncodeToString(sum[:]))
	zeros := make([]byte, 1<<20)
	h := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		s.mu.Lock()
		if host == egressHostIP {
			s.viaProxy++
		} else {
			s.other++
		}
		s.mu.Unlock()
		switch r.URL.Path {
		case "/simple/cbxbench/":
			io.WriteString(w, index)
			return
		case "/files/cbxbench-1.0-py3-none-any.whl":
			w.Write(whl)
			return
		case "/big":
		default:
			io.WriteString(w, small)
			return
		}
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		w.Header().Set("Content-Length", strconv.Itoa(min(max(mb, 0), 1024)<<20))
		for i := 0; i < min(max(mb, 0), 1024); i++ {
			if _, err := w.Write(zeros); err != nil {
				return
			}
		}
	})}
	go h.Serve(web)
	s.stops = append(s.stops, func() { h.Close() })
	return s, nil
}

// pipClient installs the bench's wheel with pip in the worker: once from the upstream
// through codeboxd's cache, then five times from the cache (pip's own cache off, the wheel
// uninstalled between), and times pip doing nothing (--version) beside it.
const pipClient = `
import json, subprocess, sys, time
def pip(*args):
    s = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return 1000 * (time.perf_counter() - s)
cold = pip("install", "--no-cache-dir", "cbxbench==1.0")
cached, idle = [], []
for _ in range(5):
    pip("uninstall", "-y", "cbxbench")
    cached.append(pip("install", "--no-cache-dir", "cbxbench==1.0"))
    idle.append(pip("--version"))
cached.sort(); idle.sort()
print(json.dumps({"cold": cold, "cached": cached[2], "idle": idle[2]}))
`

// pipFigures times pip installs of the test wheel through the package cache.
func pipFigures(ctx context.Context, d *daemonProc, rep *bench.Report) error {
	resp, err := d.client.Execute(ctx, "egress", pipClient, 5*time.Minute)
	if err != nil {
		return fmt.Errorf("pip: %w", err)
	}
	if resp.Error != nil {
		return fmt.Errorf("pip: %s: %s", resp.Error.Ename, resp.Error.Evalue)
	}
	var out struct{ Cold, Cached, Idle float64 }
	if err := json.Unmarshal([]byte(strings.TrimSpace(resp.Stdout)), &out); err != nil {
		return fmt.Errorf("pip: the client's answer %q: %w", resp.Stdout, err)
	}
	rep.Figures["packages: pip install of a wheel, from the upstream through the cache (ms)"] = out.Cold
	rep.Figures["packages: pip install of a wheel from the cache, p50 of 5 (ms)"] = out.Cached
	rep.Figures["packages: pip --version, p50 of 5 (ms)"] = out.Idle
	return nil
}
