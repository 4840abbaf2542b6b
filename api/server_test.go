package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type fakeBackend struct {
	lastUser string
	lastReq  ExecuteRequest
	execErr  error
	resp     *ExecuteResponse
	released []string
	pingErr  error
}

func (f *fakeBackend) Execute(ctx context.Context, user string, req ExecuteRequest) (*ExecuteResponse, error) {
	f.lastUser, f.lastReq = user, req
	if f.execErr != nil {
		return nil, f.execErr
	}
	return f.resp, nil
}
func (f *fakeBackend) Release(ctx context.Context, user string) error {
	f.released = append(f.released, user)
	return nil
}
func (f *fakeBackend) Status() Status {
	return Status{TotalWorkers: 3, IdleWorkers: 1, IdleWorkersInPool: 1}
}
func (f *fakeBackend) Ping(ctx context.Context) error { return f.pingErr }

const tok = "s3cret"

func serve(t *testing.T, b Backend) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewHandler(b, ServerConfig{Token: tok, CORSOrigins: []string{"https://app.example"}}))
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
	b := &fakeBackend{resp: &ExecuteResponse{WorkerID: "w"}}
	srv := serve(t, b)
	cases := []struct {
		path, body string
		status     int
	}{
		{"/api/v1/execute?user_uuid=u1", `{"code":"1"}`, 200},
		{"/api/v1/execute", `{"code":"1","user_uuid":"old-style"}`, 200},
		{"/api/v1/execute", `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=bad/uuid", `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=" + strings.Repeat("a", 129), `{"code":"1"}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"  "}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":5}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":"x"}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1","timeout":-1}`, 422},
		{"/api/v1/execute?user_uuid=u1", `{"code":`, 400},
		{"/api/v1/execute?user_uuid=u1", ``, 400},
		{"/api/v1/execute?user_uuid=u1", `{"code":"1"} {}`, 400},
		{"/api/v1/execute?user_uuid=u1", `{"code":"` + strings.Repeat("x", MaxJSONBody) + `"}`, 413},
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
	b := &fakeBackend{resp: &ExecuteResponse{WorkerID: "w", Detail: "NameError: x", Error: &ExecError{Ename: "NameError"}}}
	srv := serve(t, b)
	resp, body := call(t, srv, "POST", "/api/v1/execute?user_uuid=u", `{"code":"x"}`, auth)
	if resp.StatusCode != 400 || body["detail"] != "NameError: x" || body["error"] == nil {
		t.Fatalf("code error: %d %v", resp.StatusCode, body)
	}
	b.execErr = &Error{Status: 503, Detail: "busy", RetryAfter: 1500 * time.Millisecond}
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
	b := &fakeBackend{resp: &ExecuteResponse{WorkerID: "w1", Stdout: "hi\n"}}
	srv := serve(t, b)
	c := NewClient(srv.URL, tok)
	resp, err := c.Execute(context.Background(), "u", "print('hi')", 2*time.Second)
	if err != nil || resp.Stdout != "hi\n" || b.lastReq.Timeout != 2 {
		t.Fatalf("execute: %+v %v %+v", resp, err, b.lastReq)
	}
	b.execErr = &Error{Status: 504, Detail: "too slow", Fields: map[string]any{"state_preserved": true}}
	_, err = c.Execute(context.Background(), "u", "x", 0)
	e, ok := err.(*Error)
	if !ok || e.Status != 504 || e.Detail != "too slow" || e.Fields["state_preserved"] != true {
		t.Fatalf("error: %#v", err)
	}
	if st, err := c.Status(context.Background()); err != nil || st.TotalWorkers != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}
	if err := NewClient(srv.URL, "bad").Release(context.Background(), "u"); err == nil || err.(*Error).Status != 401 {
		t.Fatalf("bad token: %v", err)
	}
}
