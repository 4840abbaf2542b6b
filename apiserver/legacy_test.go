package apiserver

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/codebox/codebox/api"
)

// The seed's older form: user_uuid in the body, POST /release answering 200 with a
// sentence, GET /status with the older field names.
func TestLegacyRoutes(t *testing.T) {
	b := &fakeBackend{resp: &api.ExecuteResponse{WorkerID: "w-1", Stdout: "500\n"}}
	srv := serve(t, b)

	resp, body := call(t, srv, "POST", "/execute", `{"user_uuid": "alice", "code": "print(500)"}`, auth)
	if resp.StatusCode != 200 || b.lastUser != "alice" || body["stdout"] != "500\n" {
		t.Fatalf("/execute: %d %v (user %q)", resp.StatusCode, body, b.lastUser)
	}
	resp, body = call(t, srv, "POST", "/execute", `{"code": "1"}`, auth)
	if resp.StatusCode != 422 || !strings.Contains(body["detail"].(string), "user_uuid") {
		t.Fatalf("/execute without user_uuid: %d %v", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/execute", `{"user_uuid": "alice", "code": "1"}`, nil)
	if resp.StatusCode != 401 {
		t.Fatalf("/execute without a token: %d %v", resp.StatusCode, body)
	}

	resp, body = call(t, srv, "POST", "/release", `{"user_uuid": "alice"}`, auth)
	want := map[string]any{"status": "ok", "detail": "Worker for user alice has been released."}
	if resp.StatusCode != 200 || !reflect.DeepEqual(body, want) || b.released[len(b.released)-1] != "alice" {
		t.Fatalf("/release: %d %v, released %v", resp.StatusCode, body, b.released)
	}
	for _, bad := range []string{``, `{}`, `{"user_uuid": "../x"}`, `{"user_uuid": 5}`, `[1]`} {
		n := len(b.released)
		resp, body = call(t, srv, "POST", "/release", bad, auth)
		if resp.StatusCode/100 != 4 || body["detail"] == nil || len(b.released) != n {
			t.Fatalf("/release %q: %d %v", bad, resp.StatusCode, body)
		}
	}

	resp, body = call(t, srv, "GET", "/status", "", auth)
	want = map[string]any{"total_workers": 3.0, "busy_workers": 0.0, "idle_workers_in_pool": 1.0, "is_initializing": false}
	if resp.StatusCode != 200 || !reflect.DeepEqual(body, want) {
		t.Fatalf("/status: %d %v", resp.StatusCode, body)
	}
}

// POST /api/v1/release takes user_uuid from the query or the body, not two different ones.
func TestReleaseUserInBody(t *testing.T) {
	b := &fakeBackend{}
	srv := serve(t, b)
	for _, c := range []struct {
		query, body string
		status      int
		released    string
	}{
		{"?user_uuid=alice", "", 204, "alice"},
		{"", `{"user_uuid": "bob"}`, 204, "bob"},
		{"?user_uuid=carol", `{"user_uuid": "carol"}`, 204, "carol"},
		{"?user_uuid=carol", `{"user_uuid": "dave"}`, 422, ""},
		{"", `{"user_uuid": "a b"}`, 422, ""},
		{"", `{"user_uuid": "x"`, 400, ""},
	} {
		n := len(b.released)
		resp, body := call(t, srv, "POST", "/api/v1/release"+c.query, c.body, auth)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s: %d %v, want %d", c.query, c.body, resp.StatusCode, body, c.status)
		}
		switch {
		case c.released == "" && len(b.released) != n:
			t.Errorf("%s %s: released %v", c.query, c.body, b.released[n:])
		case c.released != "" && (len(b.released) != n+1 || b.released[n] != c.released):
			t.Errorf("%s %s: released %v, want %s", c.query, c.body, b.released[n:], c.released)
		}
	}
}

// A browser on another origin preflights the older paths as it does the API's.
func TestLegacyPreflight(t *testing.T) {
	srv := serve(t, &fakeBackend{})
	for _, p := range []string{"/execute", "/release", "/status", "/api/v1/execute"} {
		req, _ := http.NewRequest("OPTIONS", srv.URL+p, nil)
		req.Header.Set("Origin", "https://app.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type,x-auth-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != "https://app.example" ||
			!strings.Contains(h.Get("Access-Control-Allow-Headers"), "X-Auth-Token") || !strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") {
			t.Errorf("preflight %s: %d %v", p, resp.StatusCode, h)
		}
		req.Header.Set("Origin", "https://evil.example")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight %s from another origin allowed: %v", p, resp.Header)
		}
	}
}
