package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/codebox/codebox/api"
)

// probes are Python helpers a test session defines: each answers a JSON line.
const probes = `
import json, socket, ssl, time
def resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        return type(e).__name__
def tcp(host, port, send=b'', sni=None, timeout=5):
    t = time.time()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        if sni:
            ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=sni)
        if send:
            s.sendall(send)
        data = s.recv(4096)
        s.close()
        return ['data', data.decode(errors='replace')]
    except OSError as e:
        return [type(e).__name__, round((time.time() - t) * 1000)]
def nosni(host, port):
    t = time.time()
    try:
        s = socket.create_connection((host, port), timeout=5)
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)  # no server_hostname: no SNI
        s.sendall(b'GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n')
        data = s.recv(4096)
        s.close()
        return ['data', data.decode(errors='replace')]
    except OSError as e:
        return [type(e).__name__, round((time.time() - t) * 1000)]
def rawdns(server, name):
    import struct
    q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\x00' + struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(q, (server, 53))
    try:
        return s.recv(512)[3] & 0x0f
    except OSError as e:
        return type(e).__name__
def get(host, port=80, name=None):
    return tcp(host, port, ('GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' % (name or host)).encode())
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
    s.sendto(b'ping', (host, port))
    try:
        return s.recvfrom(100)[0].decode()
    except OSError as e:
        return type(e).__name__
def show(x):
    print(json.dumps(x))
`

// probe runs code (the probes defined) in session id and decodes the JSON line it printed.
func probe(t *testing.T, d *daemon, id, code string) any {
	t.Helper()
	r := d.exec(t, id, code)
	if r.Error != nil {
		t.Fatalf("%s: %s: %s", code, r.Error.Ename, r.Error.Evalue)
	}
	var v any
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.Stdout)), &v); err != nil {
		t.Fatalf("%s printed %q", code, r.Stdout)
	}
	return v
}

// refused reports whether a probe's answer is a connection the worker lost at once.
func refused(v any) bool {
	p, ok := v.([]any)
	if !ok || len(p) != 2 || p[0] == "data" || p[0] == "TimeoutError" {
		return false
	}
	ms, _ := p[1].(float64)
	return ms < 2000
}

func served(v any, want string) bool {
	p, ok := v.([]any)
	return ok && len(p) == 2 && p[0] == "data" && strings.Contains(p[1].(string), want)
}

func eventsOf(t *testing.T, d *daemon, id string) []api.NetworkEvent {
	t.Helper()
	code, _, body := d.request(t, "GET", "/api/v1/sessions/"+id+"/network/events?limit=1000", "", map[string]string{"X-Auth-Token": d.token})
	if code != 200 {
		t.Fatalf("events of %s: %d %s", id, code, body)
	}
	var ev api.NetworkEvents
	if err := json.Unmarshal([]byte(body), &ev); err != nil {
		t.Fatal(err)
	}
	return ev.Events
}

func hasEvent(events []api.NetworkEvent, kind, decision, reason, name string) bool {
	for _, e := range events {
		if e.Kind == kind && e.Decision == decision && e.Reason == reason && (name == "" || e.Name == name || e.IP == name) {
			return true
		}
	}
	return false
}

// TestNetworkPolicy: a session reaches what its policy names and nothing else, decided at
// DNS and on every connection, with each denial said and counted; the attacks on such a
// policy fail.
func TestNetworkPolicy(t *testing.T) {
	h := startTestHosts(t, 1)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) }) // should the test end before the second daemon
	d := startDaemon(t, "--egress-resolver", h.dns, "--metrics-listen", metrics, "--min-idle-workers", "1",
		"--destroy-on-stop=false", "--state-dir", stateDir)
	ctx := context.Background()
	a, b := h.a.String(), h.b.String()

	// No policy: nothing resolves, nothing connects, and the names never leave the host.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-net-none"})
	d.exec(t, "e2e-net-none", probes)
	if v := probe(t, d, "e2e-net-none", "show(resolve('allowed.test'))"); v != "gaierror" {
		t.Fatalf("no policy, a name: %v", v)
	}
	if v := probe(t, d, "e2e-net-none", fmt.Sprintf("show(get(%q))", a)); !refused(v) {
		t.Fatalf("no policy, an address: %v, want refused at once", v)
	}
	if asked := h.askedFor("allowed.test"); len(asked) != 0 {
		t.Fatalf("the test DNS server was asked %v for a session with no policy", asked)
	}

	// A policy: its names resolve and serve; everything else is denied, each for its reason.
	s := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-net",
		Network: &api.NetworkPolicy{Allow: []string{"allowed.test", "*.wild.test:80", b + "/32:8080", "10.0.0.0/8"}}})
	if strings.Join(s.Network.Allow, ",") != "allowed.test,*.wild.test:80,"+b+"/32:8080,10.0.0.0/8" {
		t.Fatalf("the session's network: %+v", s.Network)
	}
	d.exec(t, "e2e-net", probes)
	checks := []struct {
		what, code string
		ok         func(any) bool
	}{
		{"an allowed name resolves", "show(resolve('allowed.test'))", func(v any) bool { return v == a }},
		{"an allowed name serves HTTP", "show(get('allowed.test'))", func(v any) bool { return served(v, "host=allowed.test") }},
		{"and HTTPS", "show(get('allowed.test', 443) if False else tcp('allowed.test', 443, b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n', sni='allowed.test'))",
			func(v any) bool { return served(v, "host=allowed.test") }},
		{"a wildcard's name on its port", "show(get('x.wild.test'))", func(v any) bool { return served(v, "host=x.wild.test") }},
		{"a name not listed", "show(resolve('other.test'))", func(v any) bool { return v == "gaierror" }},
		{"an address no name resolved to", "show(get('" + h.free + "'))", refused},
		{"an address rule's address on another port", fmt.Sprintf("show(get(%q))", b), refused},
		{"Host spoofing", fmt.Sprintf("show(get(%q, 80, 'other.test'))", a), refused},
		{"Host spoofing behind an empty line", "show(tcp('allowed.test', 80, b'\\r\\nGET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n'))", refused},
		{"TLS without SNI to an allowed name's address", "show(nosni('allowed.test', 443))", refused},
		{"SNI spoofing", fmt.Sprintf("show(tcp(%q, 443, b'GET / HTTP/1.1\\r\\n\\r\\n', sni='other.test'))", a), refused},
		{"a wildcard's name on another port (its address is allowed.test's too: the SNI is checked)", "show(tcp('y.wild.test', 443, sni='y.wild.test'))", refused},
		{"a private range the operator did not open", "show(get('10.1.2.3'))", refused},
		{"UDP other than DNS", fmt.Sprintf("show(udp(%q, 7))", a), func(v any) bool { return v == "TimeoutError" }},
		{"DNS sent straight to another server is answered by ours", fmt.Sprintf("show(rawdns(%q, 'direct.other.test'))", a),
			func(v any) bool { return v == float64(3) }}, // NXDOMAIN
	}
	for _, c := range checks {
		if v := probe(t, d, "e2e-net", c.code); !c.ok(v) {
			t.Errorf("%s: %v", c.what, v)
		}
	}
	if asked := h.askedFor("direct.other.test"); len(asked) != 0 {
		t.Errorf("a question sent straight to the test DNS server reached it: %v", asked)
	}
	// DNS exfiltration: 50 random names, none of which reaches the upstream.
	r := d.exec(t, "e2e-net", "import secrets\nshow(sorted({resolve(secrets.token_hex(8) + '.exfil.test') for _ in range(50)}))")
	if strings.TrimSpace(r.Stdout) != `["gaierror"]` || len(h.askedFor("exfil.test")) != 0 {
		t.Fatalf("50 exfiltration names: %q, the test DNS server saw %d", r.Stdout, len(h.askedFor("exfil.test")))
	}
	events := eventsOf(t, d, "e2e-net")
	for _, want := range []struct{ kind, decision, reason, name string }{
		{"dns", "allowed", "", "allowed.test"}, {"tcp", "allowed", "", "allowed.test"},
		{"dns", "denied", "dns_denied", "other.test"}, {"tcp", "denied", "ip_literal", h.free},
		{"tcp", "denied", "port_not_allowed", b}, {"tcp", "denied", "sni_mismatch", "other.test"},
		{"tcp", "denied", "sni_mismatch", "y.wild.test"}, {"tcp", "denied", "name_missing", "allowed.test"},
		{"tcp", "denied", "private_address", "10.1.2.3"}, {"udp", "denied", "udp_blocked", a},
	} {
		if !hasEvent(events, want.kind, want.decision, want.reason, want.name) {
			t.Errorf("no %s %s %s event for %s in %+v", want.kind, want.decision, want.reason, want.name, events)
		}
	}
	for _, e := range events {
		if e.Kind == "tcp" && e.Decision == "allowed" && e.Name == "allowed.test" && e.Port == 80 && (e.BytesOut == 0 || e.BytesIn == 0) {
			t.Errorf("an allowed connection without its bytes: %+v", e)
		}
	}

	// 0.0.0.0/0 opens the world, not the host, the other workers or the metadata address.
	if _, err := d.client.SetNetwork(ctx, "e2e-net", api.NetworkPolicy{Allow: []string{"0.0.0.0/0", "allowed.test"}}); err != nil {
		t.Fatal(err)
	}
	other := d.exec(t, "e2e-net-none", "1").WorkerID
	otherIP := containerLabel(t, other, "io.codebox.ip")
	for what, dst := range map[string]string{"the host's address": h.host.String() + "', 80", "the gateway's API port": gateway + "', 3874",
		"the metadata address": "169.254.169.254', 80", "another worker's agent": otherIP + "', 8888"} {
		if v := probe(t, d, "e2e-net", "show(get('"+dst+"))"); !refused(v) {
			t.Errorf("with 0.0.0.0/0, %s: %v", what, v)
		}
	}
	if v := probe(t, d, "e2e-net", fmt.Sprintf("show(get(%q))", b)); !served(v, "host="+b) {
		t.Errorf("with 0.0.0.0/0, an address of the test hosts: %v", v)
	}

	// Denials in the call's answer: REST, SSE and the websocket; in a session of their own,
	// whose worker has asked few questions (a worker may ask 100 a second, bursts of 200).
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-net-calls"})
	d.exec(t, "e2e-net-calls", probes)
	r, err := d.client.Execute(ctx, "e2e-net-calls", "show([resolve('denied.test'), get('169.254.169.254')])", 0)
	if err != nil || r.NetworkDenialsTotal != 2 || len(r.NetworkDenials) != 2 || r.NetworkDenials[0].Reason != "dns_denied" ||
		r.NetworkDenials[1].Reason != "private_address" {
		t.Fatalf("the REST answer's denials: %+v %v", r, err)
	}
	var streamed, done int
	for e, err := range d.client.Stream(ctx, "e2e-net-calls", api.ExecuteRequest{Code: "show(resolve('streamed.test'))"}) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Type == api.EventNetwork && e.Network.Name == "streamed.test" && e.Network.Reason == "dns_denied" {
			streamed++
		}
		if e.Type == api.EventDone {
			done = e.NetworkDenialsTotal
		}
	}
	if streamed != 1 || done != 1 {
		t.Fatalf("SSE: %d network events, done says %d denials", streamed, done)
	}
	ws := dialWS(t, d, "e2e-net-calls", true)
	ws.send(map[string]any{"type": "execute", "id": "w1", "code": "show(resolve('ws.test'))"})
	var sawWS bool
	for _, a := range ws.until("w1") {
		if a.Type == api.EventNetwork && a.Network.Name == "ws.test" {
			sawWS = true
		}
	}
	if !sawWS {
		t.Fatal("no network event on the websocket")
	}

	// Another session's policy opens nothing for this one.
	if v := probe(t, d, "e2e-net-none", "show(get('allowed.test'))"); refused(v) == false && !strings.Contains(fmt.Sprint(v), "gaierror") {
		t.Fatalf("the session without a policy, after another's opened allowed.test: %v", v)
	}
	if v := probe(t, d, "e2e-net-none", fmt.Sprintf("show(get(%q, 80, 'allowed.test'))", a)); !refused(v) {
		t.Fatalf("the session without a policy, to the address another session resolved allowed.test to: %v", v)
	}

	// At runtime: a connection open to what a new policy no longer allows is cut within a
	// second; new ones follow the new policy at once.
	d.exec(t, "e2e-net", "kept = socket.create_connection(('allowed.test', 80), timeout=5)\n"+
		"kept.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'); first = kept.recv(4096)")
	if _, err := d.client.UpdateSession(ctx, "e2e-net", api.UpdateSessionRequest{Network: &api.NetworkPolicy{Allow: []string{"both.test"}}}); err != nil {
		t.Fatal(err)
	}
	v := probe(t, d, "e2e-net", "import time\nt = time.time()\ntry:\n    kept.settimeout(3); kept.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'); out = kept.recv(4096)\n"+
		"    res = 'open' if out else 'closed'\nexcept OSError as e:\n    res = type(e).__name__\nshow([res, round(time.time() - t, 2)])")
	if p, ok := v.([]any); !ok || p[0] == "open" || p[0] == "TimeoutError" {
		t.Fatalf("the connection the new policy no longer allows: %v", v)
	}
	if v := probe(t, d, "e2e-net", "show(get('allowed.test'))"); served(v, "host=") {
		t.Fatalf("allowed.test after it left the policy: %v", v)
	}
	if v := probe(t, d, "e2e-net", "show(get('both.test'))"); !served(v, "host=both.test") {
		t.Fatalf("both.test after it joined the policy: %v", v)
	}

	// Metrics count decisions by reason.
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`codebox_egress_decisions_total{decision="denied",kind="dns",reason="dns_denied"}`,
		`codebox_egress_decisions_total{decision="denied",kind="tcp",reason="sni_mismatch"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A restart: the policy and the resolver come back with the session.
	d.stop()
	d2 := startDaemonAs(t, d.token, "--egress-resolver", h.dns, "--state-dir", stateDir)
	if v := probe(t, d2, "e2e-net", "show(get('both.test'))"); !served(v, "host=both.test") {
		t.Fatalf("the policy after a restart: %v", v)
	}
	if v := probe(t, d2, "e2e-net", "show(resolve('allowed.test'))"); v != "gaierror" {
		t.Fatalf("a name the policy dropped, after a restart: %v", v)
	}
}

// containerLabel reads a label of worker id's container.
func containerLabel(t *testing.T, id, label string) string {
	t.Helper()
	labels, err := loadContainer(t, id).Labels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return labels[label]
}
