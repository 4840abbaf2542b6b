package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"image/png"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// bearer adds the token to every request of an MCP client.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

func mcpConnect(t *testing.T, ctx context.Context, d *daemon, token string, opts *mcp.ClientOptions) (*mcp.ClientSession, error) {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "codebox-e2e", Version: "1"}, opts)
	return c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: d.url + "/mcp",
		HTTPClient: &http.Client{Transport: bearer{token, d.transport()}}, MaxRetries: -1}, nil)
}

// texts joins a tool result's text content.
func texts(r *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			b.WriteString(t.Text)
			b.WriteString("\n")
		}
	}
	return b.String()
}

func callTool(t *testing.T, ctx context.Context, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return r
}

// TestMCP drives /mcp with the official Go SDK's client over Streamable HTTP: the tools
// as an agent sees them, state across run_code calls, images, tool errors, files,
// progress while a cell runs, release, and a wrong token.
func TestMCP(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if _, err := mcpConnect(t, ctx, d, "wrong-token", nil); err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("a wrong token connected (or failed otherwise): %v", err)
	}
	status, hdr, body := d.request(t, "POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`,
		map[string]string{"Authorization": "Bearer nope", "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
	if status != 401 || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(body, "token") {
		t.Fatalf("wrong token: %d %v %s", status, hdr, body)
	}

	var mu sync.Mutex
	var progress []string
	cs, err := mcpConnect(t, ctx, d, d.token, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			mu.Lock()
			progress = append(progress, req.Params.Message)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
		if len(tl.Description) < 40 {
			t.Errorf("tool %s: description too thin for an LLM: %q", tl.Name, tl.Description)
		}
		t.Logf("tool %s: %s", tl.Name, tl.Description)
	}
	slices.Sort(names)
	if want := []string{"create_session", "list_environments", "list_files", "read_file", "release", "run_code", "snapshot", "write_file"}; !slices.Equal(names, want) {
		t.Fatalf("tools %v, want %v", names, want)
	}

	// A sandbox with its own limits, made before its first code.
	r := callTool(t, ctx, cs, "create_session", map[string]any{"session": "e2e-mcp-shaped", "memory_mb": 300, "timeout": 600,
		"metadata": map[string]any{"by": "mcp"}})
	if r.IsError || !strings.Contains(texts(r), "300 MB memory") || !strings.Contains(texts(r), "ends at") {
		t.Fatalf("create_session: %s", texts(r))
	}
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "print('shaped')", "session": "e2e-mcp-shaped"})
	if r.IsError || !strings.Contains(texts(r), "shaped") {
		t.Fatalf("run_code in the made session: %s", texts(r))
	}
	if s, err := d.client.Session(ctx, "e2e-mcp-shaped"); err != nil || s.Limits.MemoryMB != 300 || s.Metadata["by"] != "mcp" {
		t.Fatalf("the session create_session made, through REST: %+v %v", s, err)
	}
	r = callTool(t, ctx, cs, "create_session", map[string]any{"session": "e2e-mcp-shaped"})
	if !r.IsError || !strings.Contains(texts(r), "is running") {
		t.Fatalf("create_session of a running session: %s", texts(r))
	}
	// A snapshot of its files, and a sandbox started from it.
	callTool(t, ctx, cs, "run_code", map[string]any{"code": "open('/sandbox/mcp.txt', 'w').write('saved')", "session": "e2e-mcp-shaped"})
	if r := callTool(t, ctx, cs, "snapshot", map[string]any{"session": "e2e-mcp-shaped", "snapshot_id": "e2e-mcp-snap"}); r.IsError || !strings.Contains(texts(r), "snapshot_id: e2e-mcp-snap") {
		t.Fatalf("snapshot: %s", texts(r))
	}
	if r := callTool(t, ctx, cs, "create_session", map[string]any{"session": "e2e-mcp-from", "from_snapshot": "e2e-mcp-snap"}); r.IsError {
		t.Fatalf("create_session from_snapshot: %s", texts(r))
	}
	if r := callTool(t, ctx, cs, "run_code", map[string]any{"code": "print(open('/sandbox/mcp.txt').read())", "session": "e2e-mcp-from"}); r.IsError || !strings.Contains(texts(r), "saved") {
		t.Fatalf("the file in the sandbox from the snapshot: %s", texts(r))
	}
	d.client.Release(ctx, "e2e-mcp-from")
	d.client.DeleteSnapshot(ctx, "e2e-mcp-snap")
	if r := callTool(t, ctx, cs, "list_environments", map[string]any{}); r.IsError || !strings.Contains(texts(r), "default: runs python, javascript, typescript, bash") {
		t.Fatalf("list_environments: %s", texts(r))
	}

	// State across calls; the first says it started the session.
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "x = 41\nprint('hello')"})
	if r.IsError || !strings.Contains(texts(r), "hello") || !strings.Contains(texts(r), "new session") {
		t.Fatalf("first run_code: %+v %s", r, texts(r))
	}
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "x + 1"})
	if r.IsError || strings.TrimSpace(texts(r)) != "42" {
		t.Fatalf("state across calls: %q", texts(r))
	}

	// A plot is image content, a real PNG.
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"})
	var img *mcp.ImageContent
	for _, c := range r.Content {
		if i, ok := c.(*mcp.ImageContent); ok {
			img = i
		}
	}
	if img == nil || img.MIMEType != "image/png" {
		t.Fatalf("no PNG image content: %+v", r.Content)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(img.Data)); err != nil || cfg.Width < 100 {
		t.Fatalf("image content does not decode as a PNG: %v %+v", err, cfg)
	}

	// An exception is a tool error with the traceback; the session keeps its state.
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "def f():\n    return 1 / 0\nf()"})
	if !r.IsError || !strings.Contains(texts(r), "ZeroDivisionError") || !strings.Contains(texts(r), "return 1 / 0") || strings.Contains(texts(r), "\x1b[") {
		t.Fatalf("exception: error %v, %q", r.IsError, texts(r))
	}
	// Bad input is a tool error too, the session untouched.
	for _, args := range []map[string]any{
		{"code": "1", "language": "cobol"},
		{"code": "1", "timeout": -1},
		{"code": "1", "session": "../etc"},
	} {
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_code", Arguments: args})
		if err == nil && !r.IsError {
			t.Errorf("run_code %v: accepted: %s", args, texts(r))
		}
	}
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "print(x)"})
	if r.IsError || strings.TrimSpace(texts(r)) != "41" {
		t.Fatalf("state after errors: %q", texts(r))
	}

	// A timeout says the state was kept.
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "import time\ntime.sleep(30)", "timeout": 1})
	if !r.IsError || !strings.Contains(texts(r), "kept its state") {
		t.Fatalf("timeout: %v %q", r.IsError, texts(r))
	}

	// Other languages share the sandbox.
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "echo $((6 * 7)) > /sandbox/n.txt; cat n.txt", "language": "bash"})
	if r.IsError || strings.TrimSpace(texts(r)) != "42" {
		t.Fatalf("bash: %q", texts(r))
	}

	// Files: write, list, read (text, binary, image), and from the code.
	r = callTool(t, ctx, cs, "write_file", map[string]any{"path": "/sandbox/data/in.csv", "content": "a,b\n1,2\n3,4\n"})
	if r.IsError || !strings.Contains(texts(r), "12 bytes") {
		t.Fatalf("write_file: %q", texts(r))
	}
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "import pandas as pd\nprint(pd.read_csv('data/in.csv').b.sum())"})
	if strings.TrimSpace(texts(r)) != "6" {
		t.Fatalf("code reading a written file: %q", texts(r))
	}
	bin := []byte{0, 1, 2, 255, 254}
	r = callTool(t, ctx, cs, "write_file", map[string]any{"path": "blob.bin", "content": base64.StdEncoding.EncodeToString(bin), "encoding": "base64"})
	if r.IsError {
		t.Fatalf("write_file base64: %q", texts(r))
	}
	r = callTool(t, ctx, cs, "write_file", map[string]any{"path": "bad.bin", "content": "not base64!", "encoding": "base64"})
	if !r.IsError || !strings.Contains(texts(r), "base64") {
		t.Fatalf("write_file bad base64: %v %q", r.IsError, texts(r))
	}
	r = callTool(t, ctx, cs, "list_files", map[string]any{})
	for _, want := range []string{"data/\tdirectory", "blob.bin\t5 bytes", "n.txt\t3 bytes"} {
		if !strings.Contains(texts(r), want) {
			t.Errorf("list_files lacks %q: %q", want, texts(r))
		}
	}
	if strings.Contains(texts(r), "bad.bin") {
		t.Errorf("a failed write left a file: %q", texts(r))
	}
	r = callTool(t, ctx, cs, "read_file", map[string]any{"path": "/sandbox/data/in.csv"})
	if r.IsError || texts(r) != "a,b\n1,2\n3,4\n\n" {
		t.Fatalf("read_file text: %q", texts(r))
	}
	r = callTool(t, ctx, cs, "read_file", map[string]any{"path": "blob.bin"})
	if res, ok := r.Content[0].(*mcp.EmbeddedResource); !ok || !bytes.Equal(res.Resource.Blob, bin) {
		t.Fatalf("read_file binary: %+v", r.Content)
	}
	callTool(t, ctx, cs, "run_code", map[string]any{"code": "plt.plot([3, 1]); plt.savefig('plot.png')"})
	r = callTool(t, ctx, cs, "read_file", map[string]any{"path": "plot.png"})
	if i, ok := r.Content[0].(*mcp.ImageContent); !ok || i.MIMEType != "image/png" {
		t.Fatalf("read_file image: %+v", r.Content)
	}
	r = callTool(t, ctx, cs, "read_file", map[string]any{"path": "/etc/passwd"})
	if !r.IsError {
		t.Fatalf("read_file outside /sandbox: %q", texts(r))
	}

	// Progress: a long cell's output arrives while it runs.
	params := &mcp.CallToolParams{Name: "run_code", Arguments: map[string]any{
		"code": "import time\nfor i in range(4):\n    print('step', i, flush=True)\n    time.sleep(0.5)"}}
	params.SetProgressToken("p1")
	r, err = cs.CallTool(ctx, params)
	if err != nil || r.IsError {
		t.Fatalf("progress call: %v %q", err, texts(r))
	}
	mu.Lock()
	got := strings.Join(progress, "")
	n := len(progress)
	mu.Unlock()
	if n < 2 || !strings.Contains(got, "step 0") || !strings.Contains(got, "step 3") {
		t.Fatalf("progress notifications: %d, %q", n, got)
	}
	t.Logf("progress: %d notifications for 4 lines over 2 s", n)

	// A named session is shared across MCP sessions.
	shared := "e2e-mcp-" + randomHex(4)
	callTool(t, ctx, cs, "run_code", map[string]any{"code": "y = 'shared'", "session": shared})
	cs2, err := mcpConnect(t, ctx, d, d.token, nil)
	if err != nil {
		t.Fatal(err)
	}
	r = callTool(t, ctx, cs2, "run_code", map[string]any{"code": "print(y)", "session": shared})
	if strings.TrimSpace(texts(r)) != "shared" {
		t.Fatalf("named session from another MCP session: %q", texts(r))
	}
	r = callTool(t, ctx, cs2, "run_code", map[string]any{"code": "print(x)"})
	if !r.IsError || !strings.Contains(texts(r), "NameError") {
		t.Fatalf("another MCP session sees the first's sandbox: %q", texts(r))
	}
	callTool(t, ctx, cs2, "release", map[string]any{"session": shared})
	callTool(t, ctx, cs2, "release", nil)
	cs2.Close()

	// release ends the sandbox; the next run_code starts afresh.
	r = callTool(t, ctx, cs, "release", nil)
	if r.IsError {
		t.Fatalf("release: %q", texts(r))
	}
	r = callTool(t, ctx, cs, "run_code", map[string]any{"code": "print(x)"})
	if !r.IsError || !strings.Contains(texts(r), "NameError") || !strings.Contains(texts(r), "new session") {
		t.Fatalf("after release: %q", texts(r))
	}
	callTool(t, ctx, cs, "release", nil)

	// codeboxd stops promptly with MCP sessions open: their event streams (a GET each)
	// would otherwise hold the HTTP server's shutdown for its whole grace period.
	start := time.Now()
	d.stop()
	if took := time.Since(start); took > 15*time.Second || strings.Contains(d.logs.String(), "deadline exceeded") {
		t.Errorf("codeboxd took %s to stop with an MCP session open", took)
	} else {
		t.Logf("codeboxd stopped in %s with an MCP session open", took.Round(time.Millisecond))
	}
	cs.Close()
}

// TestMCPTypeScriptSDK drives /mcp with a client no part of this project wrote: the
// official TypeScript SDK from the npm registry, run by Node (e2e/node/mcp.test.mjs).
func TestMCPTypeScriptSDK(t *testing.T) {
	d := startDaemon(t, "--min-idle-workers", "1")
	runNode(t, "mcp.test.mjs", "@modelcontextprotocol/sdk", 3*time.Minute, map[string]string{
		"CODEBOX_URL":   d.url,
		"CODEBOX_TOKEN": d.token,
	})
}
