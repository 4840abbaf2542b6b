package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeAgent is a websocket peer that answers each request with the frames script returns.
type fakeAgent struct {
	token  string
	script func(req map[string]any, send func(msgType string, content any, parentID string))
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "token "+f.token {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	up := websocket.Upgrader{}
	conn, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	for {
		var req map[string]any
		if err := conn.ReadJSON(&req); err != nil {
			return
		}
		send := func(msgType string, content any, parentID string) {
			conn.WriteJSON(map[string]any{
				"header":        map[string]any{"msg_id": "x", "msg_type": msgType},
				"parent_header": map[string]any{"msg_id": parentID},
				"content":       content,
			})
		}
		f.script(req, send)
	}
}

func msgID(req map[string]any) string {
	return req["header"].(map[string]any)["msg_id"].(string)
}

func start(t *testing.T, f *fakeAgent, opts Options) *Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + ChannelsPath
	c, err := Dial(context.Background(), url, f.token, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestExecuteCollectsOutputInOrder(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		if code := req["content"].(map[string]any)["code"]; code != "x += 1; x" {
			t.Errorf("code sent = %v", code)
		}
		send("status", map[string]any{"execution_state": "busy"}, id)
		send("stream", map[string]any{"name": "stdout", "text": "a"}, id)
		send("stream", map[string]any{"name": "stdout", "text": "b\n"}, "someone-else") // not ours
		send("stream", map[string]any{"name": "stderr", "text": "warn\n"}, id)
		send("comm_open", map[string]any{"x": 1}, id) // unknown type
		send("display_data", map[string]any{"data": map[string]any{"image/png": "iVBO", "text/plain": "<Figure>"}}, id)
		send("execute_result", map[string]any{"data": map[string]any{"text/plain": "42"}, "execution_count": 3}, id)
		send("execute_reply", map[string]any{"status": "ok", "execution_count": 3}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	c := start(t, f, Options{})
	res, err := c.Execute(context.Background(), "x += 1; x")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "ok" || res.ExecutionCount != 3 || res.Stdout != "a" || res.Stderr != "warn\n" {
		t.Fatalf("result = %+v", res)
	}
	if len(res.Outputs) != 2 || res.Outputs[0].Type != "display_data" || res.Outputs[1].Type != "execute_result" {
		t.Fatalf("outputs = %+v", res.Outputs)
	}
	if v, ok := res.Outputs[1].Text("text/plain"); !ok || v != "42" {
		t.Fatalf("value = %q %v", v, ok)
	}
	if res.Error != nil || res.Truncated {
		t.Fatalf("unexpected error/truncation: %+v", res)
	}
}

// An agent that honours codebox_lean sends no status frames and marks its reply; the call
// ends at the reply. One that does not (an older image) is waited on for its idle as ever.
func TestLeanReply(t *testing.T) {
	for _, lean := range []bool{true, false} {
		f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
			id := msgID(req)
			if req["content"].(map[string]any)["codebox_lean"] != true {
				t.Errorf("the client did not ask for lean replies: %v", req["content"])
			}
			send("stream", map[string]any{"name": "stdout", "text": "1\n"}, id)
			if lean {
				send("execute_reply", map[string]any{"status": "ok", "execution_count": 1, "codebox_lean": true}, id)
				return
			}
			send("execute_reply", map[string]any{"status": "ok", "execution_count": 1}, id)
			send("status", map[string]any{"execution_state": "idle"}, id)
		}}
		c := start(t, f, Options{})
		for i := 0; i < 3; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			res, err := c.Execute(ctx, "print(1)")
			cancel()
			if err != nil || res.Stdout != "1\n" || res.Status != "ok" {
				t.Fatalf("lean %v, call %d: %+v %v", lean, i, res, err)
			}
		}
		if err := c.Err(); err != nil {
			t.Fatalf("lean %v: the connection failed: %v", lean, err)
		}
	}
}

func TestExecuteError(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		e := map[string]any{"ename": "NameError", "evalue": "name 'y' is not defined", "traceback": []string{"tb1", "tb2"}}
		send("error", e, id)
		reply := map[string]any{"status": "error", "execution_count": 1}
		for k, v := range e {
			reply[k] = v
		}
		send("execute_reply", reply, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	res, err := start(t, f, Options{}).Execute(context.Background(), "y")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "error" || res.Error == nil || res.Error.Ename != "NameError" || len(res.Error.Traceback) != 2 {
		t.Fatalf("result = %+v, error = %+v", res, res.Error)
	}
}

func TestOutputIsCapped(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		for i := 0; i < 10; i++ {
			send("stream", map[string]any{"name": "stdout", "text": strings.Repeat("x", 100)}, id)
		}
		send("display_data", map[string]any{"data": map[string]any{"image/png": strings.Repeat("A", 1000)}}, id)
		send("execute_reply", map[string]any{"status": "ok", "execution_count": 1}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	res, err := start(t, f, Options{MaxOutputBytes: 250}).Execute(context.Background(), "spam")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != 250 || !res.Truncated || len(res.Outputs) != 0 {
		t.Fatalf("stdout %d bytes, truncated %v, outputs %d", len(res.Stdout), res.Truncated, len(res.Outputs))
	}
}

func TestAgentSideTruncationIsReported(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		send("execute_reply", map[string]any{"status": "ok", "execution_count": 1, "codebox_truncated_bytes": 1000}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	res, err := start(t, f, Options{}).Execute(context.Background(), "spam")
	if err != nil || !res.Truncated {
		t.Fatalf("truncated = %v, %v", res.Truncated, err)
	}
}

func TestWaitAfterDeadlineKeepsCollecting(t *testing.T) {
	release := make(chan struct{})
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		send("stream", map[string]any{"name": "stdout", "text": "before\n"}, id)
		<-release // the "kernel" runs until interrupted
		send("error", map[string]any{"ename": "KeyboardInterrupt", "evalue": "", "traceback": []string{}}, id)
		send("execute_reply", map[string]any{"status": "error", "execution_count": 1}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	c := start(t, f, Options{})
	call, err := c.Start("while True: pass", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer call.Finish()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	res, err := call.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline", err)
	}
	if res.Stdout != "before\n" {
		t.Fatalf("partial stdout = %q", res.Stdout)
	}
	close(release)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	res, err = call.Wait(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Error == nil || res.Error.Ename != "KeyboardInterrupt" {
		t.Fatalf("after interrupt: %+v", res)
	}
}

func TestConnectionLossFailsTheCall(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		send("status", map[string]any{"execution_state": "busy"}, msgID(req))
		panic(http.ErrAbortHandler) // the worker died: the connection drops
	}}
	c := start(t, f, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Execute(ctx, "import os; os._exit(1)")
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if _, err := c.Execute(ctx, "1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("next call err = %v, want ErrClosed", err)
	}
}

func TestBadToken(t *testing.T) {
	srv := httptest.NewServer(&fakeAgent{token: "right"})
	defer srv.Close()
	_, err := Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+ChannelsPath, "wrong", Options{})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("dial with a wrong token: %v", err)
	}
}

func TestCheckIsASilentExecute(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		c := req["content"].(map[string]any)
		id := msgID(req)
		status := "ok"
		if c["silent"] != true || c["store_history"] != false {
			status = "error"
		}
		send("execute_reply", map[string]any{"status": status, "execution_count": 0}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	if err := start(t, f, Options{}).Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestMalformedFramesAreIgnored(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		send("stream", "not an object", id)
		send("display_data", map[string]any{"data": "nope"}, id)
		send("execute_reply", map[string]any{"status": "ok", "execution_count": "NaN"}, id)
		send("execute_reply", map[string]any{"status": "ok", "execution_count": 1}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	res, err := start(t, f, Options{}).Execute(context.Background(), "1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "ok" || res.ExecutionCount != 1 || len(res.Outputs) != 0 {
		t.Fatalf("result = %+v", res)
	}
}

func TestStartStreamsOutputInOrderWithinTheCap(t *testing.T) {
	f := &fakeAgent{token: "t", script: func(req map[string]any, send func(string, any, string)) {
		id := msgID(req)
		send("stream", map[string]any{"name": "stdout", "text": "one\n"}, id)
		send("stream", map[string]any{"name": "stderr", "text": "two\n"}, id)
		send("stream", map[string]any{"name": "other", "text": "ignored\n"}, id)
		send("display_data", map[string]any{"data": map[string]any{"text/plain": "<fig>"}}, id)
		send("execute_result", map[string]any{"data": map[string]any{"text/plain": "3"}, "execution_count": 7}, id)
		send("error", map[string]any{"ename": "E", "evalue": "v", "traceback": []string{"t"}}, id)
		send("stream", map[string]any{"name": "stdout", "text": strings.Repeat("x", 3000)}, id)
		send("execute_reply", map[string]any{"status": "error", "execution_count": 7, "codebox_truncated_bytes": 5}, id)
		send("status", map[string]any{"execution_state": "idle"}, id)
	}}
	c := start(t, f, Options{MaxOutputBytes: 2000})
	var got []Event
	call, err := c.Start("x", "", func(e Event) { got = append(got, e) })
	if err != nil {
		t.Fatal(err)
	}
	defer call.Finish()
	res, err := call.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{}
	for _, e := range got {
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, " ") != "stdout stderr display result error stdout" {
		t.Fatalf("events = %v", kinds)
	}
	if got[0].Text != "one\n" || got[3].ExecutionCount != 7 || got[4].Error.Ename != "E" {
		t.Fatalf("events: %q %d %+v", got[0].Text, got[3].ExecutionCount, got[4].Error)
	}
	// What the cap kept is what was streamed; the rest is counted, with the agent's own.
	streamed := len(got[5].Text)
	if streamed == 0 || streamed >= 3000 || res.Stdout != "one\n"+got[5].Text {
		t.Fatalf("streamed %d bytes, stdout %q", streamed, res.Stdout)
	}
	if res.DroppedBytes != int64(3000-streamed+5) {
		t.Fatalf("dropped = %d, want %d", res.DroppedBytes, 3000-streamed+5)
	}
}
