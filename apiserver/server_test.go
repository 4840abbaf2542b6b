package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/gorilla/websocket"
)

type fakeBackend struct {
	lastUser string
	lastReq  api.ExecuteRequest
	execErr  error
	resp     *api.ExecuteResponse
	released []string
	pingErr  error

	// The session calls: what the last one was given.
	mu         sync.Mutex
	lastCaller api.Caller
	mayCreate  bool
	lastCreate api.CreateSessionRequest
	lastUpdate api.UpdateSessionRequest
	lastQuery  api.SessionQuery
	lastID     string
}

func (f *fakeBackend) saw(ctx context.Context, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCaller, f.mayCreate, f.lastID = api.CallerOf(ctx), api.MayCreate(ctx), id
}

func (f *fakeBackend) CreateSession(ctx context.Context, req api.CreateSessionRequest) (*api.Session, error) {
	f.saw(ctx, req.SessionID)
	f.lastCreate = req
	return &api.Session{SessionID: req.SessionID, State: api.SessionRunning, AccessToken: "cbs_x"}, nil
}

func (f *fakeBackend) ListSessions(ctx context.Context, q api.SessionQuery) (*api.SessionList, error) {
	f.saw(ctx, "")
	f.lastQuery = q
	return &api.SessionList{Sessions: []api.Session{}}, nil
}

func (f *fakeBackend) GetSession(ctx context.Context, id string) (*api.Session, error) {
	f.saw(ctx, id)
	if id == "gone" {
		return nil, &api.Problem{Kind: api.NotFound, Detail: "ended", Ended: &api.PreviousSession{EndedReason: api.EndIdleTimeout}}
	}
	return &api.Session{SessionID: id, State: api.SessionRunning}, nil
}

func (f *fakeBackend) UpdateSession(ctx context.Context, id string, req api.UpdateSessionRequest) (*api.Session, error) {
	f.saw(ctx, id)
	f.lastUpdate = req
	return &api.Session{SessionID: id}, nil
}

func (f *fakeBackend) DeleteSession(ctx context.Context, id string) error {
	f.saw(ctx, id)
	return nil
}

func (f *fakeBackend) SetNetwork(ctx context.Context, id string, p api.NetworkPolicy) (*api.Session, error) {
	f.saw(ctx, id)
	return &api.Session{SessionID: id, State: api.SessionRunning, Network: p}, nil
}

func (f *fakeBackend) NetworkEvents(ctx context.Context, id string, since uint64, limit int) (*api.NetworkEvents, error) {
	f.saw(ctx, id)
	return &api.NetworkEvents{Events: []api.NetworkEvent{{Seq: since, Kind: "dns", Name: "x.test", Decision: "denied", Reason: "dns_denied"}}, NextSeq: since + 1}, nil
}

func (f *fakeBackend) Environments(ctx context.Context) ([]api.Environment, error) {
	e := api.Environment{Name: "default", Image: "img", Languages: api.Languages, Available: true}
	if api.CallerOf(ctx).Admin {
		e.Pool = &api.EnvironmentPool{Idle: 1, MinIdle: 1, TargetIdle: 1, MaxTotal: 5}
	}
	return []api.Environment{e}, nil
}

func (f *fakeBackend) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	f.lastUser, f.lastReq = user, req
	if f.execErr != nil {
		return out.Reply(ctx, nil, f.execErr)
	}
	return out.Reply(ctx, f.resp, nil)
}
func (f *fakeBackend) Release(ctx context.Context, user string) error {
	f.released = append(f.released, user)
	return nil
}
func (f *fakeBackend) ImportFiles(ctx context.Context, user string, files []api.FileImport) (*api.FilesResponse, error) {
	f.lastUser = user
	resp := &api.FilesResponse{Success: true}
	for _, fl := range files {
		if fl.Name == "bad" {
			resp.Success = false
			resp.Errors = append(resp.Errors, api.FileFailure{Path: fl.Path, Name: fl.Name, Detail: "refused"})
			continue
		}
		resp.Results = append(resp.Results, api.FileResult{FullPath: "/sandbox/" + fl.Name, Size: 3})
	}
	return resp, nil
}
func (f *fakeBackend) ExportFiles(ctx context.Context, user string, files []api.FileExport) (*api.FilesResponse, error) {
	return &api.FilesResponse{Success: true}, nil
}
func (f *fakeBackend) DeleteFiles(ctx context.Context, user string, files []api.FileRef) (*api.FilesResponse, error) {
	return &api.FilesResponse{Success: true}, nil
}
func (f *fakeBackend) PutFile(ctx context.Context, user, path string, body io.Reader) (*api.FileResult, error) {
	b, _ := io.ReadAll(body)
	return &api.FileResult{FullPath: path, Size: int64(len(b))}, nil
}
func (f *fakeBackend) GetFile(ctx context.Context, user, path string, send func(context.Context, string, time.Time, io.ReadSeeker) error) error {
	if path != "/sandbox/a.csv" {
		return &api.Error{Status: 404, Detail: "not found"}
	}
	return send(ctx, "a.csv", time.Unix(0, 0), strings.NewReader("x,y\n1,2\n"))
}
func (f *fakeBackend) ListFiles(ctx context.Context, user, path string, offset, limit int) (*api.ListResponse, error) {
	return &api.ListResponse{Path: path, Entries: []api.FileEntry{{Name: "a.csv", Size: 8, Type: "file"}}}, nil
}
func (f *fakeBackend) Status() api.Status {
	return api.Status{TotalWorkers: 3, IdleWorkers: 1, IdleWorkersInPool: 1}
}
func (f *fakeBackend) Ping(ctx context.Context) error { return f.pingErr }

const tok = "s3cret"

func serve(t *testing.T, b api.Backend) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewHandler(b, ServerConfig{Token: tok, CORSOrigins: []string{"https://app.example"}, MaxExecTimeout: 300 * time.Second}))
	t.Cleanup(srv.Close)
	return srv
}

func call(t *testing.T, srv *httptest.Server, method, path, body string, hdr map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp, m
}

var auth = map[string]string{"X-Auth-Token": tok}

func TestAuth(t *testing.T) {
	srv := serve(t, &fakeBackend{})
	for _, h := range []map[string]string{nil, {"X-Auth-Token": "wrong"}, {"Authorization": "Bearer wrong"}} {
		resp, body := call(t, srv, "GET", "/api/v1/status", "", h)
		if resp.StatusCode != 401 || body["detail"] == nil {
			t.Fatalf("headers %v: %d %v", h, resp.StatusCode, body)
		}
	}
	for _, h := range []map[string]string{auth, {"Authorization": "Bearer " + tok}} {
		resp, body := call(t, srv, "GET", "/api/v1/status", "", h)
		if resp.StatusCode != 200 || body["total_workers"] != 3.0 || body["idle_workers_in_pool"] != 1.0 {
			t.Fatalf("headers %v: %d %v", h, resp.StatusCode, body)
		}
	}
	if resp, _ := call(t, srv, "GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz without token: %d", resp.StatusCode)
	}
}

func TestExecuteValidation(t *testing.T) {
	b := &fakeBackend{resp: &api.ExecuteResponse{WorkerID: "w"}}
	srv := serve(t, b)
	cases := []struct {
		path, body string
		status     int
	}{
		{"/api/v1/execute?user_uuid=u1", `{"code":"1"}`, 200},
		{"/api/v1/execute", `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=bad/uuid", `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=" + strings.Repeat("a", 129), `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"  "}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":5}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":"x"}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":-1}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":0}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":1e400}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":null}`, 200},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","user_uuid":"u2"}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","user_uuid":"u1"}`, 200},
		{"/api/v1/execute?user_uuid=u1", `[1]`, 422},
		{"/api/v1/execute", `{"code":"1","user_uuid":"old-style"}`, 200},
		{"/api/v1/execute?user_uuid=u1", `{"code":`, 400},
		{"/api/v1/execute?user_uuid=u1", ``, 400},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1"} {}`, 400},
		{"/api/v1/execute?user_uuid=u1", `{"code":"` + strings.Repeat("x", api.MaxJSONBody) + `"}`, 413},
	}
	for _, c := range cases {
		resp, body := call(t, srv, "POST", c.path, c.body, auth)
		if resp.StatusCode != c.status {
			t.Errorf("%s %.40s: status %d, want %d (%v)", c.path, c.body, resp.StatusCode, c.status, body)
		}
		if c.status != 200 && body["detail"] == nil {
			t.Errorf("%s %.40s: no detail in %v", c.path, c.body, body)
		}
	}
	if b.lastUser != "old-style" {
		t.Errorf("user from body: %q", b.lastUser)
	}
}

func TestExecuteStatusMapping(t *testing.T) {
	b := &fakeBackend{resp: &api.ExecuteResponse{WorkerID: "w", Detail: "NameError: x", Error: &api.ExecError{Ename: "NameError"}}}
	srv := serve(t, b)
	resp, body := call(t, srv, "POST", "/api/v1/execute?user_uuid=u", `{"code":"x"}`, auth)
	if resp.StatusCode != 400 || body["detail"] != "NameError: x" || body["error"] == nil {
		t.Fatalf("code error: %d %v", resp.StatusCode, body)
	}
	b.execErr = &api.Error{Status: 503, Detail: "busy", RetryAfter: 1500 * time.Millisecond}
	resp, body = call(t, srv, "POST", "/api/v1/execute?user_uuid=u", `{"code":"x"}`, auth)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" || body["detail"] != "busy" {
		t.Fatalf("503: %d %v %v", resp.StatusCode, resp.Header, body)
	}
	b.execErr = context.DeadlineExceeded // an internal error: generic 500, no internals
	resp, body = call(t, srv, "POST", "/api/v1/execute?user_uuid=u", `{"code":"x"}`, auth)
	if resp.StatusCode != 500 || body["detail"] != "internal error" {
		t.Fatalf("500: %d %v", resp.StatusCode, body)
	}
}

func TestRoutingErrorsAndCORS(t *testing.T) {
	b := &fakeBackend{}
	srv := serve(t, b)
	if resp, body := call(t, srv, "GET", "/nope", "", auth); resp.StatusCode != 404 || body["detail"] == nil {
		t.Fatalf("404: %d %v", resp.StatusCode, body)
	}
	if resp, body := call(t, srv, "GET", "/api/v1/execute", "", auth); resp.StatusCode != 405 || body["detail"] == nil {
		t.Fatalf("405: %d %v", resp.StatusCode, body)
	}
	resp, _ := call(t, srv, "OPTIONS", "/api/v1/execute", "", map[string]string{"Origin": "https://app.example"})
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = call(t, srv, "OPTIONS", "/api/v1/execute", "", map[string]string{"Origin": "https://evil.example"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("foreign origin allowed: %v", resp.Header)
	}
	if resp, _ := call(t, srv, "POST", "/api/v1/release?user_uuid=u9", "", auth); resp.StatusCode != 204 || len(b.released) != 1 {
		t.Fatalf("release: %d %v", resp.StatusCode, b.released)
	}
	b.pingErr = context.Canceled
	if resp, _ := call(t, srv, "GET", "/healthz", "", nil); resp.StatusCode != 503 {
		t.Fatalf("healthz with containerd down: %d", resp.StatusCode)
	}
}

func TestClientAgainstHandler(t *testing.T) {
	b := &fakeBackend{resp: &api.ExecuteResponse{WorkerID: "w1", Stdout: "hi\n"}}
	srv := serve(t, b)
	c := api.NewClient(srv.URL, tok)
	resp, err := c.Execute(context.Background(), "u", "print('hi')", 2*time.Second)
	if err != nil || resp.Stdout != "hi\n" || b.lastReq.Timeout == nil || *b.lastReq.Timeout != 2 {
		t.Fatalf("execute: %+v %v %+v", resp, err, b.lastReq)
	}
	b.execErr = &api.Error{Status: 504, Detail: "too slow", After: &api.Aftermath{StatePreserved: api.Flag(true), Stdout: new("started\n")}}
	_, err = c.Execute(context.Background(), "u", "x", 0)
	e, ok := err.(*api.Error)
	if !ok || e.Status != 504 || e.Detail != "too slow" || e.After == nil || e.After.StatePreserved == nil || !*e.After.StatePreserved ||
		e.After.Stdout == nil || *e.After.Stdout != "started\n" || e.After.FilesKept != nil {
		t.Fatalf("error: %#v", err)
	}
	if st, err := c.Status(context.Background()); err != nil || st.TotalWorkers != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}
	if err := api.NewClient(srv.URL, "bad").Release(context.Background(), "u"); err == nil || err.(*api.Error).Status != 401 {
		t.Fatalf("bad token: %v", err)
	}
}

func TestFileHandlers(t *testing.T) {
	srv := serve(t, &fakeBackend{})
	one := `{"files":[{"download_url":"http://x/a","path":"/sandbox/","name":"a"}]}`
	if resp, body := call(t, srv, "POST", "/api/v1/files?user_uuid=u", one, auth); resp.StatusCode != 201 || body["success"] != true {
		t.Fatalf("import: %d %v", resp.StatusCode, body)
	}
	mixed := `{"files":[{"download_url":"http://x/a","name":"a"},{"download_url":"http://x/b","name":"bad"}]}`
	resp, body := call(t, srv, "POST", "/api/v1/files?user_uuid=u", mixed, auth)
	if resp.StatusCode != 207 || body["success"] != false || len(body["errors"].([]any)) != 1 || len(body["results"].([]any)) != 1 {
		t.Fatalf("partial: %d %v", resp.StatusCode, body)
	}
	var many []string
	for i := 0; i < 101; i++ {
		many = append(many, fmt.Sprintf(`{"download_url":"http://x/%d","name":"f%d"}`, i, i))
	}
	if resp, _ := call(t, srv, "POST", "/api/v1/files?user_uuid=u", `{"files":[`+strings.Join(many, ",")+`]}`, auth); resp.StatusCode != 400 {
		t.Fatalf("101 files: %d", resp.StatusCode)
	}
	if resp, _ := call(t, srv, "POST", "/api/v1/files?user_uuid=u", `{"files":[]}`, auth); resp.StatusCode != 422 {
		t.Fatalf("no files: %d", resp.StatusCode)
	}
	if resp, _ := call(t, srv, "DELETE", "/api/v1/files?user_uuid=u", `{"files":[{"path":"/sandbox/","name":"a"}]}`, auth); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/files/content?user_uuid=u&path=/sandbox/a.csv", nil)
	req.Header.Set("X-Auth-Token", tok)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || string(b) != "x,y\n1,2\n" || r.Header.Get("Content-Length") != "8" || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("download: %d %q %v", r.StatusCode, b, r.Header)
	}
	if resp, _ := call(t, srv, "GET", "/api/v1/files/content?user_uuid=u&path=/sandbox/nope", "", auth); resp.StatusCode != 404 {
		t.Fatalf("missing file: %d", resp.StatusCode)
	}
	if resp, body := call(t, srv, "GET", "/api/v1/files/list?user_uuid=u", "", auth); resp.StatusCode != 200 || body["path"] != "/sandbox/" {
		t.Fatalf("list: %d %v", resp.StatusCode, body)
	}
}

// slowBackend's Execute and ListFiles take their time, as a long cell or a big directory
// does.
type slowBackend struct {
	fakeBackend
	took time.Duration
}

func (s *slowBackend) ListFiles(ctx context.Context, user, path string, offset, limit int) (*api.ListResponse, error) {
	select {
	case <-time.After(s.took):
		return &api.ListResponse{Path: path, Entries: []api.FileEntry{}}, nil
	case <-ctx.Done():
		return nil, &api.Error{Status: 503, Detail: "cancelled", Cause: ctx.Err()}
	}
}

func (s *slowBackend) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	select {
	case <-time.After(s.took):
		return out.Reply(ctx, &api.ExecuteResponse{WorkerID: "w"}, nil)
	case <-ctx.Done():
		return out.Reply(ctx, nil, &api.Error{Status: 503, Detail: "cancelled", Cause: ctx.Err()})
	}
}

// The server bounds how long a body may take, but a call that runs long after its body was
// read is not cut by that bound: the server's background read of the connection must not
// time out and cancel it.
func TestBodyDeadlineDoesNotCutLongCalls(t *testing.T) {
	b := &slowBackend{took: 1500 * time.Millisecond}
	srv := httptest.NewServer(NewHandler(b, ServerConfig{Token: tok, BodyReadTimeout: 300 * time.Millisecond}))
	t.Cleanup(srv.Close)
	resp, body := call(t, srv, "POST", "/api/v1/execute?user_uuid=u", `{"code":"1"}`, auth)
	if resp.StatusCode != 200 {
		t.Fatalf("a call longer than the body deadline: %d %v", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/files/list?user_uuid=u", "", auth)
	if resp.StatusCode != 200 {
		t.Fatalf("a call without a body, longer than the body deadline: %d %v", resp.StatusCode, body)
	}

	// A body that trickles is cut off at the deadline.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/execute?user_uuid=u HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nContent-Length: 100\r\n\r\n{\"co", tok)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	answer, _ := io.ReadAll(conn)
	if took := time.Since(start); took > 3*time.Second || !strings.HasPrefix(string(answer), "HTTP/1.1 400") {
		t.Fatalf("a trickling body: %q after %s, want 400 at the deadline", answer, took)
	}
}

// Under overload every request fails; the log gets a few lines and a count.
func TestFailedRequestsAreSampled(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	b := &fakeBackend{execErr: &api.Error{Status: 503, Detail: "busy", RetryAfter: time.Second}}
	s := &server{b: b, cfg: ServerConfig{Token: tok, BodyReadTimeout: time.Minute}, auth: tokenAuth(tok), log: log,
		failures: newSampler(log, 300*time.Millisecond, 3)}
	h := s.wrap(s.execute, keyed)
	for i := 0; i < 200; i++ {
		req := httptest.NewRequest("POST", "/api/v1/execute?user_uuid=u", strings.NewReader(`{"code":"1"}`))
		req.Header.Set("X-Auth-Token", tok)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	time.Sleep(600 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	out := logs.String()
	if n := strings.Count(out, "\n"); n != 4 || !strings.Contains(out, "requests=197") || !strings.Contains(out, "status_503=197") {
		t.Fatalf("200 failed requests logged as %d lines:\n%s", n, out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestClientIPBehindTrustedProxies(t *testing.T) {
	s := &server{cfg: ServerConfig{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	for _, c := range []struct{ peer, xff, want string }{
		{"192.0.2.7:1234", "", "192.0.2.7"},
		{"192.0.2.7:1234", "203.0.113.9", "192.0.2.7"}, // not a proxy: its header is the caller's to forge
		{"10.1.2.3:1234", "203.0.113.9", "203.0.113.9"},
		{"10.1.2.3:1234", "198.51.100.1, 203.0.113.9, 10.9.9.9", "203.0.113.9"}, // the nearest hop not a proxy
		{"10.1.2.3:1234", "garbage, 203.0.113.9", "203.0.113.9"},
		{"10.1.2.3:1234", "", "10.1.2.3"},
		{"[::ffff:10.1.2.3]:1234", "203.0.113.9", "203.0.113.9"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.peer
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := s.clientIP(r); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
}

// blockingBackend holds each execute until release is closed.
type blockingBackend struct {
	fakeBackend
	entered chan struct{}
	release chan struct{}
}

func (b *blockingBackend) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	b.entered <- struct{}{}
	<-b.release
	return out.Reply(ctx, &api.ExecuteResponse{WorkerID: "w"}, nil)
}

// TestHeldBytesBudget: one budget bounds what the server holds of all callers' requests:
// bodies held by calls in flight, and websocket calls' code. Past it, 503 with Retry-After;
// given back when the calls end.
func TestHeldBytesBudget(t *testing.T) {
	b := &blockingBackend{entered: make(chan struct{}, 4), release: make(chan struct{})}
	srv := httptest.NewServer(NewHandler(b, ServerConfig{Token: tok, MaxExecTimeout: time.Minute, HeldBytes: 2 << 20}))
	t.Cleanup(srv.Close)
	released := false
	t.Cleanup(func() {
		if !released {
			close(b.release)
		}
	})
	big := `{"code": "` + strings.Repeat("x", 700<<10) + `"}`
	first := make(chan int, 1)
	go func() {
		resp, _ := call(t, srv, "POST", "/api/v1/execute?user_uuid=a", big, map[string]string{"X-Auth-Token": tok})
		first <- resp.StatusCode
	}()
	<-b.entered // the first call holds its 700 KiB
	resp, body := call(t, srv, "POST", "/api/v1/execute?user_uuid=b", big, map[string]string{"X-Auth-Token": tok})
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body["detail"].(string), "holds as much") {
		t.Fatalf("a second large body over the budget: %d %v", resp.StatusCode, body)
	}
	// A websocket call's code counts as well: read (held while it is handled), then queued
	// (held until the call ends): 2 × 300 KiB fits beside the first call's 2 × 700 KiB, 3 × does
	// not. A message that does not even fit closes the socket (1013).
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(srv, "c"), authHeader())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	send(t, conn, map[string]any{"type": "execute", "id": "w1", "code": strings.Repeat("y", 300<<10)})
	if got := untilDone(t, conn, "w1"); got[len(got)-1].Status != api.DoneBusy || !strings.Contains(got[0].Evalue, "holds as much") {
		t.Fatalf("a websocket call over the budget: %+v", got)
	}
	send(t, conn, map[string]any{"type": "execute", "id": "w2", "code": strings.Repeat("y", 400<<10)})
	if ce := closeOf(t, conn); ce.Code != websocket.CloseTryAgainLater {
		t.Fatalf("a websocket message over the budget: %v", ce)
	}
	close(b.release)
	released = true
	if code := <-first; code != 200 {
		t.Fatalf("the first call: %d", code)
	}
	// Given back: both fit now, one after the other.
	go func() { <-b.entered }()
	if resp, _ := call(t, srv, "POST", "/api/v1/execute?user_uuid=b", big, map[string]string{"X-Auth-Token": tok}); resp.StatusCode != 200 {
		t.Fatalf("after the first call ended: %d", resp.StatusCode)
	}
}

// The session routes: a field the request does not know is a 422 naming it, a body over
// the shape's bound a 413 before it is decoded, and the caller reaches the backend.
func TestSessionRoutes(t *testing.T) {
	b := &fakeBackend{}
	srv := httptest.NewServer(NewHandler(b, ServerConfig{Token: tok}))
	t.Cleanup(srv.Close)
	h := map[string]string{"X-Auth-Token": tok}
	resp, body := call(t, srv, "POST", "/api/v1/sessions", `{"session_id": "s", "limitz": {}}`, h)
	if resp.StatusCode != 422 || body["field"] != "limitz" {
		t.Fatalf("an unknown field: %d %v", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/sessions", `{"limits": {"memory_mb": "lots"}}`, h)
	if resp.StatusCode != 422 || body["field"] != "limits.memory_mb" {
		t.Fatalf("a field of the wrong type: %d %v", resp.StatusCode, body)
	}
	big := `{"metadata": {` + strings.Repeat(`"k": "v",`, 60_000) + `"k": "v"}}`
	if resp, _ := call(t, srv, "POST", "/api/v1/sessions", big, h); resp.StatusCode != 413 {
		t.Fatalf("a 540 KB body: %d, want 413", resp.StatusCode)
	}
	if resp, body := call(t, srv, "POST", "/api/v1/sessions", `{"session_id": "s", "metadata": {"a": "1"}}`, h); resp.StatusCode != 201 ||
		body["access_token"] != "cbs_x" || resp.Header.Get(api.SessionHeader) != "s" {
		t.Fatalf("create: %d %v", resp.StatusCode, body)
	}
	if resp, _ := call(t, srv, "GET", "/api/v1/sessions?metadata=team:a,run:1&metadata.note=x,y&state=all&limit=5", "", h); resp.StatusCode != 200 ||
		b.lastQuery.Metadata["team"] != "a" || b.lastQuery.Metadata["run"] != "1" || b.lastQuery.Metadata["note"] != "x,y" ||
		b.lastQuery.State != "all" || b.lastQuery.Limit != 5 {
		t.Fatalf("list: %d %+v", resp.StatusCode, b.lastQuery)
	}
	if resp, _ := call(t, srv, "GET", "/api/v1/sessions?limit=0", "", h); resp.StatusCode != 422 {
		t.Fatalf("limit=0: %d", resp.StatusCode)
	}
	if resp, body := call(t, srv, "GET", "/api/v1/sessions/gone", "", h); resp.StatusCode != 404 || body["ended_reason"] != "idle_timeout" {
		t.Fatalf("an ended session: %d %v", resp.StatusCode, body)
	}
	if resp, _ := call(t, srv, "PATCH", "/api/v1/sessions/s", `{"metadata": {}}`, h); resp.StatusCode != 200 ||
		b.lastUpdate.Metadata == nil || len(*b.lastUpdate.Metadata) != 0 {
		t.Fatalf("PATCH clearing metadata: %d %+v", resp.StatusCode, b.lastUpdate)
	}
	if resp, _ := call(t, srv, "DELETE", "/api/v1/sessions/a%20b", "", h); resp.StatusCode != 422 {
		t.Fatalf("a bad id: %d", resp.StatusCode)
	}
	// ?tenant= is an admin's; ?create=false reaches the backend.
	if resp, _ := call(t, srv, "GET", "/api/v1/sessions/s?tenant=alice", "", h); resp.StatusCode != 200 ||
		b.lastCaller != (api.Caller{Tenant: "alice", Admin: true, Operator: true}) {
		t.Fatalf("an admin for alice: %d %+v", resp.StatusCode, b.lastCaller)
	}
	if resp, _ := call(t, srv, "GET", "/api/v1/sessions/s?create=maybe", "", h); resp.StatusCode != 422 {
		t.Fatalf("create=maybe: %d", resp.StatusCode)
	}
}

func (f *fakeBackend) CreateSnapshot(ctx context.Context, id string, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	return &api.Snapshot{SnapshotID: "snap-1", SessionID: id}, nil
}
func (f *fakeBackend) ListSnapshots(ctx context.Context) (*api.SnapshotList, error) {
	return &api.SnapshotList{Snapshots: []api.Snapshot{}}, nil
}
func (f *fakeBackend) GetSnapshot(ctx context.Context, id string) (*api.Snapshot, error) {
	return &api.Snapshot{SnapshotID: id}, nil
}
func (f *fakeBackend) DeleteSnapshot(ctx context.Context, id string) error { return nil }
func (f *fakeBackend) Fork(ctx context.Context, id string, req api.ForkRequest) (*api.ForkResponse, error) {
	return &api.ForkResponse{}, nil
}

func (f *fakeBackend) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (*api.Volume, error) {
	return &api.Volume{Name: req.Name}, nil
}
func (f *fakeBackend) ListVolumes(ctx context.Context) (*api.VolumeList, error) {
	return &api.VolumeList{Volumes: []api.Volume{}}, nil
}
func (f *fakeBackend) GetVolume(ctx context.Context, name string) (*api.Volume, error) {
	return &api.Volume{Name: name}, nil
}
func (f *fakeBackend) DeleteVolume(ctx context.Context, name string) error { return nil }
