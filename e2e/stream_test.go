package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codebox/codebox/api"
)

// tenLines prints a line every 200 ms for 2 s.
const tenLines = "import time\nfor i in range(10):\n    print('line', i, flush=True)\n    time.sleep(0.2)"

// arrival is an event and when the client had it.
type arrival struct {
	api.Event
	at time.Time
}

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dialWS(t *testing.T, d *daemon, user string, header bool) *wsClient {
	t.Helper()
	h := http.Header{}
	if header {
		h.Set("X-Auth-Token", d.token)
	}
	url := "ws" + strings.TrimPrefix(d.url, "http") + "/api/v1/stream?user_uuid=" + user
	conn, _, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &wsClient{t, conn}
}

func (c *wsClient) send(m map[string]any) {
	c.t.Helper()
	if err := c.conn.WriteJSON(m); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsClient) next() arrival {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(time.Minute))
	var e api.Event
	if err := c.conn.ReadJSON(&e); err != nil {
		c.t.Fatalf("read event: %v", err)
	}
	return arrival{e, time.Now()}
}

// until reads up to call id's done event.
func (c *wsClient) until(id string) []arrival {
	c.t.Helper()
	var got []arrival
	for {
		a := c.next()
		got = append(got, a)
		if a.Type == api.EventDone && a.ID == id {
			return got
		}
	}
}

// checkArrivals asserts a ten-line call's output reached the client as it was printed:
// in order, the first line well before the call ended.
func checkArrivals(t *testing.T, how string, got []arrival) {
	t.Helper()
	var lines []arrival
	for _, a := range got {
		if a.Type == api.EventStdout {
			lines = append(lines, a)
		}
	}
	done := got[len(got)-1]
	var text strings.Builder
	for _, l := range lines {
		text.WriteString(l.Text)
	}
	if done.Type != api.EventDone || done.Status != api.DoneOK || !strings.HasPrefix(text.String(), "line 0\nline 1\n") || !strings.HasSuffix(text.String(), "line 9\n") {
		t.Fatalf("%s: output %q, done %+v", how, text.String(), done.Event)
	}
	// The cell runs 2 s: a first line that waited for its end would arrive with done.
	if early := done.at.Sub(lines[0].at); early < time.Second {
		t.Fatalf("%s: the first line arrived only %s before done", how, early)
	}
	t.Logf("%s: first line %s before done, %d stdout events", how, done.at.Sub(lines[0].at).Round(time.Millisecond), len(lines))
}

func TestStreaming(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()

	t.Run("websocket delivers output as it is printed", func(t *testing.T) {
		user := "e2e-ws-" + randomHex(3)
		defer d.client.Release(ctx, user)
		ws := dialWS(t, d, user, true)
		ws.send(map[string]any{"type": "execute", "id": "warm", "code": "1"})
		if got := ws.until("warm"); !got[len(got)-1].NewSession {
			t.Fatalf("first call: %+v", got)
		}
		ws.send(map[string]any{"type": "execute", "id": "ten", "code": tenLines})
		checkArrivals(t, "websocket", ws.until("ten"))
	})

	t.Run("server-sent events deliver output as it is printed", func(t *testing.T) {
		user := "e2e-sse-" + randomHex(3)
		defer d.client.Release(ctx, user)
		d.exec(t, user, "1")
		var got []arrival
		for e, err := range d.client.Stream(ctx, user, api.ExecuteRequest{Code: tenLines}) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, arrival{e, time.Now()})
		}
		checkArrivals(t, "Go client", got)

		// curl, a client we did not write, reading the same stream.
		body, _ := json.Marshal(api.ExecuteRequest{Code: tenLines})
		cmd := exec.Command("curl", "-sS", "-N", "--max-time", "60", "-H", "X-Auth-Token: "+d.token,
			"-H", "Accept: text/event-stream", "-H", "Content-Type: application/json",
			"--data-binary", string(body), d.url+"/api/v1/execute?user_uuid="+user)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("curl: %v", err)
		}
		defer cmd.Wait()
		got = nil
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var e api.Event
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				t.Fatalf("curl got %q: %v", data, err)
			}
			got = append(got, arrival{e, time.Now()})
		}
		if len(got) == 0 {
			t.Fatal("curl read no events")
		}
		checkArrivals(t, "curl", got)
	})

	t.Run("calls on a socket and over REST share the session's order", func(t *testing.T) {
		user := "e2e-order-" + randomHex(3)
		defer d.client.Release(ctx, user)
		ws := dialWS(t, d, user, true)
		ws.send(map[string]any{"type": "execute", "id": "c1", "code": "print('a', flush=True)\nimport time\ntime.sleep(1)\nx = 41"})
		ws.send(map[string]any{"type": "execute", "id": "c2", "code": "print('b')\nx"})
		ws.send(map[string]any{"type": "execute", "id": "c3", "code": "1/0"})
		if a := ws.next(); a.ID != "c1" || a.Text != "a\n" {
			t.Fatalf("first event %+v", a.Event)
		}
		// c1 runs: a REST call waits its turn behind the socket's queued calls.
		rest := make(chan *api.ExecuteResponse, 1)
		go func() {
			r, err := d.client.Execute(ctx, user, "x + 1", 0)
			if err != nil {
				t.Error(err)
			}
			rest <- r
		}()
		var seq []string
		for _, id := range []string{"c1", "c2", "c3"} {
			for _, a := range ws.until(id) {
				seq = append(seq, a.ID+":"+a.Type+":"+strings.TrimSpace(a.Text+a.Ename+a.Status))
			}
		}
		want := "c1:done:ok c2:stdout:b c2:result: c2:done:ok c3:error:ZeroDivisionError c3:done:error"
		if strings.Join(seq, " ") != want {
			t.Fatalf("events\n got %s\nwant %s", strings.Join(seq, " "), want)
		}
		if r := <-rest; r == nil || r.ResultText == nil || *r.ResultText != "42" {
			t.Fatalf("REST call: %+v", r)
		}
	})

	t.Run("interrupt stops the code and keeps the session", func(t *testing.T) {
		user := "e2e-intr-" + randomHex(3)
		defer d.client.Release(ctx, user)
		first := d.exec(t, user, "y = 5")
		ws := dialWS(t, d, user, false)
		ws.send(map[string]any{"type": "auth", "token": d.token}) // as a browser does
		ws.send(map[string]any{"type": "execute", "id": "loop", "code": "import time\nprint('running', flush=True)\nwhile True:\n    time.sleep(0.05)"})
		if a := ws.next(); a.Text != "running\n" {
			t.Fatalf("first event %+v", a.Event)
		}
		start := time.Now()
		ws.send(map[string]any{"type": "interrupt", "id": "loop"})
		got := ws.until("loop")
		done := got[len(got)-1]
		if done.Status != api.DoneInterrupted || !done.StatePreserved || got[0].Ename != "KeyboardInterrupt" {
			t.Fatalf("after interrupt: %+v", got)
		}
		t.Logf("interrupt to done: %s", time.Since(start).Round(time.Millisecond))
		ws.send(map[string]any{"type": "execute", "id": "y", "code": "y"})
		got = ws.until("y")
		var value string
		json.Unmarshal(got[0].Data["text/plain"], &value)
		if value != "5" || got[len(got)-1].WorkerID != first.WorkerID {
			t.Fatalf("state after interrupt: %+v", got)
		}
	})

	t.Run("a stalled reader costs a bounded buffer", func(t *testing.T) {
		user := "e2e-stall-" + randomHex(3)
		defer d.client.Release(ctx, user)
		d.exec(t, user, "1")
		ws := dialWS(t, d, user, true)
		before := procBytes(t, d.cmd.Process.Pid, "VmRSS")
		ws.send(map[string]any{"type": "execute", "id": "flood", "code": "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * (1 << 20))"})
		// Nobody reads while the cell writes 50 MB; the daemon's memory is sampled.
		var peak int64
		for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); {
			peak = max(peak, procBytes(t, d.cmd.Process.Pid, "VmRSS"))
			time.Sleep(50 * time.Millisecond)
		}
		var received int64
		got := ws.until("flood")
		for _, a := range got {
			received += int64(len(a.Text))
		}
		done := got[len(got)-1]
		t.Logf("50 MB to a stalled reader: %d MB received, %d MB dropped; daemon RSS %d MB before, peak %d MB",
			received>>20, done.DroppedBytes>>20, before>>20, peak>>20)
		if done.Status != api.DoneOK || done.DroppedBytes == 0 || received+done.DroppedBytes < 50<<20 {
			t.Fatalf("done %+v after %d bytes", done.Event, received)
		}
		// The stream's buffer (1 MiB) and the call's output cap (8 MiB) are the bound.
		if grew := peak - before; grew > 32<<20 {
			t.Fatalf("daemon RSS grew %d MB while a reader stalled", grew>>20)
		}
	})

	t.Run("a socket dropped mid-call leaves the session usable", func(t *testing.T) {
		user := "e2e-drop-" + randomHex(3)
		defer d.client.Release(ctx, user)
		first := d.exec(t, user, "z = 3")
		ws := dialWS(t, d, user, true)
		ws.send(map[string]any{"type": "execute", "id": "long", "code": "import time\nprint('go', flush=True)\ntime.sleep(60)"})
		if a := ws.next(); a.Text != "go\n" {
			t.Fatalf("first event %+v", a.Event)
		}
		ws.conn.NetConn().Close() // gone, without a close frame
		start := time.Now()
		r := d.exec(t, user, "z * 2")
		if r.ResultText == nil || *r.ResultText != "6" || r.WorkerID != first.WorkerID {
			t.Fatalf("next REST call: %+v", r)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Fatalf("the next call waited %s for the abandoned one", took)
		}
		t.Logf("next REST call after the drop: %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("bad messages get errors, the socket goes on", func(t *testing.T) {
		user := "e2e-bad-" + randomHex(3)
		defer d.client.Release(ctx, user)
		ws := dialWS(t, d, user, true)
		ws.conn.WriteMessage(websocket.TextMessage, []byte("{not json"))
		ws.send(map[string]any{"type": "launch", "id": "x"})
		ws.send(map[string]any{"type": "execute", "code": "1"})
		for range 3 {
			if a := ws.next(); a.Type != api.EventError || a.Ename != api.ProtocolError {
				t.Fatalf("event %+v", a.Event)
			}
		}
		ws.send(map[string]any{"type": "execute", "id": "ok", "code": "2 + 2"})
		if got := ws.until("ok"); got[len(got)-1].Status != api.DoneOK {
			t.Fatalf("after bad messages: %+v", got)
		}
	})
}
