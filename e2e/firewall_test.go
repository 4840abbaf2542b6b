package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestFirewallHoldsAcrossRestarts: codeboxd installs its firewall at every start, while the
// workers of the codeboxd before it run. A worker probes the test host and a port of the host
// without pause while codeboxd restarts ten times: no probe may get through.
func TestFirewallHoldsAcrossRestarts(t *testing.T) {
	h := newTestHost(t)
	host, hostPort, _ := strings.Cut(h.addr, ":")
	// A port of the host's, listening on every address (the bridge's gateway included).
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())

	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) }) // runs last: the daemons leave their workers
	flags := []string{"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--destroy-on-stop=false", "--state-dir", stateDir}
	d := startDaemon(t, flags...)
	user := "e2e-fw-" + randomHex(3)
	// The probes run in threads of the worker's, between calls too. ICMP errors are
	// rate-limited, so most refused probes time out: the short timeout keeps them many.
	r := d.exec(t, user, fmt.Sprintf(`
import socket, threading, time
counts = {"tries": 0, "open": 0, "errors": {}, "since": time.time()}
def probe():
    targets = [("%s", %s), ("%s", %s)]
    while True:
        for addr in targets:
            s = socket.socket()
            s.settimeout(0.005)  # an open path answers within a millisecond here
            try:
                # A connection the policy refuses may be accepted by codeboxd's proxy and
                # reset at once: only an answer from behind it is a way through.
                s.connect(addr)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                s.recv(1)
                counts["open"] += 1
            except OSError as e:
                k = type(e).__name__
                counts["errors"][k] = counts["errors"].get(k, 0) + 1
            finally:
                s.close()
            counts["tries"] += 1
for _ in range(8):
    threading.Thread(target=probe, daemon=True).start()
time.sleep(1)
counts["tries"] > 0`, host, hostPort, gateway, port))
	if r.ResultText == nil || *r.ResultText != "True" {
		t.Fatalf("the probe did not start: %+v", r)
	}

	start := time.Now()
	for i := 0; i < 10; i++ {
		d.cmd.Process.Signal(syscall.SIGTERM)
		<-d.done
		d = startDaemonAs(t, d.token, flags...)
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("10 restarts in %s", time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)
	r = d.exec(t, user, "import json, threading; counts['for'] = time.time() - counts['since']; counts['threads'] = threading.active_count(); print(json.dumps(counts))")
	t.Logf("probes across 10 restarts: %s", strings.TrimSpace(r.Stdout))
	var tries, open int
	fmt.Sscanf(strings.TrimSpace(r.Stdout), `{"tries": %d, "open": %d`, &tries, &open)
	if tries < 1000 {
		t.Fatalf("only %d probes ran: the test proves nothing", tries)
	}
	if open != 0 || accepted.Load() != 0 {
		t.Fatalf("%d probes got through (%d connections reached the host's port)", open, accepted.Load())
	}
	d.client.Release(t.Context(), user)
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	cleanupAll(t, stateDir) // before the daemons' own checks of what they left
}

// foreignAccept inserts, at the top of table's chain, a rule that accepts everything from
// the tests' bridge, for IPv4 and IPv6, as other software managing iptables does (Calico's
// Felix every ~90 s, dockerd at each start); the test's cleanup takes it out again.
func foreignAccept(t *testing.T, table, chain string) {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables"} {
		rule := []string{"-t", table, "-I", chain, "1", "-i", bridge, "-j", "ACCEPT"}
		if out, err := exec.Command(tool, rule...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v: %s", tool, rule, err, out)
		}
		t.Cleanup(func() {
			del := []string{"-t", table, "-D", chain, "-i", bridge, "-j", "ACCEPT"}
			for exec.Command(tool, del...).Run() == nil { // every copy
			}
		})
	}
}

// TestFenceHoldsAgainstForeignAccept: a rule that some other software puts above
// codeboxd's accepts everything from the bridge. In the filter table it opens nothing: the
// fence in mangle drops first. Above the fence too, it lasts until the periodic check puts
// the hooks first again. After a restart, with the foreign rules still there, all is shut.
func TestFenceHoldsAgainstForeignAccept(t *testing.T) {
	h := newTestHost(t)
	host, hostPort, _ := strings.Cut(h.addr, ":")
	l, err := net.Listen("tcp", "0.0.0.0:0") // a port of the host's, on the gateway too
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())

	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	flags := []string{"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--destroy-on-stop=false",
		"--state-dir", stateDir, "--firewall-check-interval", "1s"}
	d := startDaemon(t, flags...)
	victim, attacker := "e2e-fence-victim-"+randomHex(3), "e2e-fence-attacker-"+randomHex(3)
	// The victim listens on every address of its worker.
	r := d.exec(t, victim, `
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9000)); srv.listen(64)
def serve():
    while True:
        c, _ = srv.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
print("listening")`)
	if r.Stdout != "listening\n" {
		t.Fatalf("victim: %+v", r)
	}
	victimIP := workerIP(t, r.WorkerID)
	probe := fmt.Sprintf(`
import socket
opened = []
for addr in [(%q, 9000), (%q, %s), (%q, %s)]:
    for _ in range(5):
        s = socket.socket(); s.settimeout(0.3)
        try:
            s.connect(addr); s.sendall(b"GET / HTTP/1.0\r\n\r\n"); s.recv(1)  # an answer from behind the proxy
            opened.append(addr)
        except OSError:
            pass
        finally:
            s.close()
print("OPEN %%s" %% opened if opened else "BLOCKED")`, victimIP, host, hostPort, gateway, port)

	attack(t, d, attacker, probe) // the fence as installed
	foreignAccept(t, "filter", "FORWARD")
	foreignAccept(t, "filter", "INPUT")
	t.Log("ACCEPT first in filter's INPUT and FORWARD:")
	attack(t, d, attacker, probe)

	// Above the fence as well: the periodic check (every second here) puts the hooks first.
	foreignAccept(t, "mangle", "PREROUTING")
	eventually(t, 10*time.Second, "the periodic check repairs the firewall", func() bool {
		return strings.Contains(d.logs.String(), "firewall repaired") && checkFirewall() == nil
	})
	t.Log("ACCEPT first in mangle's PREROUTING too, after the check:")
	attack(t, d, attacker, probe)

	// A restart with the foreign rules above ours again.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	foreignAccept(t, "filter", "FORWARD")
	foreignAccept(t, "mangle", "PREROUTING")
	d = startDaemonAs(t, d.token, flags...)
	if err := checkFirewall(); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	t.Log("after a restart:")
	attack(t, d, attacker, probe)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections reached the host's port", n)
	}
	if strings.Contains(d.logs.String(), "firewall repaired") {
		t.Fatalf("the check repaired a firewall that Install had just put in place:\n%s", d.logs.String())
	}
	for _, u := range []string{victim, attacker} {
		d.client.Release(t.Context(), u)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	cleanupAll(t, stateDir)
}
