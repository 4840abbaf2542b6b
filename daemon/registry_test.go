package daemon

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
)

// The session registry on the fake world: shapes, tenants, tokens, listing, PATCH, ends.

func as(tenant string, admin bool) context.Context {
	return api.WithCaller(context.Background(), api.Caller{Tenant: tenant, Admin: admin})
}

func kindOf(err error) api.Kind {
	var p *api.Problem
	if errors.As(err, &p) {
		return p.Kind
	}
	return -1
}

func shapedDaemon(t *testing.T) (*fakeWorld, *Daemon) {
	fw := newWorld(t)
	d := fw.daemon(Config{MaxTotalWorkers: 8, WorkerCPU: 1, WorkerRAMMB: 512, WorkerDiskMB: 100, WorkerPids: 256,
		MaxSessionCPU: 4, MaxSessionRAMMB: 4096, MaxSessionDiskMB: 2000, MaxSessionPids: 2048, EndedRetention: time.Hour})
	d.Start()
	return fw, d
}

func TestCreateSessionWithShape(t *testing.T) {
	fw, d := shapedDaemon(t)
	ctx := as("alice", false)
	s, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "s1", Limits: &api.Limits{MemoryMB: 1024, DiskMB: 300},
		Timeout: ptr(60), Metadata: map[string]string{"team": "a"}, Env: map[string]string{"B": "2", "A": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := api.Limits{CPU: 1, MemoryMB: 1024, DiskMB: 300, Pids: 256}
	if s.Limits != want || s.WorkerID == "" || s.ExpiresAt == nil || strings.Join(s.EnvNames, ",") != "A,B" ||
		!strings.HasPrefix(s.AccessToken, api.AccessTokenPrefix) || s.Tenant != "" {
		t.Fatalf("created %+v", s)
	}
	// Fitted: the limits differ from the pool's, so they were applied; the agent has the env.
	fw.mu.Lock()
	res, applied := fw.limits[s.WorkerID]
	agentEnv := fw.workers[s.WorkerID].agent.env
	fw.mu.Unlock()
	if !applied || res != (runtime.Resources{CPU: 1, MemoryMB: 1024, Pids: 256}) {
		t.Fatalf("limits applied: %+v %v", res, applied)
	}
	if agentEnv["A"] != "1" || agentEnv["B"] != "2" {
		t.Fatalf("the agent's env: %v", agentEnv)
	}
	if _, total, _ := (fakeDisks{fw}).Usage(s.WorkerID); total != 300<<20 {
		t.Fatalf("disk of %d bytes, want 300 MB", total)
	}
	// A session of default shape costs no Update.
	plain, err := d.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || !strings.HasPrefix(plain.SessionID, api.SessionIDPrefix) {
		t.Fatalf("a session without a name: %+v %v", plain, err)
	}
	fw.mu.Lock()
	_, updated := fw.limits[plain.WorkerID]
	fw.mu.Unlock()
	if updated {
		t.Fatal("a default session's worker got an Update")
	}
	// The id is taken in alice's tenant, not in bob's.
	if _, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "s1"}); kindOf(err) != api.Conflict {
		t.Fatalf("a second s1: %v", err)
	}
	if _, err := d.CreateSession(as("bob", false), api.CreateSessionRequest{SessionID: "s1"}); err != nil {
		t.Fatalf("bob's s1: %v", err)
	}
}

func TestCreateSessionRefusals(t *testing.T) {
	_, d := shapedDaemon(t)
	ctx := as("alice", false)
	inf := 1e400 / 1e300 // +Inf without a constant the compiler refuses
	for _, c := range []struct {
		req   api.CreateSessionRequest
		field string
	}{
		{api.CreateSessionRequest{SessionID: "a/b"}, "session_id"},
		{api.CreateSessionRequest{Environment: "gpu"}, "environment"},
		{api.CreateSessionRequest{Limits: &api.Limits{CPU: 8}}, "limits.cpu"},
		{api.CreateSessionRequest{Limits: &api.Limits{CPU: 0.01}}, "limits.cpu"},
		{api.CreateSessionRequest{Limits: &api.Limits{MemoryMB: -1}}, "limits.memory_mb"},
		{api.CreateSessionRequest{Limits: &api.Limits{MemoryMB: 5000}}, "limits.memory_mb"},
		{api.CreateSessionRequest{Limits: &api.Limits{DiskMB: 5000}}, "limits.disk_mb"},
		{api.CreateSessionRequest{Limits: &api.Limits{Pids: 1}}, "limits.pids"},
		{api.CreateSessionRequest{Timeout: ptr(-1)}, "timeout"},
		{api.CreateSessionRequest{Timeout: &inf}, "timeout"},
		{api.CreateSessionRequest{IdleTimeout: ptr(0)}, "idle_timeout"},
		{api.CreateSessionRequest{IdleTimeout: ptr(1e9)}, "idle_timeout"},
		{api.CreateSessionRequest{Metadata: map[string]string{"a b": "x"}}, "metadata"},
		{api.CreateSessionRequest{Metadata: map[string]string{"k": strings.Repeat("v", 513)}}, "metadata"},
		{api.CreateSessionRequest{Metadata: map[string]string{"k": "\xff"}}, "metadata"},
		{api.CreateSessionRequest{Env: map[string]string{"1A": "x"}}, "env"},
		{api.CreateSessionRequest{Env: map[string]string{"codebox_x": "x"}}, "env"},
		{api.CreateSessionRequest{Env: map[string]string{"A": "a\x00b"}}, "env"},
		{api.CreateSessionRequest{Env: map[string]string{"A": strings.Repeat("v", 33<<10)}}, "env"},
	} {
		_, err := d.CreateSession(ctx, c.req)
		var p *api.Problem
		if !errors.As(err, &p) || p.Kind != api.Invalid || p.Field != c.field {
			t.Errorf("%+v: %v, want 422 on %s", c.req, err, c.field)
		}
	}
	many := map[string]string{}
	for i := 0; i < api.MaxMetadataPairs+1; i++ {
		many[string(rune('a'+i%26))+strings.Repeat("x", i/26+1)] = "v"
	}
	if _, err := d.CreateSession(ctx, api.CreateSessionRequest{Metadata: many}); kindOf(err) != api.Invalid {
		t.Errorf("33 metadata pairs: %v", err)
	}
	// An env value is never in a refusal.
	_, err := d.CreateSession(ctx, api.CreateSessionRequest{Env: map[string]string{"OK": "secret-value", "1BAD": "x"}})
	if err == nil || strings.Contains(err.Error(), "secret-value") {
		t.Errorf("refusal: %v", err)
	}
	// A session's token creates nothing.
	tokCtx := api.WithCaller(context.Background(), api.Caller{Tenant: "alice", Session: "x"})
	if _, err := d.CreateSession(tokCtx, api.CreateSessionRequest{}); kindOf(err) != api.Forbidden {
		t.Errorf("a token creating a session: %v", err)
	}
	d.mu.Lock()
	n := len(d.sessions)
	d.mu.Unlock()
	if n != 0 {
		t.Fatalf("refused creations left %d sessions", n)
	}
}

func TestTenantsAndTokens(t *testing.T) {
	_, d := shapedDaemon(t)
	alice, bob, admin := as("alice", false), as("bob", false), as("ops", true)
	a, err := d.CreateSession(alice, api.CreateSessionRequest{SessionID: "mine", Metadata: map[string]string{"who": "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetSession(bob, "mine"); kindOf(err) != api.NotFound {
		t.Fatalf("bob reads alice's: %v", err)
	}
	if err := d.DeleteSession(bob, "mine"); kindOf(err) != api.NotFound {
		t.Fatalf("bob deletes alice's: %v", err)
	}
	if _, err := d.UpdateSession(bob, "mine", api.UpdateSessionRequest{Timeout: ptr(1)}); kindOf(err) != api.NotFound {
		t.Fatalf("bob patches alice's: %v", err)
	}
	if l, err := d.ListSessions(bob, api.SessionQuery{}); err != nil || len(l.Sessions) != 0 {
		t.Fatalf("bob's list: %+v %v", l, err)
	}
	if _, err := d.ListSessions(bob, api.SessionQuery{Tenant: "alice"}); kindOf(err) != api.Forbidden {
		t.Fatalf("bob lists alice's: %v", err)
	}
	if l, err := d.ListSessions(admin, api.SessionQuery{}); err != nil || len(l.Sessions) != 1 || l.Sessions[0].Tenant != "alice" {
		t.Fatalf("the admin's list: %+v %v", l, err)
	}
	// The token reaches its session alone, and dies with it.
	caller, ok := d.SessionToken(a.AccessToken)
	if !ok || caller != (api.Caller{Tenant: "alice", Session: "mine"}) {
		t.Fatalf("the token: %+v %v", caller, ok)
	}
	tok := api.WithCaller(context.Background(), caller)
	if _, err := d.GetSession(tok, "mine"); err != nil {
		t.Fatalf("the token reads its session: %v", err)
	}
	if _, err := d.GetSession(tok, "other"); kindOf(err) != api.NotFound {
		t.Fatalf("the token reads another: %v", err)
	}
	if _, err := d.ListSessions(tok, api.SessionQuery{}); kindOf(err) != api.Forbidden {
		t.Fatalf("the token lists: %v", err)
	}
	if _, ok := d.SessionToken(a.AccessToken + "x"); ok {
		t.Fatal("a token with a byte more works")
	}
	// An admin acting for alice ends it: evicted.
	op := api.WithCaller(context.Background(), api.Caller{Tenant: "alice", Admin: true, Operator: true})
	if err := d.DeleteSession(op, "mine"); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.SessionToken(a.AccessToken); ok {
		t.Fatal("the token outlived its session")
	}
	if s, err := d.GetSession(alice, "mine"); err != nil || s.EndedReason != api.EndEvicted {
		t.Fatalf("after the admin ended it: %+v %v", s, err)
	}
}

func TestListSessionsFiltersAndPages(t *testing.T) {
	_, d := shapedDaemon(t)
	ctx := as("alice", false)
	for i, md := range []map[string]string{{"team": "a", "run": "1"}, {"team": "a", "run": "2"}, {"team": "b"}, {"team": "a", "run": "1"}} {
		if _, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "s" + string(rune('0'+i)), Metadata: md}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // distinct creation times: the list's order
	}
	ids := func(l *api.SessionList) string {
		var out []string
		for _, s := range l.Sessions {
			out = append(out, s.SessionID)
		}
		return strings.Join(out, ",")
	}
	l, err := d.ListSessions(ctx, api.SessionQuery{Metadata: map[string]string{"team": "a", "run": "1"}})
	if err != nil || ids(l) != "s0,s3" {
		t.Fatalf("AND-ed: %s %v", ids(l), err)
	}
	var all []string
	q := api.SessionQuery{Limit: 1}
	for pages := 0; ; pages++ {
		l, err := d.ListSessions(ctx, q)
		if err != nil || pages > 5 {
			t.Fatalf("paging: %v after %d pages", err, pages)
		}
		all = append(all, ids(l))
		if l.NextPageToken == nil {
			break
		}
		q.PageToken = *l.NextPageToken
	}
	if strings.Join(all, ",") != "s0,s1,s2,s3" {
		t.Fatalf("pages: %v", all)
	}
	for _, bad := range []api.SessionQuery{{Limit: 1001}, {PageToken: "%%%"}, {State: "dead"}} {
		if _, err := d.ListSessions(ctx, bad); kindOf(err) != api.Invalid {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	d.DeleteSession(ctx, "s1")
	if l, _ := d.ListSessions(ctx, api.SessionQuery{State: "ended"}); ids(l) != "s1" || l.Sessions[0].EndedReason != api.EndReleased {
		t.Fatalf("ended: %+v", l)
	}
	if l, _ := d.ListSessions(ctx, api.SessionQuery{State: "all"}); len(l.Sessions) != 4 {
		t.Fatalf("all: %s", ids(l))
	}
}

func TestUpdateSession(t *testing.T) {
	fw, d := shapedDaemon(t)
	ctx := as("alice", false)
	s, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "p", Metadata: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	up, err := d.UpdateSession(ctx, "p", api.UpdateSessionRequest{Limits: &api.Limits{CPU: 2, MemoryMB: 1024},
		Metadata: &map[string]string{"b": "2"}, Timeout: ptr(30), IdleTimeout: ptr(10)})
	if err != nil || up.Limits.CPU != 2 || up.Limits.MemoryMB != 1024 || up.Metadata["a"] != "" || up.Metadata["b"] != "2" ||
		up.ExpiresAt == nil || time.Until(*up.ExpiresAt) > 31*time.Second || up.IdleTimeout != 10 {
		t.Fatalf("PATCH: %+v %v", up, err)
	}
	fw.mu.Lock()
	if fw.limits[s.WorkerID].MemoryMB != 1024 {
		t.Errorf("limits not applied: %+v", fw.limits[s.WorkerID])
	}
	// Memory below what the session uses: 409, and nothing changes.
	fw.usage[s.WorkerID] = runtime.Usage{MemoryBytes: 700 << 20}
	fw.mu.Unlock()
	_, err = d.UpdateSession(ctx, "p", api.UpdateSessionRequest{Limits: &api.Limits{MemoryMB: 600}, Metadata: &map[string]string{"c": "3"}})
	var p *api.Problem
	if !errors.As(err, &p) || p.Kind != api.Conflict || p.Field != "limits.memory_mb" {
		t.Fatalf("memory below use: %v", err)
	}
	if g, _ := d.GetSession(ctx, "p"); g.Limits.MemoryMB != 1024 || g.Metadata["c"] != "" {
		t.Fatalf("a refused PATCH changed the session: %+v", g)
	}
	// The disk: never smaller; larger where the host allows.
	if _, err := d.UpdateSession(ctx, "p", api.UpdateSessionRequest{Limits: &api.Limits{DiskMB: 50}}); kindOf(err) != api.Invalid {
		t.Fatalf("a smaller disk: %v", err)
	}
	fw.mu.Lock()
	fw.cannotGrow = true
	fw.mu.Unlock()
	if _, err := d.UpdateSession(ctx, "p", api.UpdateSessionRequest{Limits: &api.Limits{DiskMB: 200}}); kindOf(err) != api.Conflict {
		t.Fatalf("a larger disk on a host that cannot grow it: %v", err)
	}
	fw.mu.Lock()
	fw.cannotGrow = false
	fw.mu.Unlock()
	if up, err := d.UpdateSession(ctx, "p", api.UpdateSessionRequest{Limits: &api.Limits{DiskMB: 200}}); err != nil || up.Limits.DiskMB != 200 {
		t.Fatalf("a larger disk: %+v %v", up, err)
	}
	// The record follows: a restarted codeboxd would find the new shape.
	rec, _ := d.assigned.get(s.WorkerID)
	if rec.Shape == nil || rec.Shape.Limits.DiskMB != 200 || rec.Shape.Metadata["b"] != "2" {
		t.Fatalf("record: %+v", rec.Shape)
	}
}

func TestSessionLifetimes(t *testing.T) {
	fw, d := shapedDaemon(t)
	ctx := as("alice", false)
	ended := func(id, reason string) {
		t.Helper()
		waitFor(t, id+" to end", func() bool {
			s, err := d.GetSession(ctx, id)
			return err == nil && s.State == api.SessionEnded
		})
		if s, _ := d.GetSession(ctx, id); s.EndedReason != reason {
			t.Fatalf("%s ended %s, want %s", id, s.EndedReason, reason)
		}
	}
	// The lifetime is hard: it ends a session in a call.
	if _, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "ttl", Timeout: ptr(1)}); err != nil {
		t.Fatal(err)
	}
	callDone := make(chan error, 1)
	go func() {
		_, err := api.Collect(ctx, d, "ttl", api.ExecuteRequest{Code: "stops-on-sigint"})
		callDone <- err
	}()
	ended("ttl", api.EndTTLExpired)
	if err := <-callDone; kindOf(err) != api.Lost {
		t.Fatalf("the call the lifetime cut: %v", err)
	}
	// Idle: never while a call runs.
	s, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: "idle", IdleTimeout: ptr(1)})
	if err != nil {
		t.Fatal(err)
	}
	ag := fw.worker(s.WorkerID).agent
	ag.mu.Lock()
	ag.delay = 1500 * time.Millisecond
	ag.mu.Unlock()
	if _, err := api.Collect(ctx, d, "idle", api.ExecuteRequest{Code: "ok"}); err != nil {
		t.Fatalf("a call longer than the idle timeout: %v", err)
	}
	if g, _ := d.GetSession(ctx, "idle"); g.State != api.SessionRunning {
		t.Fatalf("ended during its call: %+v", g)
	}
	ended("idle", api.EndIdleTimeout)
	// The next call on an ended id says why; create=false refuses, saying why.
	_, err = api.Collect(api.WithoutCreate(ctx), d, "idle", api.ExecuteRequest{Code: "ok"})
	var p *api.Problem
	if !errors.As(err, &p) || p.Kind != api.NotFound || p.Ended == nil || p.Ended.EndedReason != api.EndIdleTimeout {
		t.Fatalf("create=false: %v", err)
	}
	r, err := api.Collect(ctx, d, "idle", api.ExecuteRequest{Code: "ok"})
	if err != nil || !r.NewSession || r.PreviousSession == nil || r.PreviousSession.EndedReason != api.EndIdleTimeout {
		t.Fatalf("the next call: %+v %v", r, err)
	}
	if r, _ := api.Collect(ctx, d, "idle", api.ExecuteRequest{Code: "ok"}); r.PreviousSession != nil {
		t.Fatalf("the second call of the new session says previous_session: %+v", r)
	}
}

// Ended sessions are bounded in count and forgotten after the retention; what is kept
// outlives a restart.
func TestEndedStore(t *testing.T) {
	dir := t.TempDir()
	log := newWorld(t).daemon(Config{}).log
	s, err := loadEnded(dir, time.Hour, log)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.put(endedSession{Tenant: "t", ID: "old", Reason: api.EndReleased, At: now.Add(-2 * time.Hour)})
	for i := 0; i < maxEnded+5; i++ {
		tenant := "t" + strconv.Itoa(i%10)
		s.put(endedSession{Tenant: tenant, ID: "s" + strconv.Itoa(i), Reason: api.EndIdleTimeout, At: now})
	}
	if _, ok := s.get(sessionKey{"t", "old"}); ok {
		t.Fatal("an end past the retention is kept")
	}
	if n := len(s.all(func(endedSession) bool { return true })); n != maxEnded {
		t.Fatalf("%d ends kept, want %d", n, maxEnded)
	}
	// One tenant's churn keeps at most its share, never the others' ends.
	for i := 0; i < maxEndedPerTenant+100; i++ {
		s.put(endedSession{Tenant: "churner", ID: "c" + strconv.Itoa(i), Reason: api.EndReleased, At: now})
	}
	byTenant := map[string]int{}
	for _, e := range s.all(func(endedSession) bool { return true }) {
		byTenant[e.Tenant]++
	}
	if byTenant["churner"] != maxEndedPerTenant || byTenant["t3"] < 700 {
		t.Fatalf("ends by tenant: %v", byTenant)
	}
	s.put(endedSession{Tenant: "t1", ID: "last", Reason: api.EndTTLExpired, At: now})
	s.flush()
	again, err := loadEnded(dir, time.Hour, log)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := again.get(sessionKey{"t1", "last"}); !ok || e.Reason != api.EndTTLExpired {
		t.Fatalf("after a reload: %+v %v", e, ok)
	}
}

func ptr(v float64) *float64 { return &v }

// A key runs at most --max-sessions-per-tenant sessions; the others' are not counted.
func TestSessionsPerTenant(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{MaxTotalWorkers: 6, WorkerCPU: 1, WorkerRAMMB: 512, WorkerDiskMB: 100, WorkerPids: 256,
		MaxSessionCPU: 4, MaxSessionRAMMB: 4096, MaxSessionDiskMB: 2000, MaxSessionPids: 2048, MaxSessionsPerTenant: 2})
	d.Start()
	for i := 0; i < 2; i++ {
		if _, err := d.CreateSession(as("greedy", false), api.CreateSessionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := d.CreateSession(as("greedy", false), api.CreateSessionRequest{})
	var p *api.Problem
	if !errors.As(err, &p) || p.Kind != api.Busy || !strings.Contains(p.Detail, "--max-sessions-per-tenant") {
		t.Fatalf("a third session of one key: %v", err)
	}
	if _, err := api.Collect(as("greedy", false), d, "implicit", api.ExecuteRequest{Code: "ok"}); kindOf(err) != api.Busy {
		t.Fatalf("a third, implicit: %v", err)
	}
	if _, err := d.CreateSession(as("other", false), api.CreateSessionRequest{}); err != nil {
		t.Fatalf("another key's: %v", err)
	}
}

// A session's access token reaches its session while it lives, never a new one of its id;
// the sweep copes with a session still being made (no worker yet, a deadline past).
func TestTokenNeverCreates(t *testing.T) {
	_, d := shapedDaemon(t)
	s, err := d.CreateSession(as("alice", false), api.CreateSessionRequest{SessionID: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := d.SessionToken(s.AccessToken)
	tok := api.WithCaller(context.Background(), c)
	if _, err := api.Collect(tok, d, "tok", api.ExecuteRequest{Code: "ok"}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteSession(tok, "tok"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Collect(tok, d, "tok", api.ExecuteRequest{Code: "ok"}); kindOf(err) != api.NotFound {
		t.Fatalf("the token after its session ended: %v, want 404", err)
	}
	// A session registered, in the middle of being made, with a deadline already past.
	d.mu.Lock()
	k := sessionKey{"alice", "making"}
	made := newSession(k, shape{idleTimeout: time.Nanosecond, limits: d.defaultLimits()})
	made.lastUsed.Store(0)
	made.take(context.Background(), context.Background()) // its creation holds the turn
	d.sessions[k] = made
	d.armExpiryLocked(made)
	d.mu.Unlock()
	d.sweepExpired() // before the fix: a nil timer's Reset, under Daemon.mu
	d.mu.Lock()
	_, still := d.sessions[k]
	d.mu.Unlock()
	if !still {
		t.Fatal("a session in the making was ended by the sweep")
	}
}
