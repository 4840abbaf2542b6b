package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/gorilla/websocket"
)

// Sessions as resources (docs/API.md#sessions), with the real daemon: a shape of their own,
// limits the kernel enforces, a lifetime, why they ended, survival across restarts.

// cgroupValue reads a worker's cgroup v1 file (the tests' namespace).
func cgroupValue(t *testing.T, controller, worker, file string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, namespace, worker, file))
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

func createSession(t *testing.T, d *daemon, req api.CreateSessionRequest) *api.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := d.client.CreateSession(ctx, req)
	if err != nil {
		t.Fatalf("create session %q: %v", req.SessionID, err)
	}
	return s
}

func f64(v float64) *float64 { return &v }

// TestSessionShape: a session made with its own limits, env and metadata gets them on a
// worker taken from the pool: the cgroups say so, the kernel enforces them, df shows the
// disk, and the session's code sees its env.
func TestSessionShape(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "2", "--max-session-ram-mb", "2048")
	ctx := context.Background()
	waitStatus(t, d, "pool", time.Minute, func(s api.Status) bool { return s.IdleWorkers == 2 })

	start := time.Now()
	s := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-shaped",
		Limits:  &api.Limits{CPU: 0.5, MemoryMB: 256, DiskMB: 200, Pids: 64},
		Timeout: f64(600), IdleTimeout: f64(300),
		Metadata: map[string]string{"team": "research", "run": "42"},
		Env:      map[string]string{"API_BASE": "https://api.example", "SECRET_TOKEN": "do-not-show-me"}})
	t.Logf("create with limits from a warm pool: %s", time.Since(start).Round(time.Millisecond))
	if s.State != api.SessionRunning || s.WorkerID == "" || s.Limits != (api.Limits{CPU: 0.5, MemoryMB: 256, DiskMB: 200, Pids: 64}) ||
		s.Metadata["team"] != "research" || strings.Join(s.EnvNames, ",") != "API_BASE,SECRET_TOKEN" ||
		s.ExpiresAt == nil || s.IdleTimeout != 300 || !strings.HasPrefix(s.AccessToken, api.AccessTokenPrefix) {
		t.Fatalf("created: %+v", s)
	}
	created, _ := json.Marshal(s)
	if strings.Contains(string(created), "do-not-show-me") || strings.Contains(d.logs.String(), "do-not-show-me") {
		t.Fatal("an env value was returned or logged")
	}

	// The cgroups, from the host.
	if q := cgroupValue(t, "cpu", s.WorkerID, "cpu.cfs_quota_us"); q != 50_000 {
		t.Errorf("cpu quota %d, want 50000 (0.5 of a 100 ms period)", q)
	}
	if m := cgroupValue(t, "memory", s.WorkerID, "memory.limit_in_bytes"); m != 256<<20 {
		t.Errorf("memory limit %d, want 256 MiB", m)
	}
	if p := cgroupValue(t, "pids", s.WorkerID, "pids.max"); p != 64 {
		t.Errorf("pids max %d, want 64", p)
	}

	// What the session sees: its env (before its first code), its disk's size.
	r := d.exec(t, "e2e-shaped", `import os, shutil
print(os.environ.get("API_BASE"), os.getcwd(), round(shutil.disk_usage("/sandbox").total / 2**20))`)
	f := strings.Fields(r.Stdout)
	if len(f) != 3 || f[0] != "https://api.example" || f[1] != "/sandbox" {
		t.Fatalf("in the session: %q", r.Stdout)
	}
	if mb, _ := strconv.Atoi(f[2]); mb < 170 || mb > 200 {
		t.Fatalf("df /sandbox shows %s MB, want the 200 asked for (less ext4's own)", f[2])
	}
	if r.NewSession { // POST made it; this call did not
		t.Errorf("the first call of a session made by POST says new_session")
	}

	// Memory: 350 MB does not fit in 256 MB (the kernel's OOM killer ends the process), but
	// fits in a default session's (512 MB in these tests).
	grab := "def grab():\n    b = bytearray(350 << 20)\n    for i in range(0, len(b), 4096): b[i] = 1\ngrab()\nprint('held')"
	_, err := d.client.Execute(ctx, "e2e-shaped", grab, 0)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 503 || !flagIs(afterOf(ae).KernelRestarted, true) {
		t.Fatalf("350 MB in a 256 MB session: %v, want 503 with the kernel restarted", err)
	}
	if r := d.exec(t, "e2e-default-mem", grab); r.Stdout != "held\n" {
		t.Fatalf("350 MB in a default session: %+v", r)
	}
	// The restarted kernel has the session's limits and env again.
	if m := cgroupValue(t, "memory", s.WorkerID, "memory.limit_in_bytes"); m != 256<<20 {
		t.Errorf("after the kernel restart the memory limit is %d, want 256 MiB", m)
	}
	if r := d.exec(t, "e2e-shaped", "import os; os.environ['API_BASE']"); r.ResultText == nil || *r.ResultText != "'https://api.example'" {
		t.Errorf("after the kernel restart: %+v", r)
	}

	// CPU: 0.5 cores is a hard cap on the CPU time the session gets in a wall time; a
	// 1-core session gets more.
	spin := "import time\nt0, c0 = time.time(), time.process_time()\nwhile time.time() - t0 < 2: pass\nprint((time.process_time() - c0) / (time.time() - t0))"
	half, _ := strconv.ParseFloat(strings.TrimSpace(d.exec(t, "e2e-shaped", spin).Stdout), 64)
	one, _ := strconv.ParseFloat(strings.TrimSpace(d.exec(t, "e2e-default-mem", spin).Stdout), 64)
	t.Logf("CPU time over wall time: 0.5-core session %.2f, 1-core session %.2f", half, one)
	if half > 0.6 || half < 0.2 || one <= half {
		t.Errorf("0.5-core session used %.2f of the wall time, 1-core %.2f: want at most about 0.5, and less than the other", half, one)
	}

	// Usage.
	got, err := d.client.Session(ctx, "e2e-shaped")
	if err != nil || got.Usage == nil || got.Usage.CPUSeconds < 0.5 || got.Usage.MemoryPeakBytes == 0 ||
		got.Usage.DiskTotalBytes < 150<<20 || got.Usage.Processes < 1 || got.AccessToken != "" {
		t.Fatalf("GET with usage: %+v %v", got, err)
	}

	// PATCH: limits up and down, live; a refusal changes nothing.
	start = time.Now()
	up, err := d.client.UpdateSession(ctx, "e2e-shaped", api.UpdateSessionRequest{Limits: &api.Limits{MemoryMB: 512, CPU: 1, Pids: 128},
		Metadata: &map[string]string{"team": "ops"}})
	t.Logf("PATCH of the limits: %s", time.Since(start).Round(time.Millisecond))
	if err != nil || up.Limits.MemoryMB != 512 || up.Metadata["team"] != "ops" || up.Metadata["run"] != "" {
		t.Fatalf("PATCH up: %+v %v", up, err)
	}
	if m := cgroupValue(t, "memory", s.WorkerID, "memory.limit_in_bytes"); m != 512<<20 {
		t.Errorf("after PATCH the memory limit is %d, want 512 MiB", m)
	}
	if q := cgroupValue(t, "cpu", s.WorkerID, "cpu.cfs_quota_us"); q != 100_000 {
		t.Errorf("after PATCH the cpu quota is %d, want 100000", q)
	}
	if r := d.exec(t, "e2e-shaped", grab); r.Stdout != "held\n" {
		t.Fatalf("350 MB after the memory went up to 512: %+v", r)
	}
	d.exec(t, "e2e-shaped", "keep = bytearray(300 << 20)\nfor i in range(0, len(keep), 4096): keep[i] = 1")
	code, _, body := d.request(t, "PATCH", "/api/v1/sessions/e2e-shaped", `{"limits": {"memory_mb": 200}}`,
		map[string]string{"X-Auth-Token": d.token})
	if code != 409 || !strings.Contains(body, "limits.memory_mb") {
		t.Fatalf("memory below what the session uses: %d %s, want 409", code, body)
	}
	if m := cgroupValue(t, "memory", s.WorkerID, "memory.limit_in_bytes"); m != 512<<20 {
		t.Errorf("a refused PATCH changed the memory limit to %d", m)
	}
	if r := d.exec(t, "e2e-shaped", "len(keep)"); r.ResultText == nil || *r.ResultText != strconv.Itoa(300<<20) {
		t.Fatalf("a refused PATCH lost the session's state: %+v", r)
	}
	code, _, body = d.request(t, "PATCH", "/api/v1/sessions/e2e-shaped", `{"limits": {"disk_mb": 100}}`, map[string]string{"X-Auth-Token": d.token})
	if code != 422 || !strings.Contains(body, "cannot shrink") {
		t.Fatalf("a smaller disk: %d %s, want 422", code, body)
	}
	// Growing needs CAP_SYS_RESOURCE, which this host's root may lack: then a 409 that
	// says so, and the disk as it was.
	code, _, body = d.request(t, "PATCH", "/api/v1/sessions/e2e-shaped", `{"limits": {"disk_mb": 300}}`, map[string]string{"X-Auth-Token": d.token})
	size := strings.TrimSpace(d.exec(t, "e2e-shaped", "import shutil; print(round(shutil.disk_usage('/sandbox').total / 2**20))").Stdout)
	mb, _ := strconv.Atoi(size)
	switch code {
	case 200:
		if mb < 260 {
			t.Fatalf("the disk grew to 300 MB, df says %d", mb)
		}
	case 409:
		if !strings.Contains(body, "CAP_SYS_RESOURCE") || mb > 200 {
			t.Fatalf("disk growth refused: %s; df %d", body, mb)
		}
		t.Logf("this host does not let root grow a mounted disk: %s", body)
	default:
		t.Fatalf("growing the disk: %d %s", code, body)
	}

	// Listing by metadata, a page at a time.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-other", Metadata: map[string]string{"team": "ops", "run": "7"}})
	list, err := d.client.Sessions(ctx, api.SessionQuery{Metadata: map[string]string{"team": "ops"}, Limit: 1})
	if err != nil || len(list.Sessions) != 1 || list.Sessions[0].SessionID != "e2e-shaped" || list.NextPageToken == nil {
		t.Fatalf("page 1: %+v %v", list, err)
	}
	list, err = d.client.Sessions(ctx, api.SessionQuery{Metadata: map[string]string{"team": "ops"}, Limit: 1, PageToken: *list.NextPageToken})
	if err != nil || len(list.Sessions) != 1 || list.Sessions[0].SessionID != "e2e-other" || list.NextPageToken != nil {
		t.Fatalf("page 2: %+v %v", list, err)
	}
	code, _, body = d.request(t, "GET", "/api/v1/sessions?metadata=team:ops,run:7", "", map[string]string{"X-Auth-Token": d.token})
	if code != 200 || strings.Count(body, `"session_id"`) != 1 || !strings.Contains(body, "e2e-other") {
		t.Fatalf("AND-ed metadata: %d %s", code, body)
	}

	// A running id is a 409; bad input a 422 naming the field.
	h := map[string]string{"X-Auth-Token": d.token}
	for _, c := range []struct{ body, field string }{
		{`{"session_id": "e2e-shaped"}`, "session_id"},
		{`{"limit": {"cpu": 1}}`, "limit"},
		{`{"limits": {"memory_mb": 99999}}`, "limits.memory_mb"},
		{`{"limits": {"cpu": -1}}`, "limits.cpu"},
		{`{"limits": {"pids": 2}}`, "limits.pids"},
		{`{"limits": {"disk_mb": 1e9}}`, "limits.disk_mb"},
		{`{"timeout": -5}`, "timeout"},
		{`{"timeout": 1e999}`, "timeout"},
		{`{"idle_timeout": 0}`, "idle_timeout"},
		{`{"env": {"1BAD": "x"}}`, "env"},
		{`{"env": {"CODEBOX_AGENT_TOKEN": "x"}}`, "env"},
		{`{"metadata": {"k": "` + strings.Repeat("v", 600) + `"}}`, "metadata"},
		{`{"environment": "gpu"}`, "environment"},
	} {
		code, _, body := d.request(t, "POST", "/api/v1/sessions", c.body, h)
		if (code != 422 && code != 409) || !strings.Contains(body, `"field":"`+c.field+`"`) {
			t.Errorf("%s: %d %s, want a 4xx naming %s", c.body, code, body, c.field)
		}
	}

	// Why it ended: DELETE, then GET says so, the next implicit call says so, and
	// create=false refuses with the reason.
	if err := d.client.DeleteSession(ctx, "e2e-shaped"); err != nil {
		t.Fatal(err)
	}
	ended, err := d.client.Session(ctx, "e2e-shaped")
	if err != nil || ended.State != api.SessionEnded || ended.EndedReason != api.EndReleased || ended.EndedAt == nil {
		t.Fatalf("after DELETE: %+v %v", ended, err)
	}
	code, _, body = d.request(t, "POST", "/api/v1/execute?user_uuid=e2e-shaped&create=false", `{"code": "1"}`, h)
	if code != 404 || !strings.Contains(body, `"ended_reason":"released"`) {
		t.Fatalf("create=false after the end: %d %s", code, body)
	}
	r = d.exec(t, "e2e-shaped", "1")
	if !r.NewSession || r.PreviousSession == nil || r.PreviousSession.EndedReason != api.EndReleased {
		t.Fatalf("the next implicit call: %+v", r)
	}
	if s.AccessToken != "" {
		code, _, _ := d.request(t, "GET", "/api/v1/sessions/e2e-shaped", "", map[string]string{"X-Auth-Token": s.AccessToken})
		if code != 401 {
			t.Fatalf("the ended session's access token: %d, want 401", code)
		}
	}
}

// TestSessionEnds: each way a session ends is told by GET and by the next call.
func TestSessionEnds(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "1", "--destroy-on-stop=false", "--recycle-interval", "1s")
	ctx := context.Background()
	ended := func(id, reason string, within time.Duration) {
		t.Helper()
		var s *api.Session
		eventually(t, within, id+" ending "+reason, func() bool {
			var err error
			s, err = d.client.Session(ctx, id)
			return err == nil && s.State == api.SessionEnded
		})
		if s.EndedReason != reason {
			t.Fatalf("%s ended %s, want %s", id, s.EndedReason, reason)
		}
	}

	// Its lifetime runs out: ended, a call in flight included.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-ttl", Timeout: f64(2)})
	done := make(chan error, 1)
	go func() {
		_, err := d.client.Execute(ctx, "e2e-ttl", "import time; time.sleep(30)", 0)
		done <- err
	}()
	ended("e2e-ttl", api.EndTTLExpired, 10*time.Second)
	if err := <-done; statusOf(err) != 503 {
		t.Fatalf("the call in flight when the lifetime ran out: %v, want 503", err)
	}

	// Idle: never during a call; after its idle timeout once the call ended.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-idle", IdleTimeout: f64(1.5)})
	r := d.exec(t, "e2e-idle", "import time; time.sleep(3); 'still here'")
	if r.ResultText == nil || *r.ResultText != "'still here'" {
		t.Fatalf("a call longer than the idle timeout: %+v", r)
	}
	ended("e2e-idle", api.EndIdleTimeout, 10*time.Second)

	// Its worker is lost: its kernel ignored the interrupt of a call out of time.
	_, err := d.client.Execute(ctx, "e2e-lost", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)", time.Second)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, false) {
		t.Fatalf("a call whose kernel ignores the interrupt: %v", err)
	}
	ended("e2e-lost", api.EndWorkerLost, 10*time.Second)
	if r := d.exec(t, "e2e-lost", "1"); r.PreviousSession == nil || r.PreviousSession.EndedReason != api.EndWorkerLost {
		t.Fatalf("the next call: %+v", r)
	}

	// codeboxd restarts: a session keeps its shape (and its token); one whose worker is gone
	// ended host_restart.
	kept := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-kept", Limits: &api.Limits{MemoryMB: 300},
		Timeout: f64(900), Metadata: map[string]string{"k": "v"}, Env: map[string]string{"KEPT": "yes"}})
	d.exec(t, "e2e-kept", "x = 1")
	goneWorker := d.exec(t, "e2e-gone", "1").WorkerID
	d.stop()
	removeContainer(t, goneWorker)
	d2 := startDaemon(t, "--min-idle-workers", "1", "--state-dir", d.stateDir)
	got, err := d2.client.Session(ctx, "e2e-kept")
	if err != nil || got.State != api.SessionRunning || got.Limits.MemoryMB != 300 || got.Metadata["k"] != "v" ||
		got.ExpiresAt == nil || !got.ExpiresAt.Equal(*kept.ExpiresAt) || strings.Join(got.EnvNames, ",") != "KEPT" {
		t.Fatalf("after the restart: %+v %v (was %+v)", got, err, kept)
	}
	if r := d2.exec(t, "e2e-kept", "import os; (x, os.environ['KEPT'])"); r.ResultText == nil || *r.ResultText != "(1, 'yes')" || r.NewSession {
		t.Fatalf("the session after the restart: %+v", r)
	}
	code, _, body := d2.request(t, "GET", "/api/v1/sessions/e2e-kept", "", map[string]string{"X-Auth-Token": kept.AccessToken})
	if code != 200 || !strings.Contains(body, "e2e-kept") {
		t.Fatalf("the access token after the restart: %d %s", code, body)
	}
	gone, err := d2.client.Session(ctx, "e2e-gone")
	if err != nil || gone.EndedReason != api.EndHostRestart {
		t.Fatalf("a session whose worker was gone at start: %+v %v", gone, err)
	}
	// Remembered ends outlive the restart too.
	if s, err := d2.client.Session(ctx, "e2e-ttl"); err != nil || s.EndedReason != api.EndTTLExpired {
		t.Fatalf("an end remembered across the restart: %+v %v", s, err)
	}

	// Stopped with --destroy-on-stop: what is remembered is why.
	d2.stop()
	d3 := startDaemon(t, "--state-dir", d.stateDir)
	d3.exec(t, "e2e-stop", "1")
	d3.stop()
	d4 := startDaemon(t, "--state-dir", d.stateDir)
	if s, err := d4.client.Session(ctx, "e2e-stop"); err != nil || s.EndedReason != api.EndDestroyedOnStop {
		t.Fatalf("after --destroy-on-stop: %+v %v", s, err)
	}
	if s, err := d4.client.Session(ctx, "e2e-kept"); err != nil || s.EndedReason != api.EndDestroyedOnStop {
		t.Fatalf("the kept session after --destroy-on-stop: %+v %v", s, err)
	}
	if _, err := d4.client.Session(ctx, "e2e-never"); statusOf(err) != 404 {
		t.Fatalf("an id never used: %v", err)
	}
}

// removeContainer deletes a worker's container behind codeboxd's back, as a host restart
// (or an operator) would.
func removeContainer(t *testing.T, id string) {
	t.Helper()
	killTask(t, id)
	c := loadContainer(t, id)
	ctx := context.Background()
	eventually(t, 10*time.Second, "the task to stop", func() bool {
		task, err := c.Task(ctx, nil)
		if err != nil {
			return true
		}
		_, err = task.Delete(ctx)
		return err == nil
	})
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTenants: keys of --api-keys are tenants; a session's access token reaches it alone.
func TestTenants(t *testing.T) {
	keyA, keyB, keyOps := randomHex(20), randomHex(20), randomHex(20)
	keysFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keysFile, []byte(fmt.Sprintf("alice %s\nbob %s\nops %s admin\n", keyA, keyB, keyOps)), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startDaemon(t, "--api-keys", keysFile, "--metrics-listen", metrics)
	ctx := context.Background()
	as := func(key string) *api.Client { return api.NewClient(d.url, key) }
	alice, bob, ops := as(keyA), as(keyB), as(keyOps)

	// Ids are per tenant: two tenants' "same" are two sessions.
	ra, err := alice.Execute(ctx, "same", "owner = 'alice'", 0)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := bob.Execute(ctx, "same", "owner", 0)
	if err != nil || rb.Error == nil || rb.Error.Ename != "NameError" || rb.WorkerID == ra.WorkerID {
		t.Fatalf("bob's 'same': %+v %v, want his own session", rb, err)
	}
	onlyA, err := alice.CreateSession(ctx, api.CreateSessionRequest{SessionID: "only-alice", Metadata: map[string]string{"owner": "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	// bob never sees, lists, reads or ends alice's.
	if _, err := bob.Session(ctx, "only-alice"); statusOf(err) != 404 {
		t.Fatalf("bob reads alice's session: %v", err)
	}
	if err := bob.DeleteSession(ctx, "only-alice"); statusOf(err) != 404 {
		t.Fatalf("bob deletes alice's session: %v", err)
	}
	if _, err := bob.UpdateSession(ctx, "only-alice", api.UpdateSessionRequest{Timeout: f64(1)}); statusOf(err) != 404 {
		t.Fatalf("bob patches alice's session: %v", err)
	}
	if l, err := bob.Sessions(ctx, api.SessionQuery{}); err != nil || len(l.Sessions) != 1 || l.Sessions[0].SessionID != "same" || l.Sessions[0].Tenant != "" {
		t.Fatalf("bob's list: %+v %v", l, err)
	}
	if _, err := bob.Sessions(ctx, api.SessionQuery{Tenant: "alice"}); statusOf(err) != 403 {
		t.Fatalf("bob lists alice's: %v", err)
	}
	if _, err := bob.Status(ctx); statusOf(err) != 403 {
		t.Fatalf("bob reads the pool: %v", err)
	}
	// The admin sees every tenant's, and ends one in its name: evicted.
	l, err := ops.Sessions(ctx, api.SessionQuery{})
	if err != nil || len(l.Sessions) != 3 {
		t.Fatalf("the admin's list: %+v %v", l, err)
	}
	for _, s := range l.Sessions {
		if s.Tenant == "" {
			t.Fatalf("the admin's list lacks tenants: %+v", s)
		}
	}
	if _, err := ops.Status(ctx); err != nil {
		t.Fatalf("the admin reads the pool: %v", err)
	}
	code, _, body := d.request(t, "DELETE", "/api/v1/sessions/same?tenant=bob", "", map[string]string{"X-Auth-Token": keyOps})
	if code != 204 {
		t.Fatalf("the admin ends bob's: %d %s", code, body)
	}
	if s, err := bob.Session(ctx, "same"); err != nil || s.EndedReason != api.EndEvicted {
		t.Fatalf("bob's after the admin ended it: %+v %v", s, err)
	}
	if s, err := alice.Session(ctx, "same"); err != nil || s.State != api.SessionRunning {
		t.Fatalf("alice's 'same' after bob's was evicted: %+v %v", s, err)
	}

	// Failed authentications are counted.
	for i := 0; i < 3; i++ {
		as("wrong-" + randomHex(20)).Status(ctx)
	}
	resp, err := d.httpClient().Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var mb strings.Builder
	buf := make([]byte, 1<<16)
	for {
		n, err := resp.Body.Read(buf)
		mb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	if !strings.Contains(mb.String(), `codebox_auth_failures_total{reason="invalid"} 3`) {
		t.Fatalf("failed authentications not counted:\n%s", grepLines(mb.String(), "auth_failures"))
	}

	// A session's access token reaches it alone.
	tok := as(onlyA.AccessToken)
	if r, err := tok.Execute(ctx, "only-alice", "6 * 7", 0); err != nil || r.ResultText == nil || *r.ResultText != "42" {
		t.Fatalf("the token in its session: %+v %v", r, err)
	}
	if _, err := tok.Execute(ctx, "same", "1", 0); statusOf(err) != 404 {
		t.Fatalf("the token in another session: %v", err)
	}
	if _, err := tok.Sessions(ctx, api.SessionQuery{}); statusOf(err) != 403 {
		t.Fatalf("the token lists sessions: %v", err)
	}
	if _, err := tok.CreateSession(ctx, api.CreateSessionRequest{}); statusOf(err) != 403 {
		t.Fatalf("the token creates a session: %v", err)
	}
	// A websocket opened with the token stops working when the session ends.
	ws, _, err := websocket.DefaultDialer.Dial(strings.Replace(d.url, "http", "ws", 1)+"/api/v1/stream?user_uuid=only-alice",
		http.Header{"X-Auth-Token": {onlyA.AccessToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := tok.DeleteSession(ctx, "only-alice"); err != nil {
		t.Fatalf("the token ends its session: %v", err)
	}
	if _, err := tok.Session(ctx, "only-alice"); statusOf(err) != 401 {
		t.Fatalf("the token after its session ended: %v, want 401", err)
	}
	ws.WriteJSON(map[string]any{"type": "execute", "id": "after", "code": "1"})
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			if ce.Code != websocket.ClosePolicyViolation {
				t.Fatalf("the token's socket closed with %v", ce)
			}
			break
		}
		if err != nil {
			t.Fatalf("the token's socket after its session ended: %v, want a close (1008)", err)
		}
	}

	// SIGHUP rereads the keys: carol comes, alice goes; a broken file changes nothing.
	keyC := randomHex(20)
	os.WriteFile(keysFile, []byte(fmt.Sprintf("carol %s\nbob %s\nops %s admin\n", keyC, keyB, keyOps)), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "carol's key to work", func() bool {
		_, err := as(keyC).Sessions(ctx, api.SessionQuery{})
		return err == nil
	})
	if _, err := alice.Sessions(ctx, api.SessionQuery{}); statusOf(err) != 401 {
		t.Fatalf("alice's key after it left the file: %v", err)
	}
	os.WriteFile(keysFile, []byte("carol short\n"), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the refusal in the log", func() bool {
		return strings.Contains(d.logs.String(), "API keys not reloaded")
	})
	if _, err := as(keyC).Sessions(ctx, api.SessionQuery{}); err != nil {
		t.Fatalf("a broken file changed the keys: %v", err)
	}
}

// A weak key refuses the whole file, at start, naming the line and never the key.
func TestWeakKeysRefused(t *testing.T) {
	weak := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(weak, []byte("alice "+randomHex(20)+"\nbob changeme-please\n"), 0o600)
	out, err := exec.Command(env.bin, "--api-keys", weak, "--state-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), ":2: the key of \"bob\" refused") || strings.Contains(string(out), "changeme-please") {
		t.Fatalf("a keys file with a weak key: %v\n%s", err, out)
	}
	os.Chmod(weak, 0o644)
	os.WriteFile(weak, []byte("alice "+randomHex(20)+"\n"), 0o644)
	out, err = exec.Command(env.bin, "--api-keys", weak, "--state-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "chmod 0600") {
		t.Fatalf("a keys file others can read: %v\n%s", err, out)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
