package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/gorilla/websocket"
)

// streamBackend streams what its code says, in the API's terms; the daemon's real
// streaming is tested end to end (e2e).
type streamBackend struct {
	fakeBackend
	mu        sync.Mutex
	ran       []string // codes that reached the backend
	cancelled chan string
}

const floodBytes = 50 << 20

func (b *streamBackend) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	b.mu.Lock()
	b.ran = append(b.ran, req.Code)
	b.mu.Unlock()
	st := out.(api.Streamer)
	switch req.Code {
	case "print3":
		for i := range 3 {
			st.Stream(api.Event{Type: api.EventStdout, Text: strings.Repeat("x", i+1) + "\n"})
		}
		return out.Reply(ctx, &api.ExecuteResponse{ExecutionCount: 1, WorkerID: "w"}, nil)
	case "flood":
		const chunk = 64 << 10
		for range floodBytes / chunk { // each piece its own memory, as decoded from frames
			st.Stream(api.Event{Type: api.EventStdout, Text: strings.Repeat("y", chunk)})
		}
		return out.Reply(ctx, &api.ExecuteResponse{ExecutionCount: 2, DroppedBytes: 7}, nil)
	case "raise":
		st.Stream(api.Event{Type: api.EventError, Ename: "ValueError", Evalue: "bad", Traceback: []string{"tb"}})
		return out.Reply(ctx, &api.ExecuteResponse{Error: &api.ExecError{Ename: "ValueError", Evalue: "bad"}, Detail: "ValueError: bad"}, nil)
	case "wait": // runs until interrupted, or the caller goes away
		stopped := make(chan struct{})
		var once sync.Once
		st.Started(func() { once.Do(func() { close(stopped) }) })
		st.Stream(api.Event{Type: api.EventStdout, Text: "started\n"})
		select {
		case <-stopped:
			return out.Reply(ctx, &api.ExecuteResponse{Interrupted: true, Error: &api.ExecError{Ename: "KeyboardInterrupt"}}, nil)
		case <-ctx.Done():
			if b.cancelled != nil {
				b.cancelled <- req.Code
			}
			return out.Reply(ctx, nil, &api.Problem{Kind: api.Timeout, Detail: "gone", After: &api.Aftermath{StatePreserved: api.Flag(true)}})
		}
	case "panic":
		panic("backend bug")
	case "lost":
		return out.Reply(ctx, nil, &api.Problem{Kind: api.Lost, Detail: "the worker died", After: &api.Aftermath{WorkerID: "w9"}})
	}
	return out.Reply(ctx, &api.ExecuteResponse{}, nil)
}

func (b *streamBackend) codes() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.ran...)
}

func wsURL(srv *httptest.Server, user string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/v1/stream?user_uuid=" + user
}

func dialStream(t *testing.T, srv *httptest.Server, hdr http.Header) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u1"), hdr)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func authHeader() http.Header { return http.Header{"X-Auth-Token": {tok}} }

func send(t *testing.T, conn *websocket.Conn, m map[string]any) {
	t.Helper()
	if err := conn.WriteJSON(m); err != nil {
		t.Fatal(err)
	}
}

// next reads one event, as raw fields and as an Event.
func next(t *testing.T, conn *websocket.Conn) (api.Event, map[string]any) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var e api.Event
	var raw map[string]any
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(data, &raw)
	return e, raw
}

// untilDone reads the events up to call id's done.
func untilDone(t *testing.T, conn *websocket.Conn, id string) []api.Event {
	t.Helper()
	var got []api.Event
	for {
		e, _ := next(t, conn)
		got = append(got, e)
		if e.Type == api.EventDone && e.ID == id {
			return got
		}
	}
}

// closeOf reads until the server closes the socket and returns its close frame.
func closeOf(t *testing.T, conn *websocket.Conn) *websocket.CloseError {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := conn.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce
		}
		if err != nil {
			t.Fatalf("socket ended without a close frame: %v", err)
		}
	}
}

func TestStreamEventsAndDone(t *testing.T) {
	srv := serve(t, &streamBackend{})
	conn := dialStream(t, srv, authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "c1", "code": "print3"})
	var texts []string
	for range 3 {
		e, _ := next(t, conn)
		if e.Type != api.EventStdout || e.ID != "c1" {
			t.Fatalf("event %+v", e)
		}
		texts = append(texts, e.Text)
	}
	if strings.Join(texts, "") != "x\nxx\nxxx\n" {
		t.Fatalf("stdout %q", texts)
	}
	done, raw := next(t, conn)
	if done.Type != api.EventDone || done.ID != "c1" || done.Status != api.DoneOK || !done.StatePreserved || done.ExecutionCount != 1 {
		t.Fatalf("done %+v", done)
	}
	// A done event has all its fields, false and zero ones too.
	for _, k := range []string{"status", "state_preserved", "execution_count", "duration_ms", "dropped_bytes", "new_session"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("done without %q: %v", k, raw)
		}
	}

	send(t, conn, map[string]any{"type": "execute", "id": "c2", "code": "raise"})
	got := untilDone(t, conn, "c2")
	if len(got) != 2 || got[0].Type != api.EventError || got[0].Ename != "ValueError" || got[1].Status != api.DoneError || got[1].Detail != "ValueError: bad" {
		t.Fatalf("raise: %+v", got)
	}
	send(t, conn, map[string]any{"type": "execute", "id": "c3", "code": "lost"})
	if got := untilDone(t, conn, "c3"); got[0].Status != api.DoneDied || got[0].StatePreserved || got[0].WorkerID != "w9" {
		t.Fatalf("lost: %+v", got)
	}
}

func TestStreamRunsCallsInOrder(t *testing.T) {
	b := &streamBackend{}
	conn := dialStream(t, serve(t, b), authHeader())
	for _, id := range []string{"a", "b", "c"} {
		send(t, conn, map[string]any{"type": "execute", "id": id, "code": "print3"})
	}
	var order []string
	for len(order) < 12 {
		e, _ := next(t, conn)
		order = append(order, e.ID+":"+e.Type)
	}
	want := "a:stdout a:stdout a:stdout a:done b:stdout b:stdout b:stdout b:done c:stdout c:stdout c:stdout c:done"
	if strings.Join(order, " ") != want {
		t.Fatalf("order\n got %v\nwant %v", order, want)
	}
}

func TestStreamAuth(t *testing.T) {
	b := &streamBackend{}
	srv := serve(t, b)
	// A wrong token in the headers is refused before the upgrade.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u1"), http.Header{"X-Auth-Token": {"wrong"}})
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("wrong header token: %v %v", err, resp)
	}
	// So is a bad user_uuid.
	_, resp, err = websocket.DefaultDialer.Dial(wsURL(srv, "a/b"), authHeader())
	if err == nil || resp == nil || resp.StatusCode != 422 {
		t.Fatalf("bad user_uuid: %v %v", err, resp)
	}
	// A browser authenticates with its first message.
	conn := dialStream(t, srv, nil)
	send(t, conn, map[string]any{"type": "auth", "token": tok})
	send(t, conn, map[string]any{"type": "execute", "id": "c1", "code": "print3"})
	if got := untilDone(t, conn, "c1"); got[len(got)-1].Status != api.DoneOK {
		t.Fatalf("after auth: %+v", got)
	}
	// A wrong one closes the socket, saying why; so does anything else first.
	for _, first := range []map[string]any{
		{"type": "auth", "token": "wrong"},
		{"type": "execute", "id": "c1", "code": "print3"},
	} {
		conn := dialStream(t, srv, nil)
		send(t, conn, first)
		if ce := closeOf(t, conn); ce.Code != websocket.ClosePolicyViolation || ce.Text == "" {
			t.Fatalf("first %v: close %v", first, ce)
		}
	}
	// Silence is closed after authTimeout.
	defer func(d time.Duration) { authTimeout = d }(authTimeout)
	authTimeout = 200 * time.Millisecond
	conn = dialStream(t, srv, nil)
	if ce := closeOf(t, conn); ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "auth") {
		t.Fatalf("silent socket: close %v", ce)
	}
	if n := len(b.codes()); n != 1 {
		t.Fatalf("%d calls reached the backend, want 1", n)
	}
}

func TestStreamOriginCheck(t *testing.T) {
	srv := serve(t, &streamBackend{})
	for origin, ok := range map[string]bool{"https://app.example": true, "https://evil.example": false, srv.URL: true} {
		h := authHeader()
		h.Set("Origin", origin)
		conn, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u1"), h)
		if ok != (err == nil) {
			t.Errorf("origin %s: err %v (%v)", origin, err, resp)
		}
		if conn != nil {
			conn.Close()
		}
	}
}

func TestStreamInterrupt(t *testing.T) {
	b := &streamBackend{}
	conn := dialStream(t, serve(t, b), authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "c1", "code": "wait"})
	send(t, conn, map[string]any{"type": "execute", "id": "c2", "code": "print3"})
	if e, _ := next(t, conn); e.Text != "started\n" {
		t.Fatalf("first event %+v", e)
	}
	// The queued call is interrupted before it runs; then the running one.
	send(t, conn, map[string]any{"type": "interrupt", "id": "c2"})
	send(t, conn, map[string]any{"type": "interrupt", "id": "c1"})
	got := untilDone(t, conn, "c1")
	if d := got[len(got)-1]; d.Status != api.DoneInterrupted || !d.StatePreserved {
		t.Fatalf("c1 done %+v", d)
	}
	got = untilDone(t, conn, "c2")
	if len(got) != 1 || got[0].Status != api.DoneInterrupted || !got[0].StatePreserved {
		t.Fatalf("c2: %+v", got)
	}
	if codes := b.codes(); len(codes) != 1 {
		t.Fatalf("backend ran %v; the interrupted queued call must not run", codes)
	}
	// The socket goes on.
	send(t, conn, map[string]any{"type": "execute", "id": "c3", "code": "print3"})
	if got := untilDone(t, conn, "c3"); got[len(got)-1].Status != api.DoneOK {
		t.Fatalf("c3: %+v", got)
	}
}

func TestStreamBadInput(t *testing.T) {
	b := &streamBackend{}
	srv := serve(t, b)
	conn := dialStream(t, srv, authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "run", "code": "wait"})
	next(t, conn) // started
	protocolErrors := []any{
		"not json",
		map[string]any{"type": "nope", "id": "x"},
		map[string]any{"id": "x"},
		map[string]any{"type": "execute", "code": "print3"},                               // no id
		map[string]any{"type": "execute", "id": "run", "code": "print3"},                  // its id runs
		map[string]any{"type": "execute", "id": "x", "code": "print3", "timeout": "soon"}, // wrong type
		map[string]any{"type": "execute", "id": strings.Repeat("i", 200), "code": "print3"},
		map[string]any{"type": "interrupt"},
		map[string]any{"type": "interrupt", "id": "nobody"},
		map[string]any{"type": "auth", "token": tok},
	}
	for _, m := range protocolErrors {
		if s, ok := m.(string); ok {
			conn.WriteMessage(websocket.TextMessage, []byte(s))
		} else {
			send(t, conn, m.(map[string]any))
		}
		e, _ := next(t, conn)
		if e.Type != api.EventError || e.Ename != api.ProtocolError || e.Evalue == "" || e.ID != "" {
			t.Fatalf("message %v: event %+v", m, e)
		}
	}
	// An execute that is well formed but cannot run: its error, then its done.
	for _, m := range []map[string]any{
		{"type": "execute", "id": "e1", "code": "  "},
		{"type": "execute", "id": "e2", "code": "print3", "timeout": -1},
		{"type": "execute", "id": "e3", "code": "print3", "language": "cobol"},
	} {
		send(t, conn, m)
		got := untilDone(t, conn, m["id"].(string))
		if len(got) != 2 || got[0].Ename != api.ProtocolError || got[0].ID != m["id"] || got[1].Status != api.DoneError {
			t.Fatalf("%v: %+v", m, got)
		}
	}
	// The running call was not disturbed; it ends when asked.
	send(t, conn, map[string]any{"type": "interrupt", "id": "run"})
	if got := untilDone(t, conn, "run"); got[len(got)-1].Status != api.DoneInterrupted {
		t.Fatalf("run: %+v", got)
	}
	if codes := b.codes(); len(codes) != 1 {
		t.Fatalf("backend ran %v", codes)
	}

	// Too many calls: the seventeenth is refused as busy.
	conn = dialStream(t, srv, authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "w", "code": "wait"})
	next(t, conn)
	for i := range maxStreamCalls {
		send(t, conn, map[string]any{"type": "execute", "id": string(rune('a' + i)), "code": "print3"})
	}
	got := untilDone(t, conn, string(rune('a'+maxStreamCalls-1)))
	if d := got[len(got)-1]; d.Status != api.DoneBusy {
		t.Fatalf("call over the limit: %+v", got)
	}

	// Oversized and binary messages close the socket, saying why.
	conn = dialStream(t, srv, authHeader())
	conn.WriteMessage(websocket.TextMessage, make([]byte, maxStreamMessage+1))
	if ce := closeOf(t, conn); ce.Code != websocket.CloseMessageTooBig || ce.Text == "" {
		t.Fatalf("oversized: %v", ce)
	}
	conn = dialStream(t, srv, authHeader())
	conn.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"execute"}`))
	if ce := closeOf(t, conn); ce.Code != websocket.CloseUnsupportedData {
		t.Fatalf("binary: %v", ce)
	}
}

func TestStreamClientGoneInterruptsTheCall(t *testing.T) {
	b := &streamBackend{cancelled: make(chan string, 1)}
	conn := dialStream(t, serve(t, b), authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "c1", "code": "wait"})
	next(t, conn)
	conn.Close()
	select {
	case code := <-b.cancelled:
		if code != "wait" {
			t.Fatal(code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call went on after its socket closed")
	}
}

func TestStreamSlowReaderCostsABoundedBuffer(t *testing.T) {
	b := &streamBackend{}
	conn := dialStream(t, serve(t, b), authHeader())
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	send(t, conn, map[string]any{"type": "execute", "id": "f", "code": "flood"})
	// The backend streams 50 MiB without waiting while nobody reads.
	deadline := time.Now().Add(10 * time.Second)
	for len(b.codes()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 8<<20 {
		t.Errorf("heap grew %d MiB while the reader stalled", grew>>20)
	}
	var got int64
	for {
		e, _ := next(t, conn)
		if e.Type == api.EventDone {
			if got+e.DroppedBytes != floodBytes+7 || e.DroppedBytes <= 7 {
				t.Fatalf("received %d + dropped %d != %d", got, e.DroppedBytes, floodBytes+7)
			}
			return
		}
		got += int64(len(e.Text))
	}
}

func TestOutboxBoundsNotes(t *testing.T) {
	o := newOutbox()
	for i := range maxNotes {
		if !o.note(api.Event{Type: api.EventError}) {
			t.Fatalf("note %d refused", i)
		}
	}
	if o.note(api.Event{Type: api.EventDone}) {
		t.Fatal("note past the bound accepted")
	}
	if !o.note(api.Event{Type: closeEvent}) {
		t.Fatal("the close cue must always queue")
	}
}

func TestStreamShutdownClosesSockets(t *testing.T) {
	b := &streamBackend{}
	h := NewHandler(b, ServerConfig{Token: tok})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	conn := dialStream(t, srv, authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "c1", "code": "print3"})
	untilDone(t, conn, "c1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go h.Shutdown(ctx)
	if ce := closeOf(t, conn); ce.Code != websocket.CloseGoingAway {
		t.Fatalf("close %v", ce)
	}
	// New sockets are refused.
	conn = dialStream(t, srv, authHeader())
	if ce := closeOf(t, conn); ce.Code != websocket.CloseGoingAway {
		t.Fatalf("after shutdown: %v", ce)
	}
}

func TestEventStreamChecksLikeREST(t *testing.T) {
	srv := serve(t, &streamBackend{})
	post := func(body, accept string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/execute?user_uuid=u1", strings.NewReader(body))
		req.Header.Set("X-Auth-Token", tok)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post(`{"code":"1","timeout":301}`, "text/event-stream"); resp.StatusCode != 422 {
		t.Fatalf("timeout over the limit: %d", resp.StatusCode)
	}
	if resp := post(`{"code":"print3"}`, "text/event-stream;q=0, application/json"); resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("q=0: %s", resp.Header.Get("Content-Type"))
	}
	var got []api.Event
	for e, err := range api.NewClient(srv.URL, tok).Stream(context.Background(), "u1", api.ExecuteRequest{Code: "panic"}) {
		if err != nil {
			t.Fatalf("panic: %v after %+v", err, got)
		}
		got = append(got, e)
	}
	if len(got) != 1 || got[0].Status != api.DoneError || got[0].Detail != "internal error" {
		t.Fatalf("panic: %+v", got)
	}
}

func TestExecuteEventStream(t *testing.T) {
	b := &streamBackend{}
	srv := serve(t, b)
	c := api.NewClient(srv.URL, tok)
	var got []api.Event
	for e, err := range c.Stream(context.Background(), "u1", api.ExecuteRequest{Code: "print3"}) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 4 || got[0].Text != "x\n" || got[3].Type != api.EventDone || got[3].Status != api.DoneOK {
		t.Fatalf("events %+v", got)
	}
	// The request's checks answer as without streaming.
	for e, err := range c.Stream(context.Background(), "u1", api.ExecuteRequest{Code: " "}) {
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 422 || e.Type != "" {
			t.Fatalf("empty code: %+v %v", e, err)
		}
	}
	for _, err := range api.NewClient(srv.URL, "wrong").Stream(context.Background(), "u1", api.ExecuteRequest{Code: "print3"}) {
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 401 {
			t.Fatalf("wrong token: %v", err)
		}
	}
	// The wire format: event and data lines.
	req, _ := http.NewRequest("POST", srv.URL+"/api/v1/execute?user_uuid=u1", strings.NewReader(`{"code":"raise"}`))
	req.Header.Set("X-Auth-Token", tok)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		body.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if resp.Header.Get("Content-Type") != "text/event-stream" ||
		!strings.HasPrefix(body.String(), "event: error\ndata: {\"type\":\"error\",\"ename\":\"ValueError\"") ||
		!strings.Contains(body.String(), "\n\nevent: done\ndata: {\"type\":\"done\",\"status\":\"error\"") {
		t.Fatalf("%s\n%s", resp.Header, body.String())
	}
}

func TestEventStreamClientGoneInterruptsTheCall(t *testing.T) {
	b := &streamBackend{cancelled: make(chan string, 1)}
	c := api.NewClient(serve(t, b).URL, tok)
	for e, err := range c.Stream(context.Background(), "u1", api.ExecuteRequest{Code: "wait"}) {
		if err != nil || e.Text != "started\n" {
			t.Fatalf("%+v %v", e, err)
		}
		break // closes the connection
	}
	select {
	case <-b.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the call went on after its caller left")
	}
}

func TestStreamBoundsWhatAClientSends(t *testing.T) {
	b := &streamBackend{}
	srv := serve(t, b)
	conn := dialStream(t, srv, authHeader())
	// What an error event repeats of a message is a prefix, however large the message.
	big := strings.Repeat("\u0085", 1<<20)
	for _, m := range []map[string]any{
		{"type": "interrupt", "id": big},
		{"type": big},
		{"type": "execute", "id": "x", "code": "1", "timeout": json.Number(strings.Repeat("9", 1<<20))},
	} {
		send(t, conn, m)
		e, _ := next(t, conn)
		if e.Ename != api.ProtocolError || len(e.Evalue) > 512 {
			t.Fatalf("error event of %d bytes: %.200s", len(e.Evalue), e.Evalue)
		}
	}
	// A taken id is answered without it, even when the rest of the execute is bad too:
	// the call that has the id gets exactly one done.
	send(t, conn, map[string]any{"type": "execute", "id": "run", "code": "wait"})
	next(t, conn)
	send(t, conn, map[string]any{"type": "execute", "id": "run", "code": ""})
	if e, _ := next(t, conn); e.ID != "" || e.Ename != api.ProtocolError {
		t.Fatalf("taken id: %+v", e)
	}
	// The code queued on a socket is bounded like one REST body per connection.
	code := "#" + strings.Repeat("x", 7<<20)
	for _, id := range []string{"q1", "q2", "q3"} {
		send(t, conn, map[string]any{"type": "execute", "id": id, "code": code})
	}
	got := untilDone(t, conn, "q3")
	if d := got[len(got)-1]; d.Status != api.DoneBusy || !strings.Contains(d.Detail, "bytes of code") {
		t.Fatalf("third 7 MiB call: %+v", got)
	}
	// A timeout over the daemon's limit never reaches it.
	send(t, conn, map[string]any{"type": "execute", "id": "t", "code": "1", "timeout": 301})
	if got := untilDone(t, conn, "t"); got[0].Ename != api.ProtocolError || got[1].Status != api.DoneError {
		t.Fatalf("timeout over the limit: %+v", got)
	}
	send(t, conn, map[string]any{"type": "interrupt", "id": "run"})
	untilDone(t, conn, "run")
}

func TestStreamBackendPanicStillAnswers(t *testing.T) {
	conn := dialStream(t, serve(t, &streamBackend{}), authHeader())
	send(t, conn, map[string]any{"type": "execute", "id": "p", "code": "panic"})
	if got := untilDone(t, conn, "p"); got[0].Status != api.DoneError || got[0].Detail != "internal error" {
		t.Fatalf("panic: %+v", got)
	}
	send(t, conn, map[string]any{"type": "execute", "id": "ok", "code": "print3"})
	if got := untilDone(t, conn, "ok"); got[len(got)-1].Status != api.DoneOK {
		t.Fatalf("after a panic: %+v", got)
	}
}

func TestStreamIdleAndCountLimits(t *testing.T) {
	defer func(p, i time.Duration, n int) { pingInterval, streamIdle, maxStreams = p, i, n }(pingInterval, streamIdle, maxStreams)
	pingInterval, streamIdle, maxStreams = 50*time.Millisecond, 300*time.Millisecond, 2
	srv := serve(t, &streamBackend{})
	conn := dialStream(t, srv, authHeader())
	other := dialStream(t, srv, authHeader())
	// A third socket is refused while two are open.
	if _, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u1"), authHeader()); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("socket over the limit: %v %v", err, resp)
	}
	// A socket that runs calls stays; pongs alone do not keep one.
	start := time.Now()
	for time.Since(start) < 600*time.Millisecond {
		send(t, conn, map[string]any{"type": "execute", "id": "c", "code": "print3"})
		untilDone(t, conn, "c")
		time.Sleep(50 * time.Millisecond)
	}
	if ce := closeOf(t, other); ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "no call") {
		t.Fatalf("idle socket: %v", ce)
	}
	send(t, conn, map[string]any{"type": "execute", "id": "d", "code": "print3"})
	untilDone(t, conn, "d")
}

// TestStreamUnauthenticatedBudget: sockets waiting for their auth message have a budget of
// their own, per source address too; an authenticated socket never waits for it.
func TestStreamUnauthenticatedBudget(t *testing.T) {
	defer func(n, p int) { maxUnauthStreams, maxUnauthPerSource = n, p }(maxUnauthStreams, maxUnauthPerSource)
	maxUnauthStreams, maxUnauthPerSource = 4, 1
	srv := serve(t, &streamBackend{})
	waiting := dialStream(t, srv, nil) // upgraded, no auth message yet
	if _, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u2"), nil); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("a second tokenless socket of the address: %v %v", err, resp)
	}
	withToken := dialStream(t, srv, authHeader())
	send(t, withToken, map[string]any{"type": "execute", "id": "c1", "code": "print3"})
	if got := untilDone(t, withToken, "c1"); got[len(got)-1].Status != api.DoneOK {
		t.Fatalf("a socket with the token in its headers: %+v", got)
	}
	// Once authenticated, the first socket leaves the budget: another may wait.
	send(t, waiting, map[string]any{"type": "auth", "token": tok})
	send(t, waiting, map[string]any{"type": "execute", "id": "c2", "code": "print3"})
	untilDone(t, waiting, "c2")
	next := dialStream(t, srv, nil)
	send(t, next, map[string]any{"type": "auth", "token": tok})
	send(t, next, map[string]any{"type": "execute", "id": "c3", "code": "print3"})
	untilDone(t, next, "c3")
}

// TestStreamOriginBeforeToken: a page of another origin learns nothing, not even whether a
// token is right.
func TestStreamOriginBeforeToken(t *testing.T) {
	srv := serve(t, &streamBackend{})
	for _, h := range []http.Header{{"X-Auth-Token": {"wrong"}}, authHeader(), {}} {
		h.Set("Origin", "https://evil.example")
		if _, resp, err := websocket.DefaultDialer.Dial(wsURL(srv, "u1"), h); err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("foreign origin with %v: %v %v", h, err, resp)
		}
	}
}
