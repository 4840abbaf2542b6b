package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// A hostile worker: user code runs in the agent's process and can write any frame to the
// daemon's websocket, with the current request's msg_id or none. These tests play such a
// worker with raw frames and hold the client to the memory it promises: one call keeps at
// most its output cap (MaxOutputBytes, items at itemOverhead each, at most MaxOutputItems
// of them), reads no frame larger than the cap plus frameSlack, and a frame outside a call
// ends the connection.

// rawAgent answers each request by calling script with a function that writes one raw
// frame (its text given by the test) and the request's msg_id.
type rawAgent struct {
	script func(id string, write func(frame string))
	// after runs once the script is done, still on the connection: frames sent between
	// calls.
	after func(write func(frame string))
	// big, when set, is written as the script's first frame: built before the test
	// measures, so what the fake agent allocates for it is not counted.
	big []byte
}

func (f *rawAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	write := func(frame string) { conn.WriteMessage(websocket.TextMessage, []byte(frame)) }
	for {
		var req map[string]any
		if err := conn.ReadJSON(&req); err != nil {
			return
		}
		if f.big != nil {
			conn.WriteMessage(websocket.TextMessage, f.big)
		}
		f.script(msgID(req), write)
		if f.after != nil {
			f.after(write)
		}
	}
}

func startRaw(t *testing.T, f *rawAgent, opts Options) *Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+ChannelsPath, "t", opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func frame(id, msgType, content string) string {
	return fmt.Sprintf(`{"header":{"msg_id":"x","msg_type":%q},"parent_header":{"msg_id":%q},"content":%s}`, msgType, id, content)
}

func finish(id string, write func(string)) {
	write(frame(id, "execute_reply", `{"status":"ok","execution_count":1}`))
	write(frame(id, "status", `{"execution_state":"idle"}`))
}

// allocated runs f and returns the bytes the whole process allocated meanwhile (the fake
// agent's included): an upper bound of the peak heap f caused.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// retained runs f and returns how much more live heap there is after it, with f's result
// still referenced by f.
func retained(f func()) int64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return int64(after.HeapAlloc) - int64(before.HeapAlloc)
}

func execute(t *testing.T, c *Client) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.Execute(ctx, "attack")
}

// Before: each {"":0} item was charged 1 byte and kept at ~456 bytes, so the 8 MiB cap let
// ~8 M of them (GiBs) pile up in one call.
func TestTinyItemFloodIsBounded(t *testing.T) {
	const n = maxFramesPerCall - 100 // within the frames a call may read
	c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
		item := frame(id, "display_data", `{"data":{"":0}}`)
		for i := 0; i < n; i++ {
			write(item)
		}
		finish(id, write)
	}}, Options{})
	var res *Result
	var err error
	kept := retained(func() { res, err = execute(t, c) })
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outputs) != MaxOutputItems || !res.Truncated {
		t.Fatalf("kept %d items (truncated %v), want %d and truncated", len(res.Outputs), res.Truncated, MaxOutputItems)
	}
	// The stated bound: the cap. A thousand tiny items are far below it.
	if kept > 2<<20 {
		t.Fatalf("the call's result holds %d KiB of heap, want at most 2 MiB", kept>>10)
	}
	t.Logf("%d tiny items sent, %d kept, %d KiB of heap retained", n, len(res.Outputs), kept>>10)
	runtime.KeepAlive(res)
}

// Before: Stdout += per frame copied the whole stdout each time; after 7 MiB, 1,000 one-byte
// frames allocated 7 GiB and took 2 s of CPU.
func TestStreamFramesDoNotCopyTheStream(t *testing.T) {
	const big, small = 7 << 20, 2000
	c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
		write(frame(id, "stream", fmt.Sprintf(`{"name":"stdout","text":%q}`, strings.Repeat("x", big))))
		one := frame(id, "stream", `{"name":"stdout","text":"y"}`)
		for i := 0; i < small; i++ {
			write(one)
		}
		finish(id, write)
	}}, Options{})
	var res *Result
	var err error
	alloc := allocated(func() { res, err = execute(t, c) })
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != big+small || res.Truncated {
		t.Fatalf("stdout %d bytes (truncated %v), want %d", len(res.Stdout), res.Truncated, big+small)
	}
	// Reading the big frame and building the stream costs a few times 7 MiB; a copy per
	// small frame would cost 2,000 × 7 MiB.
	if alloc > 128<<20 {
		t.Fatalf("the call allocated %d MiB, want at most 128 MiB", alloc>>20)
	}
	t.Logf("7 MiB + %d one-byte frames: %d MiB allocated in all", small, alloc>>20)
}

// Before: the read limit was 64 MiB whatever the cap, and a 63 MiB frame peaked at 219 MiB
// of heap.
func TestFrameOverTheLimitClosesTheConnection(t *testing.T) {
	const capBytes = 1 << 20
	f := &rawAgent{
		big:    []byte(frame("", "stream", `{"name":"stdout","text":"`+strings.Repeat("z", 63<<20)+`"}`)),
		script: func(id string, write func(string)) { finish(id, write) },
	}
	c := startRaw(t, f, Options{MaxOutputBytes: capBytes})
	var err error
	alloc := allocated(func() { _, err = execute(t, c) })
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "read limit") {
		t.Fatalf("err = %v, want ErrClosed for a frame over the read limit", err)
	}
	// The client reads at most cap + slack (2 MiB) of a frame before giving up; here the
	// frame's header already says it is too large.
	if alloc > 4<<20 {
		t.Fatalf("%d MiB allocated for a 63 MiB frame over the limit, want at most 4 MiB", alloc>>20)
	}
	t.Logf("a 63 MiB frame over a 2 MiB limit: %d KiB allocated", alloc>>10)
}

// A frame for another request, within the limit, is read and dropped: it costs its own
// bytes, not a decoded copy of its content.
func TestUnmatchedFrameCostsOnlyItsBytes(t *testing.T) {
	f := &rawAgent{
		big:    []byte(frame("someone-else", "stream", `{"name":"stdout","text":"`+strings.Repeat("u", 6<<20)+`"}`)),
		script: func(id string, write func(string)) { finish(id, write) },
	}
	c := startRaw(t, f, Options{})
	var res *Result
	var err error
	alloc := allocated(func() { res, err = execute(t, c) })
	if err != nil || res.Stdout != "" {
		t.Fatalf("err %v, stdout %d bytes", err, len(res.Stdout))
	}
	// The client's read buffer, grown by appending: about twice the frame in all.
	if alloc > uint64(3*len(f.big)) {
		t.Fatalf("%d MiB allocated for a %d MiB frame, want at most 3 times the frame", alloc>>20, len(f.big)>>20)
	}
	t.Logf("a %d MiB frame for another request: %d MiB allocated", len(f.big)>>20, alloc>>20)
}

// Frames outside a call: before, they were read and parsed for ever between calls.
func TestFrameBetweenCallsClosesTheConnection(t *testing.T) {
	c := startRaw(t, &rawAgent{
		script: func(id string, write func(string)) { finish(id, write) },
		after: func(write func(string)) {
			time.Sleep(100 * time.Millisecond) // the call is over by now
			write(frame("whatever", "stream", `{"name":"stdout","text":"spam"}`))
		},
	}, Options{})
	if _, err := execute(t, c); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open after a frame between calls")
	}
	if _, err := execute(t, c); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrMisbehaved) {
		t.Fatalf("next call: %v, want ErrClosed wrapping ErrMisbehaved", err)
	}
}

func TestHugeErrorIsCapped(t *testing.T) {
	const lines = 50_000
	c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
		tb := make([]string, lines)
		for i := range tb {
			tb[i] = fmt.Sprintf("%q", strings.Repeat("t", 100))
		}
		content := fmt.Sprintf(`{"ename":"E","evalue":%q,"traceback":[%s]}`, strings.Repeat("v", 3<<20), strings.Join(tb, ","))
		write(frame(id, "error", content))
		write(frame(id, "execute_reply", `{"status":"error","execution_count":1}`))
		write(frame(id, "status", `{"execution_state":"idle"}`))
	}}, Options{})
	res, err := execute(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if res.Error == nil || len(res.Error.Evalue) != 3<<20 || len(res.Error.Traceback) != maxTracebackLines || !res.Truncated {
		t.Fatalf("error kept: evalue %d bytes, %d traceback lines, truncated %v", len(res.Error.Evalue), len(res.Error.Traceback), res.Truncated)
	}
	kept := len(res.Error.Evalue)
	for _, l := range res.Error.Traceback {
		kept += len(l) + keyOverhead
	}
	if kept > DefaultMaxOutputBytes {
		t.Fatalf("error holds %d bytes, over the cap", kept)
	}
}

// A call whose deadline passed before its request left is a timeout of the call; the
// connection stays usable. Before, the send took the call's deadline and a write that timed
// out broke the websocket, and the daemon replaced the worker.
func TestExpiredDeadlineDoesNotBreakTheConnection(t *testing.T) {
	c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
		time.Sleep(50 * time.Millisecond)
		finish(id, write)
	}}, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	call, err := c.Start("1", "", nil)
	if err != nil {
		t.Fatalf("start after the deadline: %v", err)
	}
	if _, err := call.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait: %v, want the deadline", err)
	}
	// The daemon then interrupts and waits a grace period for idle.
	grace, cancelGrace := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelGrace()
	if _, err := call.Wait(grace); err != nil {
		t.Fatalf("after the deadline the call still completes: %v", err)
	}
	call.Finish()
	if _, err := execute(t, c); err != nil {
		t.Fatalf("next call: %v", err)
	}
}

// Output is charged what it costs in the daemon's JSON answer: a control character takes six
// bytes there. Before, the cap counted one, and 4 MiB of them made a 50 MB answer.
func TestOutputIsChargedItsJSONSize(t *testing.T) {
	const capBytes = 600
	c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
		write(frame(id, "stream", `{"name":"stdout","text":"`+strings.Repeat(`\u0001`, 1000)+`"}`))
		write(frame(id, "stream", `{"name":"stderr","text":"ä€😀 fits?"}`))
		finish(id, write)
	}}, Options{MaxOutputBytes: capBytes})
	res, err := execute(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != capBytes/6 || !res.Truncated || res.Stderr != "" {
		t.Fatalf("kept %d control characters and stderr %q, want %d and nothing", len(res.Stdout), res.Stderr, capBytes/6)
	}
	b, _ := json.Marshal(res.Stdout)
	if len(b)-2 > capBytes {
		t.Fatalf("the kept output encodes to %d bytes, over the cap", len(b)-2)
	}
}

func TestFitCutsAtACharacterAndCountsEscapes(t *testing.T) {
	for _, c := range []struct {
		s          string
		room, n, z int
	}{
		{"abc", 10, 3, 3},
		{"abc", 2, 2, 2},
		{"a\"b", 3, 2, 3},
		{"\x01x", 6, 1, 6},
		{"\x01x", 5, 0, 0},
		{"€x", 2, 0, 0}, // a three-byte character is not cut
		{"€x", 4, 4, 4},
		{"\u2028", 5, 0, 0},
		{"\xffa", 7, 2, 7},
	} {
		n, size := fit(c.s, c.room)
		if n != c.n || size != c.z {
			t.Errorf("fit(%q, %d) = %d, %d; want %d, %d", c.s, c.room, n, size, c.n, c.z)
		}
		if !utf8.ValidString(c.s[:n]) && utf8.ValidString(c.s) {
			t.Errorf("fit(%q, %d) cut a character", c.s, c.room)
		}
	}
}

// Frames cost the daemon CPU whatever they are for: a call reads a bounded number and
// amount, after which the worker is misbehaving. Before, a tenant's flood of frames for
// another request cost the daemon 14 times the CPU it cost the worker, without end.
func TestFloodInOneCallClosesTheConnection(t *testing.T) {
	for name, send := range map[string]func(id string, write func(string)){
		"frames for another request": func(id string, write func(string)) {
			f := frame("other", "stream", `{"name":"stdout","text":"`+strings.Repeat("x", 1<<20)+`"}`)
			for i := 0; i < 40; i++ {
				write(f)
			}
		},
		"tiny frames past the cap": func(id string, write func(string)) {
			f := frame(id, "stream", `{"name":"stdout","text":"x"}`)
			for i := 0; i < maxFramesPerCall+10; i++ {
				write(f)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := startRaw(t, &rawAgent{script: func(id string, write func(string)) {
				send(id, write)
				finish(id, write)
			}}, Options{MaxOutputBytes: 4 << 20})
			_, err := execute(t, c)
			if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrMisbehaved) {
				t.Fatalf("err = %v, want ErrClosed and ErrMisbehaved", err)
			}
		})
	}
}

func TestPingFromTheWorkerClosesTheConnection(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		var req map[string]any
		conn.ReadJSON(&req)
		for i := 0; i < 1000; i++ {
			if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)) != nil {
				return
			}
		}
		time.Sleep(time.Second)
	}))
	defer srv.Close()
	c, err := Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+ChannelsPath, "t", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := execute(t, c); !errors.Is(err, ErrMisbehaved) {
		t.Fatalf("err = %v, want ErrMisbehaved", err)
	}
}
