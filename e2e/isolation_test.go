package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	cbd "github.com/codebox/codebox/daemon"
)

// testHost is an HTTP server in a network namespace this test makes and routes from the
// host: the target of the egress attack. Reaching it from the host proves the route works,
// so a worker's failure to reach it is the firewall's doing.
type testHost struct {
	ns, addr string
	server   *exec.Cmd
}

func newTestHost(t *testing.T) *testHost {
	t.Helper()
	h := &testHost{ns: "cbxtest-ext-" + randomHex(2), addr: "198.18.213.2:8080"}
	hostIf, peerIf := "cbxext"+randomHex(2), "cbxpeer0"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "netns", "add", h.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", h.ns).Run() }) // also removes the veth pair
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", peerIf, "netns", h.ns)
	run("ip", "addr", "add", "198.18.213.1/30", "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	run("ip", "-n", h.ns, "addr", "add", "198.18.213.2/30", "dev", peerIf)
	run("ip", "-n", h.ns, "link", "set", peerIf, "up")
	run("ip", "-n", h.ns, "link", "set", "lo", "up")
	run("ip", "-n", h.ns, "route", "add", "default", "via", "198.18.213.1")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("test host\n"), 0o644)
	h.server = exec.Command("ip", "netns", "exec", h.ns, "/usr/bin/python3", "-m", "http.server",
		"--bind", "198.18.213.2", "--directory", dir, "8080")
	if err := h.server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.server.Process.Kill(); h.server.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + h.addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == "test host\n" {
				return h
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the test host is not reachable from the host: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// workerIP reads a worker's address from its container labels.
func workerIP(t *testing.T, workerID string) string {
	t.Helper()
	labels, err := loadContainer(t, workerID).Labels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cbd.ParseLabels(labels).IP.String()
}

// attack runs code that prints BLOCKED (and why) when the sandbox holds, OPEN otherwise.
func attack(t *testing.T, d *daemon, user, code string) string {
	t.Helper()
	r := d.exec(t, user, reachPy+code)
	out := r.Stdout
	if r.Error != nil {
		t.Fatalf("attack code raised: %s %s\n%s", r.Error.Ename, r.Error.Evalue, strings.Join(r.Error.Traceback, "\n"))
	}
	if !strings.Contains(out, "BLOCKED") || strings.Contains(out, "OPEN") {
		t.Fatalf("the sandbox did not hold:\n%s", out)
	}
	t.Logf("outcome:\n%s", strings.TrimSpace(out))
	return out
}

// reachPy defines reach(host, port) for attack code: "OPEN" only when something behind
// the address answered. A TCP connection the network policy refuses may be accepted by
// codeboxd's proxy, which resets it at once: connect() alone proves nothing.
const reachPy = `
import socket
def reach(host, port, timeout=3):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.recv(1)
        return "OPEN"
    except OSError as e:
        return "BLOCKED %s %s" % (type(e).__name__, e)
    finally:
        s.close()
`

func TestIsolation(t *testing.T) {
	port := freePort(t)
	d := startDaemon(t, "--listen", fmt.Sprintf("0.0.0.0:%d", port),
		"--worker-pids", "64", "--worker-ram-mb", "256", "--worker-disk-mb", "64")
	attacker := "e2e-attacker-" + randomHex(3)
	witness := "e2e-witness-" + randomHex(3)
	d.exec(t, witness, "state = 'intact'\nopen('/sandbox/witness.txt', 'w').write('mine')")
	witnessWorker := d.exec(t, witness, "1").WorkerID
	attackerWorker := d.exec(t, attacker, "1").WorkerID

	// After each attack the daemon and the other session are unaffected.
	checkWitness := func(t *testing.T) {
		t.Helper()
		r := d.exec(t, witness, "state, open('/sandbox/witness.txt').read()")
		if r.WorkerID != witnessWorker || r.ResultText == nil || *r.ResultText != "('intact', 'mine')" {
			t.Fatalf("the witness session was affected: %+v", r)
		}
	}

	t.Run("egress to a test host", func(t *testing.T) {
		h := newTestHost(t)
		attack(t, d, attacker, fmt.Sprintf(`
print(reach("%s", %s))
`, strings.Split(h.addr, ":")[0], strings.Split(h.addr, ":")[1]))
		checkWitness(t)
	})

	t.Run("another worker", func(t *testing.T) {
		ip := workerIP(t, witnessWorker)
		if ip == "" {
			t.Fatal("no IP label on the witness worker")
		}
		// The witness listens on a port of its own, besides its agent's 8888.
		d.exec(t, witness, `
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9999)); srv.listen()
threading.Thread(target=lambda: [srv.accept()[0].close() for _ in range(100)], daemon=True).start()
`)
		attack(t, d, attacker, fmt.Sprintf(`
for port in (9999, 8888):
    print(port, reach("%s", port))
`, ip))
		checkWitness(t)
	})

	t.Run("host ports through the bridge gateway", func(t *testing.T) {
		// A port only the host listens on, reachable from the host itself through the
		// gateway address: proof that only the firewall stands in the worker's way.
		ln, err := net.Listen("tcp", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		hostPort := ln.Addr().(*net.TCPAddr).Port
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", gateway, hostPort), 2*time.Second); err != nil {
			t.Fatalf("the host cannot reach its own gateway address: %v", err)
		} else {
			c.Close()
		}
		attack(t, d, attacker, fmt.Sprintf(`
for port in (%d, %d, 22, 10250):
    print(port, reach("%s", port))
`, port, hostPort, gateway))
		checkWitness(t)
	})

	t.Run("metadata address", func(t *testing.T) {
		attack(t, d, attacker, `print(reach("169.254.169.254", 80))`)
	})

	t.Run("IPv6", func(t *testing.T) {
		attack(t, d, attacker, `
import socket
addrs = open("/proc/net/if_inet6").read().strip()
print("OPEN: IPv6 addresses", addrs) if addrs else print("BLOCKED: no IPv6 address")
for target in ("fe80::1%eth0", "ff02::1%eth0", "::1"):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((target, 3874))
        print("OPEN", target)
    except OSError as e:
        print("BLOCKED", target, e)
`)
	})

	t.Run("privileges", func(t *testing.T) {
		out := attack(t, d, attacker, strings.ReplaceAll(`
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def check(name, fn):
    try:
        r = fn()
        if r == -1:
            print("BLOCKED", name, os.strerror(ctypes.get_errno()))
        else:
            print("OPEN", name, r)
    except OSError as e:
        print("BLOCKED", name, e)
check("setuid", lambda: os.setuid(0))
check("mount", lambda: libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None))
check("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
check("write root fs", lambda: open("/etc/owned", "w"))
check("ptrace host pid", lambda: libc.ptrace(16, HOSTPID, 0, 0))
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("CapEff", status["CapEff"].strip(), "CapBnd", status["CapBnd"].strip(),
      "NoNewPrivs", status["NoNewPrivs"].strip(), "Seccomp", status["Seccomp"].strip(), "uid", os.getuid())
print("processes", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
`, "HOSTPID", fmt.Sprint(d.cmd.Process.Pid)))
		for _, want := range []string{"CapEff 0000000000000000", "CapBnd 0000000000000000", "NoNewPrivs 1", "Seccomp 2", "uid 1000"} {
			if !strings.Contains(out, want) {
				t.Errorf("missing %q in:\n%s", want, out)
			}
		}
		if strings.Count(out, "BLOCKED") != 5 {
			t.Errorf("want 5 blocked attempts:\n%s", out)
		}
		checkWitness(t)
	})

	t.Run("per-user kernel limits are the worker's own", func(t *testing.T) {
		// Each worker runs as a host uid of its own range, so what the kernel counts per
		// user is not shared with another worker. Pipe buffers, counted per user: the
		// attacker takes all a user may have; the witness's pipes keep their size.
		hostUID := func(worker string) int {
			task, err := loadContainer(t, worker).Task(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			uid, err := strconv.Atoi(procStatus(t, int(task.Pid()), "Uid")[0])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
		a, w := hostUID(attackerWorker), hostUID(witnessWorker)
		if a == w || a < 1<<20 || w < 1<<20 {
			t.Fatalf("host uids: attacker's worker %d, witness's %d; want two of their own, far from host accounts", a, w)
		}
		attack(t, d, attacker, `
import fcntl, os
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
hog = []
try:  # 1 MiB pipes until the user's pages run out
    for i in range(200):
        r, w = os.pipe()
        hog.append((r, w))
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
except OSError:
    pass
for i in range(200):  # then plain ones, until they come small
    r, w = os.pipe()
    hog.append((r, w))
    size = fcntl.fcntl(w, F_GETPIPE_SZ)
    if size < 65536:
        break
print("BLOCKED" if size < 65536 else "OPEN", "after", len(hog), "pipes a new one holds", size, "bytes")`)
		r := d.exec(t, witness, "import fcntl, os\nr, w = os.pipe()\nprint(fcntl.fcntl(w, 1032))\nos.close(r); os.close(w)")
		if r.Stdout != "65536\n" {
			t.Fatalf("the witness's new pipe holds %q bytes: the attacker's pipes count against it", r.Stdout)
		}
		d.exec(t, attacker, "import os\nfor r, w in hog: os.close(r); os.close(w)\ndel hog")
		checkWitness(t)
	})

	t.Run("another worker's files", func(t *testing.T) {
		attack(t, d, attacker, `
import glob, os
found = [p for pat in ("/sandbox/**", "/tmp/**", "/home/**", "/mnt/**", "/var/**", "/srv/**", "/opt/**")
         for p in glob.glob(pat, recursive=True) if "witness" in p]
print("OPEN", found) if found else print("BLOCKED: not visible")
mounts = [l.split()[4] for l in open("/proc/self/mountinfo") if " ext4 " in l or "/dev/loop" in l]
print("ext4 mounts", mounts)
print("OPEN loop devices") if glob.glob("/dev/loop*") else print("BLOCKED: no loop devices")
`)
	})

	t.Run("fork bomb", func(t *testing.T) {
		attack(t, d, attacker, `
import os, time, signal
children, refused = [], None
for i in range(500):
    try:
        pid = os.fork()
    except OSError as e:
        refused = e
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print("BLOCKED after", len(children), "forks:", refused) if refused else print("OPEN", len(children))
`)
		if r := d.exec(t, attacker, "'recovered'"); r.ResultText == nil || *r.ResultText != "'recovered'" {
			t.Fatalf("the worker did not recover: %+v", r)
		}
		checkWitness(t)
	})

	t.Run("fill /sandbox", func(t *testing.T) {
		fill(t, d, attacker, "/sandbox/fill")
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(d.stateDir, "disks", attackerWorker+".img"), &st); err != nil {
			t.Fatal(err)
		}
		if used := st.Blocks * 512; used > 70<<20 {
			t.Fatalf("the disk file uses %d bytes of the host's disk, more than its 64 MiB", used)
		}
		d.exec(t, attacker, "import os; os.remove('/sandbox/fill')")
		checkWitness(t)
	})

	t.Run("fill /tmp", func(t *testing.T) {
		fill(t, d, attacker, "/tmp/fill")
		d.exec(t, attacker, "import os; os.remove('/tmp/fill')")
	})

	t.Run("flood the container's stdout", func(t *testing.T) {
		r := d.exec(t, attacker, "import os\nfor i in range(20):\n    os.write(1, b'x' * (1 << 20))\nprint('done')")
		if !r.Truncated || len(r.Stdout) > 5<<20 {
			t.Fatalf("fd output not captured and capped: truncated %v, %d bytes", r.Truncated, len(r.Stdout))
		}
		st, err := os.Stat(filepath.Join(d.stateDir, "logs", attackerWorker+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 64<<10 {
			t.Fatalf("the worker's log on the host grew to %d bytes", st.Size())
		}
		checkWitness(t)
	})

	t.Run("memory bomb", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := d.client.Execute(ctx, attacker, "hog = []\nfor i in range(40):\n    hog.append(b'x' * (50 << 20))\nprint('OPEN', len(hog))", 0)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 503 || !strings.Contains(ae.Detail, "kernel died") {
			t.Fatalf("want 503 kernel died, got %v", err)
		}
		checkWitness(t)
		if r := d.exec(t, attacker, "'alive again'"); *r.ResultText != "'alive again'" {
			t.Fatalf("the session did not get a working kernel again: %+v", r)
		}
	})

	d.client.Release(context.Background(), attacker)
	d.client.Release(context.Background(), witness)
}

// fill writes file in 1 MiB steps (at most 200) and expects ENOSPC before the end.
func fill(t *testing.T, d *daemon, user, file string) {
	t.Helper()
	out := attack(t, d, user, fmt.Sprintf(`
import errno
written = 0
try:
    with open(%q, "wb") as f:
        for i in range(200):
            f.write(b"x" * (1 << 20)); f.flush()
            written += 1
    print("OPEN", written)
except OSError as e:
    print("BLOCKED at", written, "MiB:", errno.errorcode.get(e.errno))
`, file))
	if !strings.Contains(out, "ENOSPC") {
		t.Fatalf("want ENOSPC: %s", out)
	}
}
