// Package e2e holds the end-to-end tests: the real codeboxd binary against a real
// containerd, runc, CNI plugins and the real worker image. `make test-e2e` runs them with
// CODEBOX_E2E=1 and everything they need in the environment; there a missing prerequisite
// fails the run. In a plain `go test ./...` they skip with a message.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/firewall"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// The tests' daemons use their own containerd namespace, bridge, subnet and firewall
// chains: never the operator's.
const (
	namespace = "codebox-e2e"
	bridge    = "cbxtest0"
	subnet    = "10.214.0.0/16"
	gateway   = "10.214.0.1"
)

var env struct {
	containerd, image, archive, bin string
}

func TestMain(m *testing.M) {
	if os.Getenv("CODEBOX_E2E") == "" {
		fmt.Println("e2e: skipped: these tests need root, containerd and the worker image; run `make test-e2e` (sets CODEBOX_E2E=1)")
		os.Exit(0)
	}
	env.containerd = os.Getenv("CODEBOX_E2E_CONTAINERD")
	env.image = os.Getenv("CODEBOX_E2E_IMAGE")
	env.archive = os.Getenv("CODEBOX_E2E_ARCHIVE")
	env.bin = os.Getenv("CODEBOX_E2E_BIN")
	if err := checkPrerequisites(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: prerequisite missing:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := checkNoLeftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: the tests left resources behind:", err)
		code = 1
	}
	if err := removeTestNetwork(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: removing the test network:", err)
		code = 1
	}
	if err := pruneImages(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: pruning old images:", err)
		code = 1
	}
	os.Exit(code)
}

// removeTestNetwork removes what the tests' daemons leave by design (a daemon keeps its
// firewall and bridge across restarts): `codeboxd cleanup` for the chains, then the bridge.
func removeTestNetwork() error {
	stateDir, err := os.MkdirTemp("", "codebox-e2e-cleanup-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	if err := runCleanup(cleanupTarget{stateDir: stateDir}); err != nil {
		return err
	}
	if _, err := net.InterfaceByName(bridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", bridge).CombinedOutput(); err != nil {
			return fmt.Errorf("delete bridge: %v: %s", err, out)
		}
	}
	if err := os.Remove(netns.NetNSDirFor(bridge)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns dir: %w", err)
	}
	in, fwd := firewall.Chains(bridge)
	for _, tool := range []string{"iptables", "ip6tables"} {
		filter, _ := exec.Command(tool, "-S").Output()
		mangle, _ := exec.Command(tool, "-t", "mangle", "-S").Output()
		nat, _ := exec.Command(tool, "-t", "nat", "-S").Output()
		rules := string(filter) + string(mangle) + string(nat)
		for _, c := range []string{in, fwd, firewall.FenceChain(bridge), firewall.RedirectChain(bridge)} {
			if strings.Contains(rules, c) {
				return fmt.Errorf("%s still has the test chain %s after cleanup", tool, c)
			}
		}
	}
	if left := runtime.CgroupParents(namespace); len(left) > 0 {
		return fmt.Errorf("cgroups of namespace %s left after cleanup: %v", namespace, left)
	}
	return nil
}

func checkPrerequisites() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root")
	}
	for name, v := range map[string]string{"CODEBOX_E2E_CONTAINERD": env.containerd, "CODEBOX_E2E_IMAGE": env.image,
		"CODEBOX_E2E_ARCHIVE": env.archive, "CODEBOX_E2E_BIN": env.bin} {
		if v == "" {
			return fmt.Errorf("%s is not set", name)
		}
	}
	// Clients we did not write, driving the API as users' tools do.
	for _, tool := range []string{"curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (make deps installs it): %w", tool, err)
		}
	}
	for _, f := range []string{env.archive, env.bin, env.containerd} {
		if _, err := os.Stat(f); err != nil {
			return err
		}
	}
	c, err := client.New(env.containerd)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ok, err := c.IsServing(ctx); err != nil || !ok {
		return fmt.Errorf("containerd at %s does not serve: %v", env.containerd, err)
	}
	return nil
}

// daemon is one codeboxd process under test.
type daemon struct {
	t        *testing.T
	cmd      *exec.Cmd
	url      string
	token    string
	stateDir string
	client   *api.Client
	logs     *syncBuffer
	done     chan struct{}
	// roots verify the daemon's certificate when it serves TLS (nil: plain HTTP).
	roots *x509.CertPool
}

// transport reaches the daemon: plain, or over TLS trusting its certificate's issuer.
func (d *daemon) transport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if d.roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: d.roots}
	}
	return tr
}

func (d *daemon) httpClient() *http.Client { return &http.Client{Transport: d.transport()} }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startDaemon starts codeboxd with the test defaults, overridden by flags, and waits until
// it answers /healthz. It is stopped (SIGTERM by pid) when the test ends.
func startDaemon(t *testing.T, flags ...string) *daemon {
	t.Helper()
	return startDaemonAs(t, randomHex(16), flags...)
}

// startDaemonAs is startDaemon with the API token given: a daemon that takes over another's
// state, for the same clients.
func startDaemonAs(t *testing.T, token string, flags ...string) *daemon {
	t.Helper()
	return startDaemonWith(t, daemonOptions{token: token}, flags...)
}

// daemonOptions are what a test chooses of a daemon beside its flags.
type daemonOptions struct {
	token string
	// roots, when set, verify the certificate the daemon serves (its flags name it).
	roots *x509.CertPool
}

func startDaemonWith(t *testing.T, o daemonOptions, flags ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, token: o.token, roots: o.roots, logs: &syncBuffer{}, done: make(chan struct{})}
	d.stateDir = t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for i, f := range flags { // the test's own address and state dir win
		if i+1 < len(flags) && f == "--listen" {
			listen = flags[i+1]
		}
		if i+1 < len(flags) && f == "--state-dir" {
			d.stateDir = flags[i+1]
		}
	}
	_, port, _ := net.SplitHostPort(listen)
	d.url = "http://127.0.0.1:" + port
	if d.roots != nil {
		d.url = "https://127.0.0.1:" + port
	}
	args := []string{
		"--listen", listen,
		"--state-dir", d.stateDir,
		"--containerd-address", env.containerd,
		"--containerd-namespace", namespace,
		"--worker-bridge", bridge,
		"--worker-subnet", subnet,
		"--worker-image", env.image,
		"--worker-image-archive", env.archive,
		"--min-idle-workers", "0",
		"--max-total-workers", "10",
		"--worker-cpu", "1",
		"--worker-ram-mb", "512",
		"--log-level", "debug",
		"--metrics-listen", "",
		"--destroy-on-stop",
	}
	args = append(args, flags...)
	d.cmd = exec.Command(env.bin, args...)
	d.cmd.Env = append(os.Environ(), "AUTH_TOKEN="+d.token)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start codeboxd: %v", err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		// A loop device is cleared once the last mount of its file system is gone, the
		// container's included, which the kernel finishes a moment after the task is.
		deadline := time.Now().Add(10 * time.Second)
		left := diskLeftovers(d.stateDir, false)
		for left != "" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			left = diskLeftovers(d.stateDir, false)
		}
		if left != "" {
			t.Errorf("after codeboxd stopped: %s", left)
		}
		if strings.Contains(d.logs.String(), d.token) {
			t.Errorf("the API token appears in codeboxd's log")
		}
		if t.Failed() {
			t.Logf("codeboxd log:\n%s", d.logs.String())
		}
	})
	d.client = api.NewClient(d.url, d.token)
	if d.roots != nil {
		d.client = d.client.WithTLS(&tls.Config{RootCAs: d.roots})
	}
	hc := d.httpClient()
	deadline := time.Now().Add(3 * time.Minute) // the first start imports and unpacks the image
	for {
		resp, err := hc.Get(d.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return d
			}
		}
		select {
		case <-d.done:
			t.Fatalf("codeboxd exited at start: %v\n%s", d.cmd.ProcessState, d.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("codeboxd did not become healthy:\n%s", d.logs.String())
		}
	}
}

// stop sends SIGTERM to the daemon this test started and waits for it to exit.
func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		d.t.Errorf("codeboxd did not stop within 60 s of SIGTERM; killing it")
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) exec(t *testing.T, user, code string) *api.ExecuteResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := d.client.Execute(ctx, user, code, 0)
	if err != nil {
		t.Fatalf("execute %q for %s: %v", code, user, err)
	}
	return resp
}

// request sends a raw request and returns the status and body.
func (d *daemon) request(t *testing.T, method, path, body string, headers map[string]string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, d.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := d.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// checkNoLeftovers looks for what a worker leaves behind when torn down badly: containers
// in the tests' namespace, network namespaces, CNI address allocations.
func checkNoLeftovers() error {
	var problems []string
	c, err := client.New(env.containerd, client.WithDefaultNamespace(namespace))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	cs, err := c.Containers(ctx)
	if err != nil {
		return err
	}
	for _, ct := range cs {
		problems = append(problems, "container "+ct.ID())
	}
	snaps := c.SnapshotService("overlayfs")
	defer snaps.Close()
	snaps.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, "w-") {
			problems = append(problems, "snapshot "+info.Name)
		}
		return nil
	})
	problems = append(problems, creationLeases(ctx, c)...)
	for id, pid := range runtime.ShimsOf(namespace, env.containerd) {
		problems = append(problems, fmt.Sprintf("shim of %s (pid %d)", id, pid))
	}
	if entries, err := os.ReadDir(netns.NetNSDirFor(bridge)); err == nil {
		for _, e := range entries {
			problems = append(problems, "netns "+e.Name())
		}
	}
	if entries, err := os.ReadDir("/var/lib/cni/networks/" + bridge); err == nil {
		for _, e := range entries {
			if net.ParseIP(e.Name()) != nil {
				problems = append(problems, "CNI allocation "+e.Name())
			}
		}
	}
	if matches, _ := filepath.Glob("/var/lib/cni/results/" + bridge + "-*"); len(matches) > 0 {
		problems = append(problems, fmt.Sprintf("CNI results %v", matches))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, ", "))
	}
	return nil
}

// pruneImages deletes images of earlier recipes from the tests' namespace (the current one
// stays, so the next run need not import it again).
func pruneImages() error {
	rt, err := runtime.Connect(context.Background(), env.containerd, namespace, slog.Default())
	if err != nil {
		return err
	}
	defer rt.Close()
	_, err = rt.PruneOthers(context.Background(), env.image)
	return err
}

// cleanupAll removes every worker of the tests' namespace and what they left in stateDir
// (`codeboxd cleanup --all`), for tests whose daemons leave their workers running.
func cleanupAll(t *testing.T, stateDir string) {
	t.Helper()
	if err := runCleanup(cleanupTarget{stateDir: stateDir}); err != nil {
		t.Error(err)
	}
}

// cleanupTarget is what `codeboxd cleanup --all` is pointed at; empty fields are the
// tests' own (containerd, namespace, bridge, subnet).
type cleanupTarget struct {
	containerd, namespace, bridge, subnet, stateDir string
}

// runCleanup runs `codeboxd cleanup --all` on target.
func runCleanup(c cleanupTarget) error {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	out, err := exec.Command(env.bin, "cleanup", "--all", "--containerd-address", def(c.containerd, env.containerd),
		"--containerd-namespace", def(c.namespace, namespace), "--worker-bridge", def(c.bridge, bridge),
		"--worker-subnet", def(c.subnet, subnet), "--state-dir", c.stateDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("codeboxd cleanup --all: %v: %s", err, out)
	}
	return nil
}

// procStatus is a field of /proc/PID/status (e.g. "VmRSS", "Uid"): its words after the
// colon.
func procStatus(t *testing.T, pid int, field string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return nil
}

// procBytes is a memory field of /proc/PID/status (VmRSS, VmHWM), in bytes.
func procBytes(t *testing.T, pid int, field string) int64 {
	t.Helper()
	kb, err := strconv.ParseInt(procStatus(t, pid, field)[0], 10, 64)
	if err != nil {
		t.Fatalf("%s of %d: %v", field, pid, err)
	}
	return kb << 10
}

// eventually polls cond every 50 ms until it holds, or fails the test naming what did not
// happen within limit.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// afterOf is what a failed call's answer says it left (zero when it says nothing).
func afterOf(e *api.Error) api.Aftermath {
	if e.After == nil {
		return api.Aftermath{}
	}
	return *e.After
}

// flagIs reports whether an answer's optional flag is present and want.
func flagIs(p *bool, want bool) bool { return p != nil && *p == want }
