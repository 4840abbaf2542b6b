package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// TestHostileSessions attacks the daemon as a tenant would, through the public API: with
// what user code can plant on its disk, write to its agent's websocket or its worker's log,
// and with bad requests. Each attack must come back at once with a clear answer, bound the
// daemon's memory, and leave other sessions alone: a victim session executes throughout, and
// none of its calls may wait on the attacker's.
func TestHostileSessions(t *testing.T) {
	store := newObjectStore(t)
	d := startDaemon(t, "--min-idle-workers", "2", "--max-file-mb", "16", "--file-timeout", "20s",
		"--file-allowlist", "127.0.0.1/32")
	ctx := context.Background()
	attacker := "e2e-hostile-" + randomHex(3)
	victim := "e2e-victim-" + randomHex(3)
	d.exec(t, attacker, "1")
	d.exec(t, victim, "n = 0")
	startRSS := procBytes(t, d.cmd.Process.Pid, "VmRSS")

	// The victim counts for as long as the attacks run; every call must succeed and come
	// back promptly, whatever the attacker's calls are doing.
	var victimCalls atomic.Int64
	var victimSlowest atomic.Int64
	victimErr := make(chan error, 1)
	stopVictim := make(chan struct{})
	var victimDone sync.WaitGroup
	victimDone.Add(1)
	go func() {
		defer victimDone.Done()
		for i := 1; ; i++ {
			select {
			case <-stopVictim:
				return
			case <-time.After(50 * time.Millisecond):
			}
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			start := time.Now()
			r, err := d.client.Execute(cctx, victim, "n += 1\nn", 0)
			cancel()
			took := time.Since(start)
			if took.Nanoseconds() > victimSlowest.Load() {
				victimSlowest.Store(took.Nanoseconds())
			}
			if err == nil && (r.ResultText == nil || *r.ResultText != fmt.Sprint(i)) {
				err = fmt.Errorf("victim call %d: state lost: %+v", i, r)
			}
			if err != nil {
				victimErr <- err
				return
			}
			victimCalls.Add(1)
		}
	}()

	h := &hostileRun{d: d, store: store, ctx: ctx, attacker: attacker, victim: victim}
	// quickly fails unless f returns within the given time: before the fixes, several of
	// these attacks blocked for ever.
	h.quickly = func(t *testing.T, within time.Duration, what string, f func()) time.Duration {
		t.Helper()
		done := make(chan struct{})
		start := time.Now()
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(within):
			t.Fatalf("%s did not return within %s", what, within)
		}
		took := time.Since(start)
		t.Logf("%s: %s", what, took.Round(time.Millisecond))
		return took
	}
	h.ok = func(t *testing.T, code string) string {
		t.Helper()
		r := d.exec(t, attacker, code)
		if r.Error != nil {
			t.Fatalf("%q raised %s: %s", code, r.Error.Ename, r.Error.Evalue)
		}
		return r.Stdout
	}

	for _, a := range []struct {
		name   string
		attack func(t *testing.T)
	}{
		{"a FIFO neither wedges the session nor holds a transfer slot", h.fifo},
		{"a sparse terabyte is refused before a byte moves", h.sparseTerabyte},
		{"a huge directory is listed a bounded page at a time", h.hugeDirectory},
		{"forged frames from user code cost only their cap", h.forgedFrames},
		{"a huge exception is capped and the session lives", h.hugeException},
		{"the worker's init's stdout does not fill the host's disk", h.initStdout},
		{"release never waits behind a wedged call", h.releaseWedgedCall},
		{"release never waits behind a download nobody reads", h.releaseUnreadDownload},
		{"answers nobody reads hold their session, not the daemon's memory", h.unreadAnswers},
		{"bad requests are a clear 4xx and the session stays", h.badRequests},
	} {
		t.Run(a.name, a.attack)
		t.Logf("after %q: daemon RSS %d MiB", a.name, procBytes(t, d.cmd.Process.Pid, "VmRSS")>>20)
	}

	close(stopVictim)
	victimDone.Wait()
	select {
	case err := <-victimErr:
		t.Fatalf("the victim's calls failed during the attacks: %v", err)
	default:
	}
	slowest := time.Duration(victimSlowest.Load())
	t.Logf("victim: %d calls during the attacks, slowest %s", victimCalls.Load(), slowest.Round(time.Millisecond))
	if slowest > 5*time.Second {
		t.Errorf("a victim call took %s: it waited on the attacker's", slowest)
	}
	endRSS := procBytes(t, d.cmd.Process.Pid, "VmRSS")
	t.Logf("daemon RSS: %d MiB before the attacks, %d MiB after", startRSS>>20, endRSS>>20)
	if endRSS-startRSS > 64<<20 {
		t.Errorf("the daemon's RSS grew by %d MiB over the attacks, want at most 64 MiB", (endRSS-startRSS)>>20)
	}
	d.client.Release(ctx, attacker)
	d.client.Release(ctx, victim)
}

// hostileRun is what TestHostileSessions' attacks share: the daemon, an object store, the
// attacker's and the victim's sessions, and two helpers.
type hostileRun struct {
	d                *daemon
	store            *objectStore
	ctx              context.Context
	attacker, victim string
	// quickly fails unless f returns within the given time: before the fixes, several of
	// these attacks blocked for ever.
	quickly func(t *testing.T, within time.Duration, what string, f func()) time.Duration
	// ok runs code in the attacker's session and returns its stdout; an exception fails.
	ok func(t *testing.T, code string) string
}

// fifo: a FIFO neither wedges the session nor holds a transfer slot.
func (h *hostileRun) fifo(t *testing.T) {
	d, store, ctx, attacker, victim, ok, quickly := h.d, h.store, h.ctx, h.attacker, h.victim, h.ok, h.quickly
	ok(t, "import os\nfor i in range(10): os.mkfifo(f'/sandbox/out{i}.csv')\nos.mkfifo('/sandbox/out.csv')")
	quickly(t, 5*time.Second, "GET of a FIFO", func() {
		_, err := d.client.GetFile(ctx, attacker, "/sandbox/out.csv", io.Discard)
		if statusOf(err) != 409 || !strings.Contains(err.Error(), "a FIFO") {
			t.Errorf("GET: %v, want 409 naming a FIFO", err)
		}
	})
	// More FIFOs than transfer slots, exported at once, while another session imports.
	var exports []api.FileExport
	for i := 0; i < 10; i++ {
		exports = append(exports, api.FileExport{Path: "/sandbox/", Name: fmt.Sprintf("out%d.csv", i), UploadURL: store.URL + "/blob/x"})
	}
	quickly(t, 10*time.Second, "export of 10 FIFOs and an import by another session", func() {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := d.client.ExportFiles(ctx, attacker, exports)
			if err != nil || resp.Success || len(resp.Errors) != 10 || !strings.Contains(resp.Errors[0].Detail, "FIFO") {
				t.Errorf("export: %+v %v", resp, err)
			}
		}()
		resp, err := d.client.ImportFiles(ctx, victim, []api.FileImport{{DownloadURL: store.put("v", []byte("v")), Name: "v.txt"}})
		if err != nil || !resp.Success {
			t.Errorf("the victim's import: %+v %v", resp, err)
		}
		wg.Wait()
	})
	quickly(t, 5*time.Second, "the next execute", func() { ok(t, "'still here'") })
}

// sparseTerabyte: a sparse terabyte is refused before a byte moves.
func (h *hostileRun) sparseTerabyte(t *testing.T) {
	d, store, ctx, attacker, ok, quickly := h.d, h.store, h.ctx, h.attacker, h.ok, h.quickly
	ok(t, "open('/sandbox/huge', 'wb').truncate(1 << 40)")
	quickly(t, 5*time.Second, "GET of a 1 TiB sparse file", func() {
		n, err := d.client.GetFile(ctx, attacker, "/sandbox/huge", io.Discard)
		if statusOf(err) != 413 || n != 0 {
			t.Errorf("GET: %d bytes, %v; want 413 and nothing sent", n, err)
		}
	})
	quickly(t, 5*time.Second, "export of it", func() {
		resp, err := d.client.ExportFiles(ctx, attacker, []api.FileExport{{Path: "/sandbox/", Name: "huge", UploadURL: store.URL + "/blob/huge"}})
		if err != nil || resp.Success || !strings.Contains(resp.Errors[0].Detail, "larger than") {
			t.Errorf("export: %+v %v", resp, err)
		}
	})
	if b := store.get("huge"); len(b) != 0 {
		t.Errorf("%d bytes of it reached the object store", len(b))
	}
	ok(t, "import os; os.remove('/sandbox/huge')")
}

// hugeDirectory: a huge directory is listed a bounded page at a time.
func (h *hostileRun) hugeDirectory(t *testing.T) {
	d, ctx, attacker, ok := h.d, h.ctx, h.attacker, h.ok
	const n = 25_000
	ok(t, fmt.Sprintf("import os\nos.mkdir('/sandbox/many')\nopen('/sandbox/many/t', 'w').close()\nfor i in range(%d): os.link('/sandbox/many/t', '/sandbox/many/' + 'n' * 150 + str(i))", n))
	seen := 0
	pages := 0
	for offset := 0; ; pages++ {
		page, err := d.client.ListFiles(ctx, attacker, "/sandbox/many/", offset, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Entries) > api.MaxListEntries {
			t.Fatalf("a page of %d entries", len(page.Entries))
		}
		seen += len(page.Entries)
		if !page.Truncated {
			break
		}
		offset = page.NextOffset
	}
	if seen != n+1 || pages != 2 {
		t.Fatalf("%d entries in %d pages, want %d in 3", seen, pages+1, n+1)
	}
	ok(t, "import shutil; shutil.rmtree('/sandbox/many')")
}

// forgedFrames: forged frames from user code cost only their cap.
func (h *hostileRun) forgedFrames(t *testing.T) {
	d, ctx, attacker, ok := h.d, h.ctx, h.attacker, h.ok
	// User code reaches the agent's own objects and writes frames answering the current
	// request: 60,000 tiny display items, within what a call may read.
	flood := func(n int) string {
		return fmt.Sprintf(`
import gc
agent = next(o for o in gc.get_objects() if type(o).__name__ == 'Agent')
conn = agent.outbox.current.conn
item = agent.outbox.framer.frame('display_data', {'data': {'': 0}, 'metadata': {}}, agent.outbox.current.header, 'iopub')
for _ in range(%d):
    conn.write_texts([item] * 10_000)
print('sent')`, n/10_000)
	}
	r := d.exec(t, attacker, flood(60_000))
	if len(r.Results) > 1000 || !r.Truncated || r.Stdout != "sent\n" {
		t.Fatalf("kept %d items (truncated %v), stdout %q", len(r.Results), r.Truncated, r.Stdout)
	}
	// More frames than a call may read: the worker is misbehaving and is replaced.
	if _, err := d.client.Execute(ctx, attacker, flood(200_000), 0); statusOf(err) != 503 {
		t.Fatalf("a flood past the frames a call may read: %v, want 503 (worker replaced)", err)
	}
	if r := d.exec(t, attacker, "1"); !r.NewSession {
		t.Fatalf("after the flood: %+v, want a new session", r)
	}
	// A frame written after the call ended: the daemon closes the connection and
	// replaces the worker at the session's next call, which says so.
	ok(t, `
import gc, threading, time
agent = next(o for o in gc.get_objects() if type(o).__name__ == 'Agent')
conn, hdr = agent.outbox.current.conn, agent.outbox.current.header
def later():
    time.sleep(0.5)
    conn.write_texts([agent.outbox.framer.frame('stream', {'name': 'stdout', 'text': 'forged'}, hdr, 'iopub')])
threading.Thread(target=later).start()`)
	time.Sleep(time.Second)
	_, err := d.client.Execute(ctx, attacker, "1", 0)
	if statusOf(err) != 503 {
		t.Fatalf("the call after a frame outside a call: %v, want 503 (worker replaced)", err)
	}
	r = d.exec(t, attacker, "'fresh'")
	if !r.NewSession || r.ResultText == nil || *r.ResultText != "'fresh'" {
		t.Fatalf("the next call: %+v, want a new session", r)
	}
}

// hugeException: a huge exception is capped and the session lives.
func (h *hostileRun) hugeException(t *testing.T) {
	d, attacker, ok := h.d, h.attacker, h.ok
	ok(t, "keep = 42")
	r := d.exec(t, attacker, "raise ValueError('v' * 10_000_000)")
	if r.Error == nil || r.Error.Ename != "ValueError" || len(r.Error.Evalue) > 4<<20 || !r.Truncated {
		t.Fatalf("error %+v, detail of %d bytes, truncated %v", r.Error != nil, len(r.Detail), r.Truncated)
	}
	if r := d.exec(t, attacker, "keep"); r.ResultText == nil || *r.ResultText != "42" {
		t.Fatalf("the session lost its state: %+v", r)
	}
}

// initStdout: the worker's init's stdout does not fill the host's disk.
func (h *hostileRun) initStdout(t *testing.T) {
	d, attacker := h.d, h.attacker
	// The init's stdout: in the worker's user namespace tini (whose binary it does not
	// own) is not dumpable, so /proc/1/fd is closed to user code; and the agent's own copy
	// of the log's pipe, which user code can always reach, for 20 MiB.
	r := d.exec(t, attacker, `
import gc, os
try:
    open('/proc/1/fd/1', 'wb').close()
    print('init stdout: open')
except PermissionError:
    print('init stdout: refused')
log = next(o for o in gc.get_objects() if type(o).__name__ == 'Log')
sent = 0
for i in range(20 * 64):
    try:
        sent += os.write(log.fd, b'x' * (16 << 10))
    except BlockingIOError:
        pass
print('written', sent > 0)`)
	if !strings.HasSuffix(r.Stdout, "written True\n") {
		t.Fatalf("the writes failed or blocked: %+v", r)
	}
	t.Logf("%s", strings.TrimSpace(r.Stdout))
	logs, _ := filepath.Glob(filepath.Join(d.stateDir, "logs", r.WorkerID+".log*"))
	var total int64
	for _, l := range logs {
		st, err := os.Stat(l)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	if len(logs) == 0 || total > 2<<20+4096 {
		t.Fatalf("20 MiB written to the worker's log: %d bytes in %v on the host, want at most 2 MiB", total, logs)
	}
	t.Logf("20 MiB written to the worker's log: %d bytes on the host", total)
}

// releaseWedgedCall: release never waits behind a wedged call.
func (h *hostileRun) releaseWedgedCall(t *testing.T) {
	d, ctx, attacker, quickly := h.d, h.ctx, h.attacker, h.quickly
	wedged := make(chan error, 1)
	go func() {
		_, err := d.client.Execute(ctx, attacker, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)", 120*time.Second)
		wedged <- err
	}()
	time.Sleep(time.Second)
	quickly(t, 10*time.Second, "release during a call that ignores SIGINT", func() {
		if err := d.client.Release(ctx, attacker); err != nil {
			t.Errorf("release: %v", err)
		}
	})
	select {
	case err := <-wedged:
		if statusOf(err) != 503 || !strings.Contains(err.Error(), "released") {
			t.Errorf("the wedged call: %v, want 503 saying the session was released", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wedged call did not end with the release")
	}
	if r := d.exec(t, attacker, "1"); !r.NewSession {
		t.Fatalf("after the release: %+v, want a new session", r)
	}
}

// releaseUnreadDownload: release never waits behind a download nobody reads.
func (h *hostileRun) releaseUnreadDownload(t *testing.T) {
	d, ctx, attacker, ok, quickly := h.d, h.ctx, h.attacker, h.ok, h.quickly
	ok(t, "open('/sandbox/big.bin', 'wb').write(b'x' * (15 << 20))")
	conn, err := net.Dial("tcp", strings.TrimPrefix(d.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Ask for the file and never read the answer: the daemon's writes block.
	fmt.Fprintf(conn, "GET /api/v1/files/content?user_uuid=%s&path=/sandbox/big.bin HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\n\r\n", attacker, d.token)
	time.Sleep(time.Second)
	quickly(t, 10*time.Second, "release during a stalled download", func() {
		if err := d.client.Release(ctx, attacker); err != nil {
			t.Errorf("release: %v", err)
		}
	})
	// The daemon gave up on the download: the answer ends short.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := io.Copy(io.Discard, bufio.NewReader(conn))
	if n >= 15<<20 {
		t.Fatalf("the whole file was sent after the release: %d bytes", n)
	}
}

// unreadAnswers: answers nobody reads hold their session, not the daemon's memory.
func (h *hostileRun) unreadAnswers(t *testing.T) {
	d, ctx, attacker, quickly := h.d, h.ctx, h.attacker, h.quickly
	// Each answer escapes a control character to six bytes, and result_text repeats
	// stdout: before, 4 MiB of them made a 50 MB answer, and a caller that never read
	// its answers could stack one a second until the daemon ran out of memory.
	code := `{"code": "import sys; sys.stdout.write('\\x01' * ((4 << 20) - 200))"}`
	before := procBytes(t, d.cmd.Process.Pid, "VmRSS")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 6; i++ {
		c, err := net.Dial("tcp", strings.TrimPrefix(d.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetReadBuffer(4096)
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /api/v1/execute?user_uuid=%s HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nContent-Length: %d\r\n\r\n%s",
			attacker, d.token, len(code), code)
	}
	time.Sleep(5 * time.Second)
	grew := procBytes(t, d.cmd.Process.Pid, "VmRSS") - before
	t.Logf("6 answers unread: daemon RSS +%d MiB", grew>>20)
	if grew > 96<<20 {
		t.Fatalf("6 unread answers cost the daemon %d MiB", grew>>20)
	}
	quickly(t, 10*time.Second, "release with answers unread", func() {
		if err := d.client.Release(ctx, attacker); err != nil {
			t.Errorf("release: %v", err)
		}
	})
}

// badRequests: bad requests are a clear 4xx and the session stays.
func (h *hostileRun) badRequests(t *testing.T) {
	d, attacker := h.d, h.attacker
	r := d.exec(t, attacker, "state = 'kept'")
	worker := r.WorkerID
	hdr := map[string]string{"X-Auth-Token": d.token}
	q := "?user_uuid=" + attacker
	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": 1e-400}`, 422}, // rounds to 0
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": 1e10}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": 1e300}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": 0}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": -5}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": "10"}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "timeout": 1e999}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": ""}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": ["1"]}`, 422},
		{"POST", "/api/v1/execute" + q, `{"code": "1", "user_uuid": "someone-else"}`, 422},
		{"POST", "/api/v1/execute" + q, `not json`, 400},
		{"POST", "/api/v1/execute" + q, `{"code": "1"}{"code": "2"}`, 400},
		{"POST", "/api/v1/execute?user_uuid=a/b", `{"code": "1"}`, 422},
		{"POST", "/api/v1/execute?user_uuid=" + strings.Repeat("u", 129), `{"code": "1"}`, 422},
		{"GET", "/api/v1/files/list" + q + "&offset=-1", "", 422},
		{"GET", "/api/v1/files/list" + q + "&offset=x", "", 422},
		{"GET", "/api/v1/files/list" + q + "&limit=0", "", 422},
		{"GET", "/api/v1/files/list" + q + "&limit=10001", "", 422},
		{"GET", "/api/v1/files/list" + q + "&limit=99999999999999999999", "", 422},
		{"GET", "/api/v1/files/list" + q + "&path=/etc", "", 400},
		{"GET", "/api/v1/files/content" + q + "&path=/sandbox/../etc/passwd", "", 400},
		{"GET", "/api/v1/files/content" + q + "&path=/sandbox/a%00b", "", 400},
		{"PUT", "/api/v1/files/content" + q + "&path=/sandbox/", "x", 400},
		{"POST", "/api/v1/files" + q, `{"files": []}`, 422},
		{"POST", "/api/v1/files" + q, `{"files": [{"download_url": "ftp://x/y", "name": "y"}]}`, 400},
		{"POST", "/api/v1/files" + q, `{"files": [{"download_url": "http://127.0.0.1/y", "name": ".."}]}`, 400},
		{"DELETE", "/api/v1/files" + q, `{"files": [{"path": "/sandbox/", "name": "a/b"}]}`, 400},
	} {
		code, _, body := d.request(t, c.method, c.path, c.body, hdr)
		if code != c.status || !strings.Contains(body, `"detail"`) {
			t.Errorf("%s %s %.60s: %d %s, want %d with a detail", c.method, c.path, c.body, code, body, c.status)
		}
	}
	// A tiny timeout is a timeout of the call, never a lost worker.
	for _, timeout := range []string{"1e-9", "0.000001"} {
		code, _, body := d.request(t, "POST", "/api/v1/execute"+q, `{"code": "import time; time.sleep(1)", "timeout": `+timeout+`}`, hdr)
		if code != 504 || !strings.Contains(body, `"state_preserved":true`) {
			t.Errorf("timeout %s: %d %s, want 504 with the state preserved", timeout, code, body)
		}
	}
	r = d.exec(t, attacker, "state")
	if r.WorkerID != worker || r.ResultText == nil || *r.ResultText != "'kept'" {
		t.Fatalf("after the bad requests: %+v, want the same worker and its state", r)
	}
}

// TestOverloadIsSummarised fills the pool and sends requests that must be refused: the
// log gets a few lines and a count, not a line per request.
func TestOverloadIsSummarised(t *testing.T) {
	d := startDaemon(t, "--max-total-workers", "1", "--log-level", "info")
	ctx := context.Background()
	holder := "e2e-overload-" + randomHex(3)
	d.exec(t, holder, "1")
	before := strings.Count(d.logs.String(), "\n")
	var wg sync.WaitGroup
	var refused atomic.Int32
	// 32 at a time: 300 connections opened at once from one address would meet the bound on
	// connections that have not yet authenticated (256 a source), which is another test's.
	slots := make(chan struct{}, 32)
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			_, err := d.client.Execute(ctx, fmt.Sprintf("e2e-overload-%d", i), "1", 0)
			var ae *api.Error
			if errors.As(err, &ae) && ae.Status == 503 {
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	if refused.Load() != 300 {
		t.Fatalf("%d of 300 refused, want all", refused.Load())
	}
	// The summary comes at the end of its interval.
	eventually(t, 15*time.Second, "the summary of failed requests", func() bool {
		return strings.Contains(d.logs.String(), "failed requests not logged one by one")
	})
	lines := strings.Count(d.logs.String(), "\n") - before
	if !strings.Contains(d.logs.String(), "status_503=") || lines > 20 {
		t.Fatalf("300 refused requests wrote %d log lines (want at most 20, with a summary):\n%s", lines, d.logs.String())
	}
	t.Logf("300 refused requests: %d log lines", lines)
	d.client.Release(ctx, holder)
}
