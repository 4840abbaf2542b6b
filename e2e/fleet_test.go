package e2e

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
)

// fleetNode is one codeboxd of the fleet, with its own containerd namespace, bridge,
// subnet, state, port and metrics listener.
type fleetNode struct {
	name, ns, bridge, subnet string
	d                        *daemon
}

func startFleetNode(t *testing.T, token string, i int) *fleetNode {
	t.Helper()
	n := &fleetNode{name: fmt.Sprintf("n%d", i), ns: fmt.Sprintf("codebox-fleet-%d", i),
		bridge: fmt.Sprintf("cbxfleet%d", i), subnet: fmt.Sprintf("10.%d.0.0/16", 220+i)}
	t.Cleanup(func() { cleanupFleetNode(t, n) }) // after the daemon's own clean-up
	n.d = startDaemonAs(t, token, "--containerd-namespace", n.ns, "--worker-bridge", n.bridge, "--worker-subnet", n.subnet,
		"--trusted-proxies", "127.0.0.1",
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--min-idle-workers", "3", "--max-total-workers", "80", "--worker-ram-mb", "256", "--worker-disk-mb", "100",
		"--log-level", "info")
	return n
}

// cleanupFleetNode removes what a node leaves by design (firewall chains, bridge) and
// checks it left no worker; its namespace keeps the current image for the next run.
func cleanupFleetNode(t *testing.T, n *fleetNode) {
	stateDir, err := os.MkdirTemp("", "codebox-fleet-cleanup-")
	if err != nil {
		t.Error(err)
		return
	}
	defer os.RemoveAll(stateDir)
	if err := runCleanup(cleanupTarget{namespace: n.ns, bridge: n.bridge, subnet: n.subnet, stateDir: stateDir}); err != nil {
		t.Errorf("%s: %v", n.name, err)
	}
	if _, err := net.InterfaceByName(n.bridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", n.bridge).CombinedOutput(); err != nil {
			t.Errorf("%s: delete bridge: %v: %s", n.name, err, out)
		}
	}
	os.Remove(netns.NetNSDirFor(n.bridge))
	rt, err := runtime.Connect(context.Background(), env.containerd, n.ns, slog.Default())
	if err != nil {
		t.Error(err)
		return
	}
	defer rt.Close()
	if managed, err := rt.Managed(context.Background()); err != nil || len(managed) > 0 {
		t.Errorf("%s: workers left: %v %v", n.name, managed, err)
	}
	rt.PruneOthers(context.Background(), env.image)
}

// router is HAProxy in front of the nodes, configured by scripts/haproxy-config.sh.
type router struct {
	t           *testing.T
	dir         string
	url, stats  string
	listen, adm string
	cmd         *exec.Cmd
	done        chan struct{}
	logs        *syncBuffer
}

func startRouter(t *testing.T, nodes []*fleetNode) *router {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatalf("haproxy is not installed (make deps installs it): %v", err)
	}
	r := &router{t: t, dir: t.TempDir()}
	port, stats := freePort(t), freePort(t)
	r.listen, r.adm = fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", stats)
	r.url, r.stats = "http://"+r.listen, "http://"+r.adm
	r.reload(nodes)
	t.Cleanup(r.stop)
	return r
}

// reload writes the configuration for nodes and starts HAProxy on it, taking over from
// the running one (-sf), as an operator's reload does.
func (r *router) reload(nodes []*fleetNode) {
	r.t.Helper()
	var list strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&list, "%s %s\n", n.name, strings.TrimPrefix(n.d.url, "http://"))
	}
	nodesFile, cfg := filepath.Join(r.dir, "nodes"), filepath.Join(r.dir, "haproxy.cfg")
	if err := os.WriteFile(nodesFile, []byte(list.String()), 0o644); err != nil {
		r.t.Fatal(err)
	}
	out, err := exec.Command("../scripts/haproxy-config.sh", nodesFile, r.listen, r.adm, filepath.Join(r.dir, "admin.sock")).Output()
	if err != nil {
		r.t.Fatalf("haproxy-config.sh: %v", err)
	}
	if err := os.WriteFile(cfg, out, 0o644); err != nil {
		r.t.Fatal(err)
	}
	args := []string{"-db", "-f", cfg}
	old := r.cmd
	if old != nil {
		args = append(args, "-sf", strconv.Itoa(old.Process.Pid))
	}
	cmd := exec.Command("haproxy", args...)
	cmd.Env = append(os.Environ(), "CODEBOX_STATS_USER="+statsUser, "CODEBOX_STATS_PASSWORD="+statsPassword)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("haproxy: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if old != nil {
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			r.t.Fatalf("the old haproxy did not hand over")
		}
	}
	r.cmd, r.done, r.logs = cmd, done, logs
	r.waitStatus(func(st map[string]string) bool {
		for _, n := range nodes {
			if st[n.name] != "UP" {
				return false
			}
		}
		return true
	}, 30*time.Second, "every node UP")
}

func (r *router) stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGUSR1) // soft stop
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
}

// admin sends a command to HAProxy's runtime API and returns its answer.
func (r *router) admin(cmd string) string {
	r.t.Helper()
	conn, err := net.Dial("unix", filepath.Join(r.dir, "admin.sock"))
	if err != nil {
		r.t.Fatalf("haproxy admin socket: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(conn, cmd)
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// The status page's credentials in the tests.
const statsUser, statsPassword = "e2e", "e2e-stats-password"

// status is HAProxy's view of each node (the stats page's CSV): UP, DOWN, DRAIN, ...
func (r *router) status() map[string]string {
	req, _ := http.NewRequest("GET", r.stats+"/;csv", nil)
	req.SetBasicAuth(statsUser, statsPassword)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil || len(rows) == 0 {
		return nil
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[strings.TrimPrefix(h, "# ")] = i
	}
	st := map[string]string{}
	for _, row := range rows[1:] {
		if row[col["pxname"]] == "codeboxd" && row[col["svname"]] != "BACKEND" {
			st[row[col["svname"]]] = strings.Fields(row[col["status"]])[0]
		}
	}
	return st
}

func (r *router) waitStatus(ok func(map[string]string) bool, limit time.Duration, what string) time.Duration {
	r.t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if st := r.status(); st != nil && ok(st) {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("haproxy: not %s within %s: %v\n%s", what, limit, r.status(), r.logs.String())
	return 0
}

// holder says which node holds each session: the one whose listing of it answers (a
// listing never creates a session).
func holder(t *testing.T, nodes []*fleetNode, user string) string {
	t.Helper()
	found := ""
	for _, n := range nodes {
		status, _, _ := n.d.request(t, "GET", "/api/v1/files/list?user_uuid="+user+"&path=/sandbox/", "", map[string]string{"X-Auth-Token": n.d.token})
		if status == 200 {
			if found != "" {
				t.Fatalf("session %s is on %s and %s", user, found, n.name)
			}
			found = n.name
		}
	}
	return found
}

// TestFleet runs three codeboxd nodes behind HAProxy's consistent hashing (make
// test-fleet): sessions spread, every call of a session reaches its node, a stopped node
// moves only its own sessions, an added node takes a share, HAProxy sees each node.
func TestFleet(t *testing.T) {
	token := randomHex(16)
	nodes := []*fleetNode{startFleetNode(t, token, 1), startFleetNode(t, token, 2), startFleetNode(t, token, 3)}
	rt := startRouter(t, nodes)
	c := api.NewClient(rt.url, token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	const sessions = 100
	// Fixed names: with HAProxy's server ids derived from the node names, where each lands
	// is the same in every run, so the balance bounds below judge the ring, not the luck of
	// random names (which put 48 on one node in a CI run).
	users := make([]string, sessions)
	for i := range users {
		users[i] = fmt.Sprintf("fleet-%03d", i)
	}
	// each runs f for every session, 10 at a time.
	each := func(f func(i int, user string)) {
		var wg sync.WaitGroup
		slots := make(chan struct{}, 10)
		for i, u := range users {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				f(i, u)
			}()
		}
		wg.Wait()
	}
	call := func(user, code string) (*api.ExecuteResponse, error) {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ccancel()
		return c.Execute(cctx, user, code, 0)
	}

	// 1. A hundred sessions spread over the three.
	start := time.Now()
	each(func(i int, u string) {
		if _, err := call(u, fmt.Sprintf("mine = %d", i)); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	home := map[string]string{}
	count := map[string]int{}
	for _, u := range users {
		home[u] = holder(t, nodes, u)
		count[home[u]]++
	}
	t.Logf("%d sessions set up through HAProxy in %.1f s: %v", sessions, time.Since(start).Seconds(), count)
	for _, n := range nodes {
		// A consistent ring of three nodes gives each a third, give or take: each must
		// hold between 20 and 47 of the 100.
		if count[n.name] < 20 || count[n.name] > 47 {
			t.Errorf("node %s holds %d of %d sessions, outside 20..47", n.name, count[n.name], sessions)
		}
	}

	// Sessions as resources through the router: made by POST with a session_id, then
	// read, changed and ended by /api/v1/sessions/ID, each reaching the node that holds it
	// (a call routed at random would miss two times in three).
	const resources = 12
	for i := 0; i < resources; i++ {
		id := fmt.Sprintf("fleet-res-%02d", i)
		if _, err := c.CreateSession(ctx, api.CreateSessionRequest{SessionID: id, Metadata: map[string]string{"via": "router"}}); err != nil {
			t.Fatalf("create %s through the router: %v", id, err)
		}
		if s, err := c.Session(ctx, id); err != nil || s.State != api.SessionRunning {
			t.Fatalf("GET %s through the router: %+v %v", id, s, err)
		}
		if _, err := c.UpdateSession(ctx, id, api.UpdateSessionRequest{Timeout: f64(600)}); err != nil {
			t.Fatalf("PATCH %s through the router: %v", id, err)
		}
		if r, err := call(id, "'here'"); err != nil || r.NewSession {
			t.Fatalf("execute in %s through the router: %+v %v", id, r, err)
		}
		if err := c.DeleteSession(ctx, id); err != nil {
			t.Fatalf("DELETE %s through the router: %v", id, err)
		}
	}

	// The router's own surface: the status page needs its credentials and changes nothing;
	// where sessions live is learnt from the nodes' answers, so requests without a key fill
	// no table.
	if resp, err := http.Get(rt.stats + "/"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the status page without credentials: %v %v", resp, err)
	}
	maint, _ := http.NewRequest("POST", rt.stats+"/", strings.NewReader("s=n1&b=codeboxd&action=maint"))
	maint.SetBasicAuth(statsUser, statsPassword)
	maint.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(maint); err == nil {
		resp.Body.Close()
	}
	if st := rt.status(); st["n1"] != "UP" {
		t.Fatalf("a POST to the status page put n1 in %q", st["n1"])
	}
	entries := func() int { return strings.Count(rt.admin("show table codeboxd"), ": key=") }
	before := entries()
	if before != sessions+resources {
		t.Errorf("the stick table holds %d sessions, want %d:\n%s", before, sessions+resources, rt.admin("show table codeboxd"))
	}
	for i := 0; i < 300; i++ {
		resp, err := http.Post(rt.url+fmt.Sprintf("/api/v1/execute?user_uuid=flood-%d", i), "application/json", strings.NewReader(`{"code": "1"}`))
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("tokenless request %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	if after := entries(); after != before {
		t.Fatalf("300 tokenless requests changed the stick table from %d to %d entries", before, after)
	}

	// 2. Every call of a session reaches its node: its state is there, REST, the seed's
	// body form and the websocket alike.
	each(func(i int, u string) {
		resp, err := call(u, "mine += 1000\nprint(mine)")
		if err != nil || resp.NewSession || resp.Stdout != fmt.Sprintf("%d\n", i+1000) {
			t.Errorf("%s: %+v %v", u, resp, err)
		}
	})
	for i, u := range users[:10] {
		req, _ := http.NewRequest("POST", rt.url+"/execute", strings.NewReader(fmt.Sprintf(`{"user_uuid": %q, "code": "print(mine)"}`, u)))
		req.Header.Set("X-Auth-Token", token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var r api.ExecuteResponse
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != 200 || r.NewSession || r.Stdout != fmt.Sprintf("%d\n", i+1000) {
			t.Errorf("%s by the body form: %d %+v", u, resp.StatusCode, r)
		}
	}
	ws := dialWS(t, &daemon{url: rt.url, token: token}, users[0], true)
	ws.send(map[string]any{"type": "execute", "id": "s1", "code": "print(mine)"})
	evs := ws.until("s1")
	if done := evs[len(evs)-1]; done.Status != "ok" || done.NewSession || evs[0].Text != "1000\n" {
		t.Errorf("stream through HAProxy: %+v", evs)
	}
	ws.conn.Close()
	if t.Failed() {
		t.FailNow()
	}

	// 3. A node stops, with its workers: HAProxy sees it gone, its sessions (only its)
	// start afresh elsewhere and say so, the others keep their state.
	gone := nodes[1]
	stopAt := time.Now()
	go gone.d.stop()
	detect := rt.waitStatus(func(st map[string]string) bool { return st[gone.name] != "UP" }, 30*time.Second, gone.name+" down")
	<-gone.d.done
	t.Logf("HAProxy saw %s gone %.2f s after it was told to stop (it stopped in %.2f s)", gone.name, detect.Seconds(), time.Since(stopAt).Seconds())
	moved := 0
	var mu sync.Mutex
	each(func(i int, u string) {
		resp, err := call(u, "print(mine)")
		if err != nil {
			t.Errorf("%s after %s stopped: %v", u, gone.name, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case home[u] == gone.name && resp.NewSession:
			moved++
		case home[u] == gone.name:
			t.Errorf("%s was on %s but did not start afresh: %+v", u, gone.name, resp)
		case resp.NewSession || resp.Stdout != fmt.Sprintf("%d\n", i+1000):
			t.Errorf("%s (on %s) lost its state when %s stopped: %+v", u, home[u], gone.name, resp)
		}
	})
	t.Logf("%s stopped: %d sessions moved (it held %d), %d kept their state", gone.name, moved, count[gone.name], sessions-moved)
	live := []*fleetNode{nodes[0], nodes[2]}
	for _, u := range users {
		if h := holder(t, live, u); h == "" {
			t.Errorf("%s is on no live node", u)
		} else {
			home[u] = h
		}
	}
	// Those that moved have a state again, for the next step.
	each(func(i int, u string) {
		if _, err := call(u, fmt.Sprintf("mine = %d", i+1000)); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	})

	// 4. A node joins. HAProxy reloads (its table of where sessions are is not carried
	// over without a peers section): placement is the ring's again, so the sessions in the
	// new node's share move to it, about a third, and the rest keep their state.
	added := startFleetNode(t, token, 4)
	live = append(live, added)
	rt.reload(live)
	movedTo := map[string]int{}
	kept := 0
	each(func(i int, u string) {
		resp, err := call(u, "print(mine)")
		if err != nil {
			t.Errorf("%s after %s joined: %v", u, added.name, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if resp.NewSession {
			movedTo[u] = 1
		} else if resp.Stdout == fmt.Sprintf("%d\n", i+1000) {
			kept++
		} else {
			t.Errorf("%s: neither kept nor new: %+v", u, resp)
		}
	})
	// A session that moved is on the new node now (its old worker idles where it was
	// until --idle-timeout releases it).
	for u := range movedTo {
		status, _, _ := added.d.request(t, "GET", "/api/v1/files/list?user_uuid="+u+"&path=/sandbox/", "", map[string]string{"X-Auth-Token": token})
		if status != 200 {
			t.Errorf("%s moved, but not to the new node (%d there)", u, status)
		}
	}
	t.Logf("%s joined: %d sessions moved to it, %d kept their state", added.name, len(movedTo), kept)
	for u := range movedTo {
		home[u] = added.name // its old worker idles where it was
	}
	each(func(i int, u string) {
		if movedTo[u] == 1 {
			if _, err := call(u, fmt.Sprintf("mine = %d", i+1000)); err != nil {
				t.Errorf("%s: %v", u, err)
			}
		}
	})
	if len(movedTo) < 15 || len(movedTo) > 50 {
		t.Errorf("%d of %d sessions moved to the new node, want about a third (15..50)", len(movedTo), sessions)
	}

	// 5. Draining a node: it takes no new session, its sessions keep reaching it.
	drained := live[0]
	if out := rt.admin("set server codeboxd/" + drained.name + " state drain"); strings.TrimSpace(out) != "" {
		t.Fatalf("drain: %q", out)
	}
	rt.waitStatus(func(st map[string]string) bool { return st[drained.name] == "DRAIN" }, 10*time.Second, drained.name+" draining")
	onDrained := 0
	for i, u := range users {
		if home[u] != drained.name {
			continue
		}
		onDrained++
		resp, err := call(u, "print(mine)")
		if err != nil || resp.NewSession || resp.Stdout != fmt.Sprintf("%d\n", i+1000) {
			t.Errorf("%s, on the draining %s, lost its state: %+v %v", u, drained.name, resp, err)
		}
	}
	fresh := 0
	for i := 0; i < 20; i++ {
		u := fmt.Sprintf("fleet-drain-%s-%d", randomHex(3), i)
		if _, err := call(u, "1"); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if holder(t, []*fleetNode{drained}, u) != "" {
			t.Errorf("new session %s went to the draining %s", u, drained.name)
		}
		users = append(users, u) // released at the end
		fresh++
	}
	t.Logf("%s draining: its %d sessions kept reaching it, %d new sessions went elsewhere", drained.name, onDrained, fresh)
	rt.admin("set server codeboxd/" + drained.name + " state ready")

	// 6. The router's view: each node's state, and each node's pool.
	st := rt.status()
	var names []string
	for name := range st {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Logf("HAProxy: %s %s", name, st[name])
	}
	for _, n := range live {
		s, err := api.NewClient(n.d.url, token).Status(ctx)
		if err != nil || st[n.name] != "UP" {
			t.Errorf("%s: %v, HAProxy says %s", n.name, err, st[n.name])
			continue
		}
		t.Logf("%s pool: %d busy, %d idle, %d of %d", n.name, s.BusyWorkers, s.IdleWorkers, s.TotalWorkers, s.MaxTotalWorkers)
	}
	each(func(_ int, u string) { c.Release(ctx, u) })
}
