package e2e

import (
	"fmt"
	"net"
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
                s.connect(addr)
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
