package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/apiserver"
)

// fakeBackend is the daemon as the tools see it: sessions of files and canned answers.
func (f *fakeBackend) CreateSession(ctx context.Context, req api.CreateSessionRequest) (*api.Session, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}
func (f *fakeBackend) ListSessions(ctx context.Context, q api.SessionQuery) (*api.SessionList, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}
func (f *fakeBackend) GetSession(ctx context.Context, id string) (*api.Session, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}
func (f *fakeBackend) UpdateSession(ctx context.Context, id string, req api.UpdateSessionRequest) (*api.Session, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}
func (f *fakeBackend) DeleteSession(ctx context.Context, id string) error {
	return api.Fail(api.Internal, "not in this fake")
}

func (f *fakeBackend) SetNetwork(ctx context.Context, id string, p api.NetworkPolicy) (*api.Session, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}

func (f *fakeBackend) NetworkEvents(ctx context.Context, id string, since uint64, limit int) (*api.NetworkEvents, error) {
	return nil, api.Fail(api.Internal, "not in this fake")
}

func (f *fakeBackend) Environments(ctx context.Context) ([]api.Environment, error) {
	return []api.Environment{{Name: "default", Image: "img", Languages: api.Languages, Available: true},
		{Name: "data", Image: "img:data", Languages: []string{"python"}, Seed: true, Available: true}}, nil
}

type fakeBackend struct {
	mu       sync.Mutex
	users    []string
	files    map[string][]byte
	released []string
	// exec answers an execute; it may stream events to out first.
	exec func(ctx context.Context, req api.ExecuteRequest, out api.Output) error
}

func (f *fakeBackend) Execute(ctx context.Context, user string, req api.ExecuteRequest, out api.Output) error {
	f.mu.Lock()
	f.users = append(f.users, user)
	f.mu.Unlock()
	return f.exec(ctx, req, out)
}
func (f *fakeBackend) Release(ctx context.Context, user string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, user)
	return nil
}
func (f *fakeBackend) Status() api.Status             { return api.Status{} }
func (f *fakeBackend) Ping(ctx context.Context) error { return nil }
func (f *fakeBackend) ImportFiles(context.Context, string, []api.FileImport) (*api.FilesResponse, error) {
	return nil, api.Fail(api.Internal, "unused")
}
func (f *fakeBackend) ExportFiles(context.Context, string, []api.FileExport) (*api.FilesResponse, error) {
	return nil, api.Fail(api.Internal, "unused")
}
func (f *fakeBackend) DeleteFiles(context.Context, string, []api.FileRef) (*api.FilesResponse, error) {
	return nil, api.Fail(api.Internal, "unused")
}
func (f *fakeBackend) PutFile(ctx context.Context, user, p string, body io.Reader) (*api.FileResult, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[p] = b
	return &api.FileResult{FullPath: p, Size: int64(len(b))}, nil
}
func (f *fakeBackend) GetFile(ctx context.Context, user, p string, send func(context.Context, string, time.Time, io.ReadSeeker) error) error {
	f.mu.Lock()
	b, ok := f.files[p]
	f.mu.Unlock()
	if !ok {
		return api.Fail(api.NotFound, "no file %s", p)
	}
	return send(ctx, p[strings.LastIndex(p, "/")+1:], time.Time{}, bytes.NewReader(b))
}
func (f *fakeBackend) ListFiles(ctx context.Context, user, p string, offset, limit int) (*api.ListResponse, error) {
	return nil, api.Fail(api.NotFound, "no session")
}

func reply(resp *api.ExecuteResponse, err error) func(context.Context, api.ExecuteRequest, api.Output) error {
	return func(ctx context.Context, _ api.ExecuteRequest, out api.Output) error {
		return out.Reply(ctx, resp, err)
	}
}

type bearer struct{ base http.RoundTripper }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer t0ken")
	return b.base.RoundTrip(r)
}

// serve runs the endpoint behind the API's router, as codeboxd does.
func serve(t *testing.T, b api.Backend, cfg Config) (*Handler, string) {
	t.Helper()
	cfg.Backend = b
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apiserver.NewHandler(b, apiserver.ServerConfig{Token: "t0ken", MCP: h, MaxExecTimeout: time.Minute}))
	t.Cleanup(srv.Close)
	return h, srv.URL + "/mcp"
}

func connect(t *testing.T, url string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, opts)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url,
		HTTPClient: &http.Client{Transport: bearer{http.DefaultTransport}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func call(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	r, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

func text(r *mcp.CallToolResult) string {
	var parts []string
	for _, c := range r.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, t.Text)
		}
	}
	return strings.Join(parts, "|")
}

func TestToolSchemas(t *testing.T) {
	_, url := serve(t, &fakeBackend{}, Config{MaxExecTimeout: 5 * time.Minute})
	cs := connect(t, url, nil)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*mcp.Tool{}
	for _, tl := range res.Tools {
		byName[tl.Name] = tl
	}
	run := byName["run_code"]
	if run == nil {
		t.Fatalf("no run_code: %v", res.Tools)
	}
	schema, _ := json.Marshal(run.InputSchema)
	for _, want := range []string{`"required":["code"]`, `"enum":["python","javascript","typescript","bash"]`, `"maximum":300`, `"exclusiveMinimum":0`} {
		if !bytes.Contains(schema, []byte(want)) {
			t.Errorf("run_code schema lacks %s: %s", want, schema)
		}
	}
	// docs/API.md's table of tools names the same ones.
	md, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile(`(?m)^\| \*\*([a-z_]+)\*\* \|`).FindAllStringSubmatch(string(md), -1) {
		documented = append(documented, m[1])
	}
	var served []string
	for _, tl := range res.Tools {
		served = append(served, tl.Name)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("docs/API.md documents tools %v, the endpoint serves %v", documented, served)
	}
	if !byName["read_file"].Annotations.ReadOnlyHint || byName["release"].Annotations.ReadOnlyHint {
		t.Errorf("annotations: read_file %+v, release %+v", byName["read_file"].Annotations, byName["release"].Annotations)
	}
}

func TestRunCode(t *testing.T) {
	png := base64.StdEncoding.EncodeToString([]byte("\x89PNG fake"))
	b := &fakeBackend{}
	_, url := serve(t, b, Config{})
	cs := connect(t, url, nil)

	b.exec = reply(&api.ExecuteResponse{Stdout: "hi\n", Stderr: "warn\n", Results: []map[string]json.RawMessage{
		{"image/png": json.RawMessage(`"` + png + `"`), "text/plain": json.RawMessage(`"<Figure>"`)},
		{"text/plain": json.RawMessage(`"42"`)},
	}}, nil)
	r := call(t, cs, "run_code", map[string]any{"code": "x"})
	if r.IsError || len(r.Content) != 4 || text(r) != "hi\n|[stderr]\nwarn\n|42" {
		t.Fatalf("answer: %v %q", r.IsError, text(r))
	}
	if img, ok := r.Content[2].(*mcp.ImageContent); !ok || string(img.Data) != "\x89PNG fake" || img.MIMEType != "image/png" {
		t.Fatalf("image: %+v", r.Content[2])
	}
	if want := "mcp-" + cs.ID(); b.users[0] != want {
		t.Errorf("user %q, want the MCP session's %q", b.users[0], want)
	}

	b.exec = reply(&api.ExecuteResponse{Stdout: "before\n", Error: &api.ExecError{Ename: "ValueError", Evalue: "bad",
		Traceback: []string{"\x1b[31mTraceback\x1b[0m", "ValueError: bad"}}}, nil)
	r = call(t, cs, "run_code", map[string]any{"code": "x", "session": "named"})
	if !r.IsError || text(r) != "before\n|Traceback\nValueError: bad" || b.users[1] != "named" {
		t.Fatalf("exception: %v %q (user %s)", r.IsError, text(r), b.users[1])
	}

	for _, c := range []struct {
		err  error
		want string
	}{
		{&api.Problem{Kind: api.Timeout, Detail: "ran past 1s", After: &api.Aftermath{StatePreserved: api.Flag(true)}}, "ran past 1s (the session kept its state)"},
		{&api.Problem{Kind: api.Timeout, Detail: "ran past 1s", After: &api.Aftermath{StatePreserved: api.Flag(false)}}, "ran past 1s (the session lost its state: variables must be defined again)"},
		{&api.Problem{Kind: api.Busy, Detail: "no worker free", RetryAfter: 2 * time.Second}, "no worker free (retry in 2 s)"},
		{&api.Problem{Kind: api.Internal, Detail: "secret internals"}, "internal error (see codeboxd's log)"},
	} {
		b.exec = reply(nil, c.err)
		r = call(t, cs, "run_code", map[string]any{"code": "x"})
		if !r.IsError || text(r) != c.want {
			t.Errorf("%v: %v %q, want %q", c.err, r.IsError, text(r), c.want)
		}
	}

	n := len(b.users)
	for _, args := range []map[string]any{{"code": ""}, {"code": "1", "language": "cobol"}, {"code": "1", "timeout": 0.0001, "session": "a b"}} {
		r, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "run_code", Arguments: args})
		if err == nil && !r.IsError {
			t.Errorf("%v accepted", args)
		}
	}
	if len(b.users) != n {
		t.Errorf("bad input reached the backend: %v", b.users[n:])
	}
}

// A streamed call's output comes as progress notifications while the code runs (the
// client has the first before the call ends), coalesced, bounded, the last output last.
func TestProgress(t *testing.T) {
	var mu sync.Mutex
	var msgs []string
	got := make(chan struct{}, 100)
	b := &fakeBackend{exec: func(ctx context.Context, _ api.ExecuteRequest, out api.Output) error {
		s := out.(api.Streamer)
		s.Stream(api.Event{Type: api.EventStdout, Text: "first\n"})
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			return out.Reply(ctx, nil, api.Fail(api.Internal, "no progress reached the client while the call ran"))
		}
		for i := range 5 { // at once: coalesced
			s.Stream(api.Event{Type: api.EventStdout, Text: strings.Repeat("x", 3000) + string(rune('0'+i)) + "\n"})
		}
		return out.Reply(ctx, &api.ExecuteResponse{Stdout: "done"}, nil)
	}}
	_, url := serve(t, b, Config{})
	cs := connect(t, url, &mcp.ClientOptions{ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
		mu.Lock()
		msgs = append(msgs, r.Params.Message)
		mu.Unlock()
		got <- struct{}{}
	}})
	p := &mcp.CallToolParams{Name: "run_code", Arguments: map[string]any{"code": "x"}}
	p.SetProgressToken(7)
	r, err := cs.CallTool(context.Background(), p)
	if err != nil || text(r) != "done" {
		t.Fatalf("%v %q", err, text(r))
	}
	// The client hands notifications to the handler on its own goroutine: the last may
	// reach it just after the answer.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		last := len(msgs) > 0 && strings.HasSuffix(msgs[len(msgs)-1], "4\n")
		mu.Unlock()
		if last {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(msgs) < 2 || msgs[0] != "first\n" || len(msgs) > 5 {
		t.Fatalf("%d notifications (first %.20q): want the first line alone, then the rest coalesced", len(msgs), msgs[0])
	}
	for _, m := range msgs {
		if len(m) > maxProgressMessage+len("…") {
			t.Errorf("a notification of %d bytes", len(m))
		}
	}
	if last := msgs[len(msgs)-1]; !strings.HasPrefix(last, "…") || !strings.HasSuffix(last, "4\n") {
		t.Errorf("the last notification is not the newest output, cut: %.20q…%.20q", last, last[max(0, len(last)-20):])
	}
}

func TestFiles(t *testing.T) {
	b := &fakeBackend{files: map[string][]byte{}}
	_, url := serve(t, b, Config{})
	cs := connect(t, url, nil)

	r := call(t, cs, "write_file", map[string]any{"path": "a/b.txt", "content": "héllo"})
	if r.IsError || text(r) != "wrote 6 bytes to /sandbox/a/b.txt" {
		t.Fatalf("write: %q", text(r))
	}
	r = call(t, cs, "read_file", map[string]any{"path": "/sandbox/a/b.txt"})
	if text(r) != "héllo" {
		t.Fatalf("read: %q", text(r))
	}
	r = call(t, cs, "write_file", map[string]any{"path": "x.bin", "content": "!!", "encoding": "base64"})
	if !r.IsError || !strings.Contains(text(r), "not valid base64") {
		t.Fatalf("bad base64: %q", text(r))
	}
	r = call(t, cs, "list_files", nil)
	if !r.IsError || !strings.Contains(text(r), "a session starts with its first run_code") {
		t.Fatalf("list without a session: %q", text(r))
	}

	big := strings.Repeat("é", MaxReadBytes) // 2 MiB of text: cut inside a character
	b.files["/sandbox/big.txt"] = []byte(big)
	r = call(t, cs, "read_file", map[string]any{"path": "big.txt"})
	if r.IsError || !strings.HasSuffix(text(r), "[truncated: the first 1048576 of 2097152 bytes]") {
		t.Fatalf("big text: %v %q", r.IsError, text(r)[len(text(r))-60:])
	}
	b.files["/sandbox/big.bin"] = bytes.Repeat([]byte{0, 255}, MaxReadBytes)
	r = call(t, cs, "read_file", map[string]any{"path": "big.bin"})
	if !r.IsError || !strings.Contains(text(r), "binary file of 2097152 bytes") {
		t.Fatalf("big binary: %q", text(r))
	}
	b.files["/sandbox/p.png"] = []byte("\x89PNG\x00")
	r = call(t, cs, "read_file", map[string]any{"path": "p.png"})
	if img, ok := r.Content[0].(*mcp.ImageContent); !ok || img.MIMEType != "image/png" {
		t.Fatalf("image: %+v", r.Content[0])
	}
	r = call(t, cs, "read_file", map[string]any{"path": "nope"})
	if !r.IsError || text(r) != "no file /sandbox/nope" {
		t.Fatalf("missing: %q", text(r))
	}
}

func TestSessionLimitAndAuth(t *testing.T) {
	_, url := serve(t, &fakeBackend{}, Config{MaxSessions: 2})
	connect(t, url, nil)
	connect(t, url, nil)
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	_, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url,
		HTTPClient: &http.Client{Transport: bearer{http.DefaultTransport}}, MaxRetries: -1}, nil)
	if err == nil || !strings.Contains(err.Error(), "Service Unavailable") {
		t.Fatalf("a third session: %v", err)
	}
	resp, err := http.Post(url, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %v", resp.StatusCode, resp.Header)
	}
}

// Shutdown lets a running call finish, then ends the sessions.
func TestShutdownWaitsForCalls(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	b := &fakeBackend{exec: func(ctx context.Context, _ api.ExecuteRequest, out api.Output) error {
		close(entered)
		<-release
		return out.Reply(ctx, &api.ExecuteResponse{Stdout: "finished"}, nil)
	}}
	h, url := serve(t, b, Config{})
	cs := connect(t, url, nil)
	answer := make(chan string, 1)
	go func() {
		r, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "run_code", Arguments: map[string]any{"code": "x"}})
		if err != nil {
			answer <- err.Error()
			return
		}
		answer <- text(r)
	}()
	<-entered
	shut := make(chan struct{})
	go func() { h.Shutdown(context.Background()); close(shut) }()
	select {
	case <-shut:
		t.Fatal("Shutdown returned while a call ran")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if got := <-answer; got != "finished" {
		t.Fatalf("the running call got %q", got)
	}
	<-shut
	for range h.server.Sessions() {
		t.Fatal("a session outlived Shutdown")
	}
}

// An answer is bounded whatever the call printed: text cut, images left out, both said.
func TestResultBounded(t *testing.T) {
	big := strings.Repeat("é", MaxResultBytes) // 2 MiB
	png := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 600<<10))
	r := result(&api.ExecuteResponse{Stdout: big, Results: []map[string]json.RawMessage{{"image/png": json.RawMessage(`"` + png + `"`)}},
		Error: &api.ExecError{Ename: "E", Traceback: []string{strings.Repeat("x", 1<<20), "E: boom"}}})
	total := 0
	var notes []string
	for _, c := range r.Content {
		switch c := c.(type) {
		case *mcp.TextContent:
			total += len(c.Text)
			if strings.HasPrefix(c.Text, "[") {
				notes = append(notes, c.Text)
			}
		case *mcp.ImageContent:
			t.Errorf("an image past the bound went in")
		}
	}
	if total > MaxResultBytes+maxTraceback+1024 || len(notes) != 1 || !strings.Contains(notes[0], "left out") {
		t.Fatalf("%d bytes of text, notes %q", total, notes)
	}
	last := r.Content[len(r.Content)-1].(*mcp.TextContent).Text
	if !r.IsError || !strings.HasSuffix(last, "E: boom") || len(last) > maxTraceback+len("…") {
		t.Fatalf("traceback: error %v, %d bytes, ends %q", r.IsError, len(last), last[max(0, len(last)-10):])
	}
}

// Concurrent new sessions cannot pass the bound together; calls of one session are bounded.
func TestSessionBoundUnderConcurrency(t *testing.T) {
	h, url := serve(t, &fakeBackend{}, Config{MaxSessions: 5})
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
			cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url,
				HTTPClient: &http.Client{Transport: bearer{http.DefaultTransport}}, MaxRetries: -1}, &mcp.ClientSessionOptions{})
			if err == nil {
				t.Cleanup(func() { cs.Close() })
			}
		}()
	}
	wg.Wait()
	h.mu.Lock()
	n := h.sessions()
	h.mu.Unlock()
	if n > 5 {
		t.Fatalf("%d sessions open, the bound is 5", n)
	}
}

// One session's calls being answered at once are bounded: a caller that never takes its
// answers cannot pile them up.
func TestCallsPerSessionBounded(t *testing.T) {
	release := make(chan struct{})
	var entered sync.WaitGroup
	entered.Add(MaxCallsPerSession)
	b := &fakeBackend{exec: func(ctx context.Context, _ api.ExecuteRequest, out api.Output) error {
		entered.Done()
		<-release
		return out.Reply(ctx, &api.ExecuteResponse{Stdout: "ok"}, nil)
	}}
	_, url := serve(t, b, Config{})
	cs := connect(t, url, nil)
	results := make(chan error, MaxCallsPerSession)
	for i := 0; i < MaxCallsPerSession; i++ {
		go func() {
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "run_code", Arguments: map[string]any{"code": "x"}})
			results <- err
		}()
	}
	entered.Wait() // every slot is held by a call in the backend
	_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "run_code", Arguments: map[string]any{"code": "x"}})
	if err == nil || !strings.Contains(err.Error(), "Service Unavailable") {
		t.Errorf("a call past %d of one session: %v", MaxCallsPerSession, err)
	}
	close(release)
	for i := 0; i < MaxCallsPerSession; i++ {
		if err := <-results; err != nil {
			t.Errorf("a call within the bound: %v", err)
		}
	}
}

// keyAuth is two tenants' keys.
type keyAuth map[string]api.Caller

func (k keyAuth) Authenticate(c string) (api.Caller, bool) { v, ok := k[c]; return v, ok }

// An MCP session acts for the caller of each request, and answers only the caller that
// opened it: another key with the session's id is refused, never run as the opener.
func TestMCPSessionBelongsToItsCaller(t *testing.T) {
	var seen []api.Caller
	var mu sync.Mutex
	b := &fakeBackend{exec: func(ctx context.Context, req api.ExecuteRequest, out api.Output) error {
		mu.Lock()
		seen = append(seen, api.CallerOf(ctx))
		mu.Unlock()
		return out.Reply(ctx, &api.ExecuteResponse{Stdout: "ok\n"}, nil)
	}}
	h, err := New(Config{Backend: b, MaxExecTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	auth := keyAuth{"key-a": {Tenant: "a"}, "key-b": {Tenant: "b"}}
	srv := httptest.NewServer(apiserver.NewHandler(b, apiserver.ServerConfig{Auth: auth, MCP: h, MaxExecTimeout: time.Minute}))
	t.Cleanup(srv.Close)
	post := func(key, session, body string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/mcp", strings.NewReader(body))
		req.Header.Set("X-Auth-Token", key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
			req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("key-a", "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != 200 || sid == "" {
		t.Fatalf("initialize: %d %q", resp.StatusCode, sid)
	}
	post("key-a", sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).Body.Close()
	call := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_code","arguments":{"code":"1"}}}`
	if resp := post("key-b", sid, call); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("tenant b with tenant a's MCP session: %d, want 403", resp.StatusCode)
	}
	resp = post("key-a", sid, call)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0].Tenant != "a" {
		t.Fatalf("the backend saw %+v, want one call of tenant a", seen)
	}
}

func TestListEnvironments(t *testing.T) {
	_, url := serve(t, &fakeBackend{}, Config{})
	cs := connect(t, url, nil)
	r := call(t, cs, "list_environments", map[string]any{})
	got := text(r)
	if r.IsError || !strings.Contains(got, "default: runs python, javascript, typescript, bash") ||
		!strings.Contains(got, "data: runs python;") || !strings.Contains(got, "start with libraries imported") {
		t.Fatalf("list_environments: %q", got)
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
