// Package mcpserver owns codeboxd's Model Context Protocol endpoint (/mcp): the tools an
// agent sees, their descriptions and schemas, and how their calls map onto the API's
// Backend. The official Go SDK serves the protocol (Streamable HTTP transport).
package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codebox/codebox/api"
)

// Limits of what a tool call hands back: an agent's context is small and the worker's
// output is the tenant's.
const (
	// MaxReadBytes is the most of a file read_file returns.
	MaxReadBytes = 1 << 20
	// maxListEntries is the most entries list_files shows.
	maxListEntries = 1000
	// maxProgressMessage is the most output one progress notification carries.
	maxProgressMessage = 4 << 10
	// progressInterval spaces progress notifications: output between two is coalesced.
	progressInterval = 200 * time.Millisecond
	// MaxCalls bounds the POSTs answered at once, MaxCallsPerSession those of one session.
	MaxCalls           = 64
	MaxCallsPerSession = 8
	// MaxResultBytes bounds one run_code answer's text and images (an agent's context is
	// small): text is cut, images past it are left out, each with a note.
	MaxResultBytes = 1 << 20
)

// Config configures the endpoint.
type Config struct {
	Backend api.Backend
	Log     *slog.Logger
	// SessionTimeout closes an MCP session idle this long (the daemon's --idle-timeout: its
	// codebox session is released after the same time, as any session is).
	SessionTimeout time.Duration
	// MaxSessions bounds the MCP sessions open at once; more are refused with 503.
	MaxSessions int
	// MaxExecTimeout is the longest run_code timeout (the daemon's --max-exec-timeout).
	MaxExecTimeout time.Duration
	Version        string
}

// Handler serves /mcp.
type Handler struct {
	cfg    Config
	server *mcp.Server
	http   http.Handler

	mu         sync.Mutex
	calls      int             // POSTs being answered: tool calls among them
	starting   int             // of which new sessions' (initialize)
	perSession map[string]int  // of the others, by Mcp-Session-Id
	issued     map[string]bool // session ids handed out, while their sessions are open
}

func (h *Handler) answering() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// New makes the endpoint and its tools.
func New(cfg Config) (*Handler, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1024
	}
	h := &Handler{cfg: cfg, perSession: map[string]int{}, issued: map[string]bool{}}
	h.server = mcp.NewServer(&mcp.Implementation{Name: "codebox", Title: "codebox code interpreter", Version: cfg.Version},
		&mcp.ServerOptions{
			Instructions: instructions,
			// Tools only: no logging, and the list never changes.
			Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}},
		})
	if err := h.addTools(); err != nil {
		return nil, err
	}
	sdk := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return h.server }, &mcp.StreamableHTTPOptions{
		SessionTimeout: cfg.SessionTimeout,
		// Every request carries the API token, which a page that rebinds a name to
		// 127.0.0.1 does not have; the SDK's Host check would also refuse a reverse proxy
		// on this host (HAProxy) that forwards the public name.
		DisableLocalhostProtection: true,
		MaxRequestBodyBytes:        api.MaxJSONBody,
	})
	// The caller the API authenticated goes to the SDK as the request's token info: the SDK
	// then answers a session's later requests only for the same caller (another key with
	// the session's id gets 403), and each tool call reads its caller from its own request
	// (callerCtx), never from the context of the request that opened the session.
	h.http = auth.RequireBearerToken(func(ctx context.Context, _ string, r *http.Request) (*auth.TokenInfo, error) {
		c := api.CallerOf(r.Context())
		return &auth.TokenInfo{UserID: identity(c), Extra: map[string]any{callerExtra: c}}, nil
	}, &auth.RequireBearerTokenOptions{AllowMissingExpiration: true})(sdk)
	return h, nil
}

const callerExtra = "codebox.caller"

// serveSDK hands a request to the SDK. The API authenticated it already (X-Auth-Token or
// a bearer); the SDK's middleware wants a bearer to hand to the verifier above, which
// takes the caller from the request instead.
func (h *Handler) serveSDK(w http.ResponseWriter, r *http.Request) {
	if a := r.Header.Get("Authorization"); len(a) < 7 || !strings.EqualFold(a[:7], "bearer ") {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer authenticated")
	}
	h.http.ServeHTTP(w, r)
}

// identity names a caller for the SDK's session check.
func identity(c api.Caller) string {
	return fmt.Sprintf("%q %q %t %t", c.Tenant, c.Session, c.Admin, c.Operator)
}

// callerCtx is ctx with the caller of the tool call's own request.
func callerCtx(ctx context.Context, req *mcp.CallToolRequest) context.Context {
	if req != nil && req.Extra != nil && req.Extra.TokenInfo != nil {
		if c, ok := req.Extra.TokenInfo.Extra[callerExtra].(api.Caller); ok {
			return api.WithCaller(ctx, c)
		}
	}
	// No caller: refuse rather than act as the default tenant.
	return api.WithCaller(ctx, api.Caller{Tenant: "\x00nobody", Session: "\x00none"})
}

const instructions = `codebox runs code in an isolated, persistent sandbox (a Linux container with no network access).
Variables, imports, functions and files under /sandbox (the working directory) persist between run_code calls of this MCP session.
Python is the default; javascript, typescript and bash keep their own state in the same sandbox.
Plots shown with matplotlib's plt.show() come back as images. Files are moved with write_file, read_file and list_files.
Call release when done to free the sandbox (it is also freed after an idle time).`

// ServeHTTP bounds what callers hold, then hands the request to the SDK: new sessions past
// MaxSessions, and POSTs (tool calls and their answers) past MaxCalls at once or
// MaxCallsPerSession for one session, are refused with 503. An answer leaves the codebox
// session before it is written, so these bounds, with the answer's own size
// (MaxResultBytes), bound the memory a caller that does not read can hold.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		h.serveSDK(w, r)
		return
	}
	id := r.Header.Get("Mcp-Session-Id")
	h.mu.Lock()
	switch {
	case id == "" && h.sessions()+h.starting >= h.cfg.MaxSessions:
		h.mu.Unlock()
		busy(w, fmt.Sprintf("%d MCP sessions are open, the most codeboxd keeps: end one (DELETE /mcp) or retry later", h.cfg.MaxSessions))
		return
	case h.calls >= MaxCalls:
		h.mu.Unlock()
		busy(w, fmt.Sprintf("%d MCP calls are being answered, the most codeboxd takes at once: retry later", MaxCalls))
		return
	case id != "" && h.perSession[id] >= MaxCallsPerSession:
		h.mu.Unlock()
		busy(w, fmt.Sprintf("this MCP session has %d calls being answered, the most it may: wait for them", MaxCallsPerSession))
		return
	}
	h.calls++
	if id == "" {
		h.starting++
	} else {
		h.perSession[id]++
	}
	h.mu.Unlock()
	if id == "" {
		w = &issuedWriter{ResponseWriter: w, h: h}
	}
	defer func() {
		h.mu.Lock()
		h.calls--
		if id == "" {
			h.starting--
		} else if h.perSession[id]--; h.perSession[id] == 0 {
			delete(h.perSession, id)
		}
		h.mu.Unlock()
	}()
	h.serveSDK(w, r)
}

// sessions counts the open sessions this endpoint handed an Mcp-Session-Id: a request
// without one that does not initialize (a client's server/discover probe) has a session of
// the SDK's only while it is answered, and is not one. Under h.mu; it forgets the ids of
// sessions that ended.
func (h *Handler) sessions() int {
	open := map[string]bool{}
	for ss := range h.server.Sessions() {
		if id := ss.ID(); h.issued[id] {
			open[id] = true
		}
	}
	h.issued = open
	return len(open)
}

// issuedWriter notes the session id an answer hands out.
type issuedWriter struct {
	http.ResponseWriter
	h    *Handler
	seen bool
}

func (w *issuedWriter) WriteHeader(code int) {
	if !w.seen {
		w.seen = true
		if id := w.Header().Get("Mcp-Session-Id"); id != "" {
			w.h.mu.Lock()
			w.h.issued[id] = true
			w.h.mu.Unlock()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *issuedWriter) Write(b []byte) (int, error) {
	if !w.seen {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets the SDK reach the connection (flushing an event stream).
func (w *issuedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes a flush on: the SDK streams events.
func (w *issuedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func busy(w http.ResponseWriter, detail string) {
	w.Header().Set("Retry-After", "5")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	b, _ := json.Marshal(map[string]string{"detail": detail})
	w.Write(append(b, '\n'))
}

// Shutdown waits for the calls being answered (until ctx ends), then closes every MCP
// session: their event streams end, so the HTTP server's own shutdown does not wait on
// them.
func (h *Handler) Shutdown(ctx context.Context) {
	for h.answering() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	for ss := range h.server.Sessions() {
		ss.Close()
	}
}

// --- tools

type runCodeIn struct {
	Code     string  `json:"code" jsonschema:"The code to run. State persists between calls: define a variable in one call, use it in the next. In Python the value of the last expression is returned; print() output is returned as text."`
	Language string  `json:"language,omitempty" jsonschema:"The interpreter: python (default; IPython, with numpy, pandas, matplotlib), javascript (Node.js; top-level await; console.log), typescript (transpiled, same context as javascript) or bash (a persistent shell). Each keeps its own state."`
	Timeout  float64 `json:"timeout,omitempty" jsonschema:"Seconds before the code is interrupted (default: the server's, usually 30). A long computation needs a larger value."`
	Session  string  `json:"session,omitempty" jsonschema:"Optional: the codebox session to use (1-128 of A-Z a-z 0-9 . _ -). Omit it to use this MCP session's own sandbox; name one to share a sandbox across MCP sessions."`
}

type pathIn struct {
	Path    string `json:"path" jsonschema:"A path under /sandbox, e.g. /sandbox/data.csv (relative paths are taken from /sandbox)."`
	Session string `json:"session,omitempty" jsonschema:"Optional: the codebox session, as for run_code."`
}

type listIn struct {
	Path    string `json:"path,omitempty" jsonschema:"A directory under /sandbox (default /sandbox/)."`
	Session string `json:"session,omitempty" jsonschema:"Optional: the codebox session, as for run_code."`
}

type writeIn struct {
	Path     string `json:"path" jsonschema:"Where to write, under /sandbox, e.g. /sandbox/input.csv. Directories are created; an existing file is replaced."`
	Content  string `json:"content" jsonschema:"The file's content: text, or base64 when encoding is base64."`
	Encoding string `json:"encoding,omitempty" jsonschema:"text (default) or base64 (for binary files)."`
	Session  string `json:"session,omitempty" jsonschema:"Optional: the codebox session, as for run_code."`
}

type createSessionIn struct {
	Session      string            `json:"session,omitempty" jsonschema:"Optional: the new session's name (1-128 of A-Z a-z 0-9 . _ -). Omit it to shape this MCP session's own sandbox. Pass the same name as session to run_code and the file tools."`
	CPU          float64           `json:"cpu,omitempty" jsonschema:"CPU cores (default: the server's)."`
	MemoryMB     int               `json:"memory_mb,omitempty" jsonschema:"Memory in MB (default: the server's). Code that needs more is killed and the sandbox's variables are lost."`
	DiskMB       int               `json:"disk_mb,omitempty" jsonschema:"Size of the /sandbox disk in MB (default: the server's)."`
	Timeout      float64           `json:"timeout,omitempty" jsonschema:"The sandbox's whole lifetime in seconds from now (default: none, or the server's); it ends then, even mid-call."`
	IdleTimeout  float64           `json:"idle_timeout,omitempty" jsonschema:"Seconds unused before the sandbox ends (default: the server's)."`
	Metadata     map[string]string `json:"metadata,omitempty" jsonschema:"Labels to find the sandbox by (at most 32 string pairs)."`
	Environment  string            `json:"environment,omitempty" jsonschema:"The environment (an image with its own libraries) the sandbox runs in; list_environments names them. Default: default."`
	Allow        []string          `json:"allow,omitempty" jsonschema:"What the sandbox may reach on the network (default: nothing): host names (pypi.org), *.suffix, addresses or CIDRs, each with an optional :port; at most 64."`
	Packages     bool              `json:"packages,omitempty" jsonschema:"Open the host's package cache, so pip and npm install work without general internet (when the host serves one)."`
	FromSnapshot string            `json:"from_snapshot,omitempty" jsonschema:"Start on a copy of this snapshot's files (made by the snapshot tool), with its limits and network."`
}

type snapshotIn struct {
	Session    string `json:"session,omitempty" jsonschema:"Optional: the codebox session whose files to snapshot (default: this MCP session's)."`
	SnapshotID string `json:"snapshot_id,omitempty" jsonschema:"Optional: a name for the snapshot (1-64 of a-z A-Z 0-9 . _ -)."`
}

type releaseIn struct {
	Session string `json:"session,omitempty" jsonschema:"Optional: the codebox session to release (default: this MCP session's)."`
}

func ptr[T any](v T) *T { return &v }

// schemaFor infers a tool's input schema and lets edit refine it (enums, bounds).
func schemaFor[T any](edit func(props map[string]*jsonschema.Schema)) (*jsonschema.Schema, error) {
	s, err := jsonschema.For[T](nil)
	if err != nil {
		return nil, err
	}
	if edit != nil {
		edit(s.Properties)
	}
	return s, nil
}

func (h *Handler) addTools() error {
	runSchema, err := schemaFor[runCodeIn](func(p map[string]*jsonschema.Schema) {
		langs := make([]any, len(api.Languages))
		for i, l := range api.Languages {
			langs[i] = l
		}
		p["language"].Enum = langs
		p["language"].Default = json.RawMessage(`"python"`)
		p["timeout"].ExclusiveMinimum = ptr(0.0)
		if h.cfg.MaxExecTimeout > 0 {
			p["timeout"].Maximum = ptr(h.cfg.MaxExecTimeout.Seconds())
		}
		p["code"].MinLength = ptr(1)
		p["session"].Pattern = api.UserUUIDPattern
	})
	if err != nil {
		return err
	}
	writeSchema, err := schemaFor[writeIn](func(p map[string]*jsonschema.Schema) {
		p["encoding"].Enum = []any{"text", "base64"}
		p["encoding"].Default = json.RawMessage(`"text"`)
		p["session"].Pattern = api.UserUUIDPattern
	})
	if err != nil {
		return err
	}
	sessionPattern := func(p map[string]*jsonschema.Schema) { p["session"].Pattern = api.UserUUIDPattern }
	readSchema, err := schemaFor[pathIn](sessionPattern)
	if err != nil {
		return err
	}
	listSchema, err := schemaFor[listIn](sessionPattern)
	if err != nil {
		return err
	}
	releaseSchema, err := schemaFor[releaseIn](sessionPattern)
	if err != nil {
		return err
	}
	createSchema, err := schemaFor[createSessionIn](func(p map[string]*jsonschema.Schema) {
		p["session"].Pattern = api.UserUUIDPattern
		for _, f := range []string{"cpu", "memory_mb", "disk_mb", "timeout", "idle_timeout"} {
			p[f].Minimum = ptr(0.0)
		}
		p["metadata"].MaxProperties = ptr(api.MaxMetadataPairs)
	})
	if err != nil {
		return err
	}

	mcp.AddTool(h.server, &mcp.Tool{
		Name:  "run_code",
		Title: "Run code",
		Description: "Run code in a persistent sandbox and return its output: printed text, the value of the last expression, " +
			"images (matplotlib plots), and on failure the error with its traceback. Variables, imports and files persist between calls. " +
			"No network access; files live under /sandbox (the working directory).",
		InputSchema: runSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Run code", DestructiveHint: ptr(true), OpenWorldHint: ptr(false)},
	}, h.runCode)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:        "list_files",
		Title:       "List files",
		Description: fmt.Sprintf("List a directory of the sandbox (default /sandbox/): names, sizes and types, at most %d entries.", maxListEntries),
		InputSchema: listSchema,
		Annotations: &mcp.ToolAnnotations{Title: "List files", ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, h.listFiles)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:  "read_file",
		Title: "Read a file",
		Description: fmt.Sprintf("Read a file of the sandbox. Text comes back as text (the first %d KiB of a larger file); "+
			"images as images; other binary files base64-encoded, up to %d KiB.", MaxReadBytes>>10, MaxReadBytes>>10),
		InputSchema: readSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Read a file", ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, h.readFile)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:        "write_file",
		Title:       "Write a file",
		Description: "Write a file into the sandbox (text, or base64 for binary), e.g. data for run_code to read. Replaces an existing file.",
		InputSchema: writeSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Write a file", DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, h.writeFile)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:  "create_session",
		Title: "Create a sandbox with its own limits",
		Description: "Create a sandbox before running code in it, when it needs more (or less) CPU, memory or disk than the default, " +
			"a lifetime, or labels. Call it before the first run_code of that session; without it run_code makes a default sandbox. " +
			"Answers the sandbox's limits and when it expires.",
		InputSchema: createSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Create a sandbox", OpenWorldHint: ptr(false)},
	}, h.createSession)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:  "list_environments",
		Title: "List environments",
		Description: "List the environments a sandbox can run in (pass one as environment to create_session): each is an image " +
			"with its own libraries, the languages it runs, its default limits, and whether its sandboxes start with libraries already imported.",
		InputSchema: &jsonschema.Schema{Type: "object"},
		Annotations: &mcp.ToolAnnotations{Title: "List environments", ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, h.listEnvironments)
	snapshotSchema, err := schemaFor[snapshotIn](sessionPattern)
	if err != nil {
		return err
	}
	mcp.AddTool(h.server, &mcp.Tool{
		Name:  "snapshot",
		Title: "Snapshot the sandbox's files",
		Description: "Save the sandbox's files (/sandbox, installed packages included; not its variables) as they are now, while it keeps running. " +
			"Pass the answer's snapshot_id as from_snapshot to create_session to start new sandboxes from it, for instance to try several approaches from one point.",
		InputSchema: snapshotSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Snapshot the sandbox's files", OpenWorldHint: ptr(false)},
	}, h.snapshot)
	mcp.AddTool(h.server, &mcp.Tool{
		Name:        "release",
		Title:       "Release the sandbox",
		Description: "End the session: its sandbox, variables and files are destroyed. The next run_code starts a fresh one.",
		InputSchema: releaseSchema,
		Annotations: &mcp.ToolAnnotations{Title: "Release the sandbox", DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, h.release)
	return nil
}

// user is the codebox session of a call: the one it names, else its MCP session's.
func user(req *mcp.CallToolRequest, named string) (string, error) {
	if named != "" {
		if err := api.ValidateUserUUID(named); err != nil {
			return "", badInput("session must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
		}
		return named, nil
	}
	id := req.Session.ID()
	if id == "" {
		return "", badInput("this MCP connection has no session id: name a session")
	}
	return "mcp-" + id, nil
}

// toolError is a failed call as the agent sees it: a tool error with a sentence to act on.
func toolError(err error) (*mcp.CallToolResult, any, error) {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: describe(err)}}}, nil, nil
}

// describe says what a Backend failure means for the agent.
func describe(err error) string {
	var p *api.Problem
	var e *api.Error
	// An error of no known kind says nothing of the daemon's internals, as REST's 500.
	detail, kind, retry := "internal error (see codeboxd's log)", api.Internal, time.Duration(0)
	var after *api.Aftermath
	var bad badInput
	switch {
	case errors.As(err, &bad):
		detail = string(bad)
	case errors.As(err, &p):
		detail, kind, retry, after = p.Detail, p.Kind, p.RetryAfter, p.After
		if kind == api.Internal {
			detail = "internal error (see codeboxd's log)"
		}
	case errors.As(err, &e):
		detail, retry, after = e.Detail, e.RetryAfter, e.After
		if e.Status >= 500 && e.Detail == "" {
			detail = "internal error (see codeboxd's log)"
		}
	}
	msg := detail
	if after != nil && after.StatePreserved != nil {
		if *after.StatePreserved {
			msg += " (the session kept its state)"
		} else {
			msg += " (the session lost its state: variables must be defined again)"
		}
	}
	if retry > 0 {
		msg += fmt.Sprintf(" (retry in %d s)", int(retry.Round(time.Second)/time.Second))
	}
	return msg
}

// badInput is a tool call's argument the tool refuses, in words for the agent.
type badInput string

func (b badInput) Error() string { return string(b) }

func badf(format string, args ...any) error { return badInput(fmt.Sprintf(format, args...)) }

// ansi matches terminal colour codes, which tracebacks carry and an agent does not need.
var ansi = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]")

func (h *Handler) runCode(ctx context.Context, req *mcp.CallToolRequest, in runCodeIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	er := api.ExecuteRequest{Code: in.Code, Language: in.Language}
	if in.Timeout != 0 {
		er.Timeout = &in.Timeout
	}
	if err := er.Validate(h.cfg.MaxExecTimeout); err != nil {
		return toolError(err)
	}
	out := &output{}
	if tok := req.Params.GetProgressToken(); tok != nil {
		p := newProgress(ctx, req.Session, tok)
		defer p.stop()
		out.progress = p
	}
	if err := h.cfg.Backend.Execute(ctx, u, er, out); err != nil && out.err == nil && out.resp == nil {
		return toolError(err)
	}
	if out.err != nil {
		return toolError(out.err)
	}
	return result(out.resp), nil, nil
}

// output takes a call's answer, and its output as it comes when the client asked for
// progress.
type output struct {
	resp     *api.ExecuteResponse
	err      error
	progress *progress
}

func (o *output) Reply(_ context.Context, resp *api.ExecuteResponse, err error) error {
	o.resp, o.err = resp, err
	return nil
}

func (o *output) Stream(e api.Event) {
	if o.progress != nil && (e.Type == api.EventStdout || e.Type == api.EventStderr) {
		o.progress.add(e.Text)
	}
}

func (o *output) Started(func()) {}

// result is the tool result of an execute: text for output, images for PNGs, a tool
// error with the traceback when the code raised. At most MaxResultBytes of output go in
// (images counted as their base64), the traceback besides; what is left out is said.
func result(r *api.ExecuteResponse) *mcp.CallToolResult {
	var content []mcp.Content
	room := MaxResultBytes
	cut := 0 // bytes of output left out
	text := func(s string) {
		if len(s) > room {
			cut += len(s) - room
			s = strings.ToValidUTF8(s[:room], "")
		}
		room -= len(s)
		if s != "" {
			content = append(content, &mcp.TextContent{Text: s})
		}
	}
	if r.NewSession {
		text("[a new session started with this call: nothing defined before it exists]")
	}
	if r.Stdout != "" {
		text(r.Stdout)
	}
	if r.Stderr != "" {
		text("[stderr]\n" + r.Stderr)
	}
	for _, bundle := range r.Results {
		if img, mimeType := image(bundle); img != nil {
			if size := base64.StdEncoding.EncodedLen(len(img)); size <= room {
				room -= size
				content = append(content, &mcp.ImageContent{Data: img, MIMEType: mimeType})
			} else {
				cut += size
			}
			continue
		}
		for _, kind := range []string{"text/plain", "text/markdown", "text/html"} {
			var s string
			if raw, ok := bundle[kind]; ok && json.Unmarshal(raw, &s) == nil {
				text(s)
				break
			}
		}
	}
	if cut > 0 {
		content = append(content, &mcp.TextContent{Text: fmt.Sprintf("[%d bytes of output left out: an answer carries at most %d; write large results to a file]", cut, MaxResultBytes)})
	}
	if r.Truncated {
		content = append(content, &mcp.TextContent{Text: "[output truncated: the call printed more than codeboxd keeps]"})
	}
	if len(r.NetworkDenials) > 0 {
		lines := make([]string, 0, len(r.NetworkDenials)+1)
		for _, e := range r.NetworkDenials {
			lines = append(lines, api.NetworkDenialText(e))
		}
		if more := r.NetworkDenialsTotal - len(r.NetworkDenials); more > 0 {
			lines = append(lines, fmt.Sprintf("network: and %d more denials", more))
		}
		content = append(content, &mcp.TextContent{Text: strings.Join(lines, "\n")})
	}
	if r.Error != nil {
		tb := strings.Join(r.Error.Traceback, "\n")
		if tb == "" {
			tb = r.Error.Ename + ": " + r.Error.Evalue
		}
		tb = ansi.ReplaceAllString(tb, "")
		if len(tb) > maxTraceback { // its end says what was raised
			tb = "…" + strings.ToValidUTF8(tb[len(tb)-maxTraceback:], "")
		}
		content = append(content, &mcp.TextContent{Text: tb})
		if r.StatePreserved != nil && !*r.StatePreserved {
			content = append(content, &mcp.TextContent{Text: "[the interpreter ended: its state is lost]"})
		}
		return &mcp.CallToolResult{IsError: true, Content: content}
	}
	if len(content) == 0 {
		content = append(content, &mcp.TextContent{Text: "(no output)"})
	}
	return &mcp.CallToolResult{Content: content}
}

// maxTraceback bounds the traceback of a tool error.
const maxTraceback = 64 << 10

// image decodes the first raster image of a display bundle.
func image(bundle map[string]json.RawMessage) ([]byte, string) {
	for _, m := range []string{"image/png", "image/jpeg", "image/gif", "image/webp"} {
		var s string
		if raw, ok := bundle[m]; ok && json.Unmarshal(raw, &s) == nil {
			if b, err := base64.StdEncoding.DecodeString(stripSpace(s)); err == nil {
				return b, m
			}
		}
	}
	return nil, ""
}

// progress sends a call's output to the client as progress notifications while the code
// runs: coalesced every progressInterval, the newest maxProgressMessage bytes of each. The
// kernel never waits for it: add only appends (bounded), a goroutine sends.
type progress struct {
	mu      sync.Mutex
	pending []byte
	dropped bool
	count   int
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}

	ctx   context.Context
	ss    *mcp.ServerSession
	token any
}

func newProgress(ctx context.Context, ss *mcp.ServerSession, token any) *progress {
	p := &progress{wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{}), ctx: ctx, ss: ss, token: token}
	go func() {
		defer close(p.stopped)
		for {
			select {
			case <-p.wake:
			case <-p.done:
				return
			case <-ctx.Done():
				return
			}
			p.mu.Lock()
			msg, dropped := string(p.pending), p.dropped
			p.pending, p.dropped = nil, false
			p.count++
			n := p.count
			p.mu.Unlock()
			if dropped {
				msg = "…" + msg
			}
			// The cut that bounds a message may split a character.
			msg = strings.ToValidUTF8(msg, "")
			if err := ss.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: token, Progress: float64(n), Message: msg}); err != nil {
				return // the client went away; the answer will say so
			}
			select {
			case <-time.After(progressInterval):
			case <-p.done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return p
}

func (p *progress) add(s string) {
	p.mu.Lock()
	p.pending = append(p.pending, s...)
	if over := len(p.pending) - maxProgressMessage; over > 0 {
		p.pending = append(p.pending[:0], p.pending[over:]...)
		p.dropped = true
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// stop ends the notifications before the answer goes out (none may follow it), with the
// output not yet sent.
func (p *progress) stop() {
	close(p.done)
	<-p.stopped
	p.mu.Lock()
	msg, dropped := string(p.pending), p.dropped
	p.count++
	n := p.count
	p.mu.Unlock()
	if msg == "" || p.ctx.Err() != nil {
		return
	}
	if dropped {
		msg = "…" + msg
	}
	p.ss.NotifyProgress(p.ctx, &mcp.ProgressNotificationParams{ProgressToken: p.token, Progress: float64(n), Message: strings.ToValidUTF8(msg, "")})
}

// sandboxPath makes a tool's path absolute under /sandbox; the Backend checks the rest.
func sandboxPath(p string) string {
	if p == "" {
		return "/sandbox/"
	}
	if !strings.HasPrefix(p, "/") {
		return "/sandbox/" + p
	}
	return p
}

func (h *Handler) listFiles(ctx context.Context, req *mcp.CallToolRequest, in listIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	page, err := h.cfg.Backend.ListFiles(ctx, u, sandboxPath(in.Path), 0, maxListEntries)
	if err != nil {
		var p *api.Problem
		if errors.As(err, &p) && p.Kind == api.NotFound {
			return toolError(badf("%s (a session starts with its first run_code or write_file)", p.Detail))
		}
		return toolError(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d entries\n", page.Path, len(page.Entries))
	for _, e := range page.Entries {
		switch e.Type {
		case "directory":
			fmt.Fprintf(&b, "%s/\tdirectory\n", e.Name)
		case "file":
			fmt.Fprintf(&b, "%s\t%d bytes\n", e.Name, e.Size)
		default:
			fmt.Fprintf(&b, "%s\t%s\n", e.Name, e.Type)
		}
	}
	if page.Truncated {
		fmt.Fprintf(&b, "[only the first %d entries are listed]\n", len(page.Entries))
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: b.String()}}}, nil, nil
}

func (h *Handler) readFile(ctx context.Context, req *mcp.CallToolRequest, in pathIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	p := sandboxPath(in.Path)
	var res *mcp.CallToolResult
	err = h.cfg.Backend.GetFile(ctx, u, p, func(ctx context.Context, name string, _ time.Time, content io.ReadSeeker) error {
		size, err := content.Seek(0, io.SeekEnd)
		if err != nil {
			return err
		}
		if _, err := content.Seek(0, io.SeekStart); err != nil {
			return err
		}
		data, err := io.ReadAll(io.LimitReader(content, MaxReadBytes))
		if err != nil {
			return err
		}
		res = fileResult(p, name, size, data)
		return nil
	})
	if err != nil {
		return toolError(err)
	}
	return res, nil, nil
}

// fileResult is read_file's answer for the first bytes (data) of a file of size bytes.
func fileResult(p, name string, size int64, data []byte) *mcp.CallToolResult {
	mimeType := mime.TypeByExtension(path.Ext(name))
	isText := utf8.Valid(data) && !strings.ContainsRune(string(data), 0) ||
		// a cut in the middle of a character
		int64(len(data)) < size && utf8.Valid(data[:max(0, len(data)-utf8.UTFMax)])
	switch {
	case isText:
		s := strings.ToValidUTF8(string(data), "")
		if int64(len(data)) < size {
			s += fmt.Sprintf("\n[truncated: the first %d of %d bytes]", len(data), size)
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
	case int64(len(data)) < size:
		return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf(
			"%s is a binary file of %d bytes, over read_file's limit of %d: process it with run_code instead", p, size, MaxReadBytes)}}}
	case strings.HasPrefix(mimeType, "image/") && mimeType != "image/svg+xml":
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.ImageContent{Data: data, MIMEType: mimeType}}}
	default:
		if mimeType == "" {
			mimeType = "application/octet-stream"
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.EmbeddedResource{Resource: &mcp.ResourceContents{
			URI: "file://" + p, MIMEType: mimeType, Blob: data}}}}
	}
}

func (h *Handler) writeFile(ctx context.Context, req *mcp.CallToolRequest, in writeIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	var body io.Reader = strings.NewReader(in.Content)
	switch in.Encoding {
	case "", "text":
	case "base64":
		// Decoded whole before the session is touched: a bad one leaves no file behind.
		// The request body bounds its size.
		b, err := base64.StdEncoding.DecodeString(stripSpace(in.Content))
		if err != nil {
			return toolError(badf("content is not valid base64: %v", err))
		}
		body = bytes.NewReader(b)
	default:
		return toolError(badf("encoding must be text or base64, not %q", in.Encoding))
	}
	res, err := h.cfg.Backend.PutFile(ctx, u, sandboxPath(in.Path), body)
	if err != nil {
		return toolError(err)
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "wrote " + strconv.FormatInt(res.Size, 10) + " bytes to " + res.FullPath}}}, nil, nil
}

func (h *Handler) release(ctx context.Context, req *mcp.CallToolRequest, in releaseIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	if err := h.cfg.Backend.Release(ctx, u); err != nil {
		return toolError(err)
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "released: the sandbox, its variables and files are gone; the next run_code starts a fresh one"}}}, nil, nil
}

func (h *Handler) snapshot(ctx context.Context, req *mcp.CallToolRequest, in snapshotIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	s, err := h.cfg.Backend.CreateSnapshot(ctx, u, api.CreateSnapshotRequest{SnapshotID: in.SnapshotID})
	if err != nil {
		return toolError(err)
	}
	text := fmt.Sprintf("snapshot_id: %s (files only, not variables; %.0f MB; the sandbox's files were frozen %.0f ms). "+
		"create_session with from_snapshot %q starts a sandbox from it.", s.SnapshotID, s.StoredMB, s.FreezeMS, s.SnapshotID)
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, nil, nil
}

func (h *Handler) createSession(ctx context.Context, req *mcp.CallToolRequest, in createSessionIn) (*mcp.CallToolResult, any, error) {
	ctx = callerCtx(ctx, req)
	u, err := user(req, in.Session)
	if err != nil {
		return toolError(err)
	}
	creq := api.CreateSessionRequest{SessionID: u, Metadata: in.Metadata, Environment: in.Environment, FromSnapshot: in.FromSnapshot}
	if len(in.Allow) > 0 || in.Packages {
		creq.Network = &api.NetworkPolicy{Allow: in.Allow}
		if in.Packages {
			creq.Network.Presets = []string{"packages"}
		}
	}
	if in.CPU != 0 || in.MemoryMB != 0 || in.DiskMB != 0 {
		creq.Limits = &api.Limits{CPU: in.CPU, MemoryMB: in.MemoryMB, DiskMB: in.DiskMB}
	}
	if in.Timeout != 0 {
		creq.Timeout = &in.Timeout
	}
	if in.IdleTimeout != 0 {
		creq.IdleTimeout = &in.IdleTimeout
	}
	s, err := h.cfg.Backend.CreateSession(ctx, creq)
	if err != nil {
		return toolError(err)
	}
	msg := fmt.Sprintf("created sandbox %q in environment %s: %g CPU, %d MB memory, %d MB disk at /sandbox",
		s.SessionID, s.Environment, s.Limits.CPU, s.Limits.MemoryMB, s.Limits.DiskMB)
	if s.ExpiresAt != nil {
		msg += fmt.Sprintf("; it ends at %s", s.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if in.Session != "" {
		msg += fmt.Sprintf(`; pass session %q to run_code and the file tools`, s.SessionID)
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: msg}}}, nil, nil
}

// listEnvironments answers one line per environment.
func (h *Handler) listEnvironments(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
	envs, err := h.cfg.Backend.Environments(callerCtx(ctx, req))
	if err != nil {
		return toolError(err)
	}
	var b strings.Builder
	for _, e := range envs {
		fmt.Fprintf(&b, "%s: runs %s; %g CPU, %d MB memory, %d MB disk by default", e.Name, strings.Join(e.Languages, ", "),
			e.Limits.CPU, e.Limits.MemoryMB, e.Limits.DiskMB)
		if e.Seed {
			b.WriteString("; its sandboxes start with libraries imported")
		}
		if !e.Available {
			fmt.Fprintf(&b, "; unavailable: %s", e.UnavailableReason)
		}
		b.WriteString("\n")
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: b.String()}}}, nil, nil
}

// stripSpace drops the white space base64 text may be wrapped with, in one copy.
func stripSpace(s string) string {
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}
