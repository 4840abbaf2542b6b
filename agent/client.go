// Package agent is the daemon's client of a worker's kernel agent: Jupyter kernel-channel
// messages as JSON over one websocket.
//
// The agent runs in the same process as user code, so every frame it sends is untrusted.
// Memory: a frame is at most the output cap plus a small envelope; the output kept for one
// call (stream text, MIME items at a fixed overhead each, the error) is at most the cap, in
// at most MaxOutputItems items; stream text grows in builders, never by copying. A frame
// that arrives while no call is in flight closes the connection (ErrMisbehaved): a
// well-behaved agent never sends one. Messages of unknown types or for other requests are
// ignored. The client never waits without a deadline the caller controls.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// ChannelsPath is where the agent serves its websocket.
const ChannelsPath = "/api/kernel/channels"

const (
	protocolVersion = "5.3"
	// frameSlack is what a frame may hold beyond the output cap: its envelope (header,
	// parent header, field names). The agent sends no item larger than its own budget
	// (AgentMaxOutputBytes, half of the client's cap) and splits stream text into small
	// frames, so a larger frame means a misbehaving worker.
	frameSlack   = 1 << 20
	writeTimeout = 10 * time.Second
	// itemOverhead is what one kept output item costs beyond its bytes (the map, slice
	// headers): charged against the output cap, so a flood of tiny items holds no more
	// memory than the cap says.
	itemOverhead = 512
	// keyOverhead is charged for each MIME key of an item, likewise.
	keyOverhead = 64
	// maxTracebackLines bounds an error's traceback.
	maxTracebackLines = 1000
)

// DefaultMaxOutputBytes is the output of one call the client keeps when Options leave it 0.
const DefaultMaxOutputBytes = 8 << 20

// AgentMaxOutputBytes is the output budget the daemon gives each worker's agent
// (CODEBOX_MAX_OUTPUT_BYTES): half the client's default cap, so whatever a well-behaved
// agent sends fits the cap with the client's per-item overhead.
const AgentMaxOutputBytes = DefaultMaxOutputBytes / 2

// MaxOutputItems bounds the display_data and execute_result items kept for one call.
const MaxOutputItems = 1000

// A call reads at most maxFramesPerCall frames and wireFactor times its output cap in bytes,
// whatever they are for: a well-behaved agent sends a few thousand frames and about its
// budget, and reading frames costs the daemon CPU the worker's quota does not pay for.
const (
	maxFramesPerCall = 100_000
	wireFactor       = 4
)

// ErrClosed is returned for calls on a connection that has gone away (the worker died, the
// agent closed it, or Close was called).
var ErrClosed = errors.New("kernel connection closed")

// ErrMisbehaved is wrapped in the ErrClosed error of a connection the client closed itself
// because the worker sent a frame while no call was in flight.
var ErrMisbehaved = errors.New("the worker sent a frame outside a call")

// Client is one websocket connection to one agent. Calls are serialised: a kernel executes
// one request at a time. One rule of ownership: a call holds callMu from Start (or Check)
// until Finish, and only the holder of callMu writes to the connection; the reader
// goroutine only reads.
type Client struct {
	conn      *websocket.Conn
	session   string
	maxOutput int

	callMu sync.Mutex // held for the whole of one call

	mu      sync.Mutex
	current *pending // the call awaiting frames, if any
	readErr error
	done    chan struct{} // closed when the reader stops
}

// Options tune a client.
type Options struct {
	// MaxOutputBytes caps the stream text and MIME data kept for one call; output beyond it
	// is dropped and Result.Truncated set. 0 means DefaultMaxOutputBytes.
	MaxOutputBytes int
}

// Dial connects to the agent at url (ws://host:port/api/kernel/channels) with token.
func Dial(ctx context.Context, url, token string, opts Options) (*Client, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	hdr := http.Header{"Authorization": {"token " + token}}
	conn, resp, err := d.DialContext(ctx, url, hdr)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial kernel agent: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial kernel agent: %w", err)
	}
	if opts.MaxOutputBytes <= 0 {
		opts.MaxOutputBytes = DefaultMaxOutputBytes
	}
	conn.SetReadLimit(int64(opts.MaxOutputBytes) + frameSlack)
	// The daemon never pings, so the agent has nothing to answer; it never pings either, so
	// a ping or pong from the worker is user code at work, and each would cost a write or a
	// wake-up of the daemon's.
	control := func(string) error { return fmt.Errorf("%w: a websocket ping or pong", ErrMisbehaved) }
	conn.SetPingHandler(control)
	conn.SetPongHandler(control)
	c := &Client{conn: conn, session: newID(), maxOutput: opts.MaxOutputBytes, done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// Close closes the connection; calls in flight fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Result is what one execute_request produced.
type Result struct {
	Status         string // "ok" or "error"
	ExecutionCount int
	Stdout         string
	Stderr         string
	// Outputs are the MIME bundles of display_data and execute_result, in order.
	Outputs []Output
	Error   *Error
	// Truncated is set when output beyond the limit was dropped; DroppedBytes counts it
	// (what the agent's budget dropped, and the client's cap).
	Truncated    bool
	DroppedBytes int64
	// StateLost is set when the call's language interpreter (JavaScript, TypeScript or
	// bash) ended or was killed during the call: its state is gone, the Python kernel's
	// and the other languages' are not.
	StateLost bool
}

// Output is one display_data or execute_result message.
type Output struct {
	Type string                     // "display_data" or "execute_result"
	Data map[string]json.RawMessage // MIME type → value (a JSON string, or JSON for application/json)
}

// Text returns the output's MIME value for mime if it is a JSON string.
func (o Output) Text(mime string) (string, bool) {
	raw, ok := o.Data[mime]
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// Error is the exception a cell raised.
type Error struct {
	Ename     string   `json:"ename"`
	Evalue    string   `json:"evalue"`
	Traceback []string `json:"traceback"`
	// ExitCode is a bash call's exit status when it was not 0 (Ename "ExitStatus").
	ExitCode *int `json:"exit_code,omitempty"`
}

// Call is an execute request in flight.
type Call struct {
	c *Client
	p *pending
}

// Execute runs code and waits for the kernel to finish it (execute_reply and status idle).
// When ctx ends first it returns the partial Result together with ctx's error and closes
// the client: the kernel may still be running the code, and frames it sends later would
// arrive outside any call. To interrupt the kernel and keep waiting, use Start, Call.Wait
// and Finish.
func (c *Client) Execute(ctx context.Context, code string) (*Result, error) {
	call, err := c.Start(code, "", nil)
	if err != nil {
		return nil, err
	}
	defer call.Finish()
	res, err := call.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		c.conn.Close()
	}
	return res, err
}

// Start sends an execute_request. The caller must call Finish when done with the call. The
// send has its own deadline, not the call's: a call whose time is up before the request
// left is a timeout of the call, never a broken connection. sink, when not nil, gets each
// piece of output as its frame arrives (what the output cap keeps of it), in order; it runs
// on the connection's reader and must not block. language is the interpreter ("" is
// Python's IPython kernel; our agent also runs javascript, typescript and bash).
func (c *Client) Start(code, language string, sink func(Event)) (*Call, error) {
	return c.start(code, language, false, sink)
}

// StartSession tells the agent its worker now serves a session: env is set for everything
// the session runs, and its working directory is /sandbox again, where the session's disk
// was just mounted over the empty mount point. A silent execute carries it (our
// extension, codebox_session), so the reply is an execute_reply like any other.
func (c *Client) StartSession(ctx context.Context, env map[string]string) error {
	call, err := c.send1(func(content map[string]any) {
		content["code"] = ""
		content["codebox_session"] = map[string]any{"env": env}
	}, true, nil)
	res, err := waitOnce(ctx, call, err)
	if err != nil {
		return err
	}
	if res.Status != "ok" {
		return fmt.Errorf("session start: status %q: %+v", res.Status, res.Error)
	}
	return nil
}

// waitOnce waits for a call the daemon makes of its own (sent with err) and ends it.
func waitOnce(ctx context.Context, call *Call, err error) (*Result, error) {
	if err != nil {
		return nil, err
	}
	defer call.Finish()
	return call.Wait(ctx)
}

// Seed runs an environment's seed cell for language, silently (no history, no execution
// count): what it imports and defines is there for the session's first cell. Code that
// raises is an error naming the exception.
func (c *Client) Seed(ctx context.Context, code, language string) error {
	call, err := c.start(code, language, true, nil)
	res, err := waitOnce(ctx, call, err)
	if err != nil {
		return err
	}
	if res.Status != "ok" {
		if res.Error != nil {
			return fmt.Errorf("%w %s: %s", ErrSeedFailed, res.Error.Ename, truncate(res.Error.Evalue, 300))
		}
		return fmt.Errorf("%w (status %q)", ErrSeedFailed, res.Status)
	}
	return nil
}

// ErrSeedFailed: a seed cell raised (it will in every worker of its environment).
var ErrSeedFailed = errors.New("raised")

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (c *Client) start(code, language string, silent bool, sink func(Event)) (*Call, error) {
	return c.send1(func(content map[string]any) {
		content["code"] = code
		// Our agent's extension: send the first output at once rather than gathering
		// it for a flush period, for a caller watching it arrive.
		content["codebox_stream"] = sink != nil
		if language != "" {
			content["language"] = language // our agent's extension too
		}
	}, silent, sink)
}

// send1 sends one execute_request whose content set completes.
func (c *Client) send1(set func(map[string]any), silent bool, sink func(Event)) (*Call, error) {
	c.callMu.Lock()
	content := map[string]any{
		"silent": silent, "store_history": !silent,
		"user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true,
		// Our agent's extension: no busy and idle status around the call, the reply last
		// (and marked so; an agent that does not know it sends them as before).
		"codebox_lean": true,
	}
	set(content)
	p, err := c.send("execute_request", content, sink)
	if err != nil {
		c.callMu.Unlock()
		return nil, err
	}
	return &Call{c: c, p: p}, nil
}

// Event is a piece of a call's output, as it arrives.
type Event struct {
	Kind string // "stdout", "stderr", "display" (display_data), "result" (execute_result) or "error"
	Text string // stdout, stderr
	// Data is a display's or result's MIME bundle.
	Data           map[string]json.RawMessage
	ExecutionCount int    // result
	Error          *Error // error
}

// Wait waits until the kernel is idle again after the call, or ctx ends, and returns the
// output so far. It may be called again after it returned ctx's error.
func (call *Call) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-call.p.done:
	case <-ctx.Done():
		return call.p.snapshot(), ctx.Err()
	}
	res := call.p.snapshot()
	if call.p.err != nil {
		return res, call.p.err
	}
	return res, nil
}

// Finish releases the client for the next call.
func (call *Call) Finish() {
	if call.c == nil {
		return
	}
	call.c.clearCurrent(call.p)
	// No output reaches the sink once the call is over: the reader may hold the call
	// still, with a frame of output that came late.
	call.p.mu.Lock()
	call.p.sink = nil
	call.p.mu.Unlock()
	call.c.callMu.Unlock()
	call.c = nil
}

// Check proves the kernel executes code: a silent execute (no history, no execution
// count) that must come back ok.
func (c *Client) Check(ctx context.Context) error {
	call, err := c.start("pass", "", true, nil)
	res, err := waitOnce(ctx, call, err)
	if err != nil {
		return err
	}
	if res.Status != "ok" {
		return fmt.Errorf("health check execute: status %q", res.Status)
	}
	return nil
}

func (c *Client) clearCurrent(p *pending) {
	c.mu.Lock()
	if c.current == p {
		c.current = nil
	}
	c.mu.Unlock()
}

// pending accumulates the frames answering one request. The reader goroutine applies
// frames as they arrive, so a caller that stopped waiting never stalls the connection.
type pending struct {
	id   string
	done chan struct{} // closed when the request is complete or the connection failed

	mu             sync.Mutex
	res            Result // Stdout and Stderr are kept in the builders until snapshot
	stdout, stderr strings.Builder
	err            error // set before done is closed, when the request failed
	limit          int
	used           int
	gotReply       bool
	gotIdle        bool
	finished       bool
	sink           func(Event) // output as it arrives; nil: none
	// What the call has read, answering it or not (see maxFramesPerCall); only the
	// reader goroutine touches these.
	frames, wire int
}

func (p *pending) snapshot() *Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
	r.Stdout, r.Stderr = p.stdout.String(), p.stderr.String()
	r.Outputs = append([]Output(nil), p.res.Outputs...)
	return &r
}

func (p *pending) finish(err error) {
	if p.finished {
		return
	}
	p.finished = true
	p.err = err
	close(p.done)
}

// The content of the message types the client reads. Fields of other types, and unknown
// fields, are never decoded.
type (
	statusContent struct {
		State string `json:"execution_state"`
	}
	streamContent struct {
		Name string `json:"name"`
		Text string `json:"text"`
	}
	dataContent struct {
		Data           map[string]json.RawMessage `json:"data"`
		ExecutionCount int                        `json:"execution_count"`
	}
	replyContent struct {
		Status         string `json:"status"`
		ExecutionCount int    `json:"execution_count"`
		// The agent's own output cap dropped this much.
		TruncatedBytes int64 `json:"codebox_truncated_bytes"`
		// The call's language interpreter did not survive it (our agent's extension).
		StateLost bool `json:"codebox_state_lost"`
		// The agent sends no idle status after this reply: the call is over.
		Lean bool `json:"codebox_lean"`
		Error
	}
)

// decodeContent decodes the content of frame into v. The frame is decoded again, rather
// than its content kept as a copy when the envelope was read: a frame read for nothing
// then costs no more than its own bytes.
func decodeContent(frame []byte, v any) bool {
	return json.Unmarshal(frame, &struct {
		Content any `json:"content"`
	}{v}) == nil
}

func (p *pending) apply(msgType string, frame []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	r := &p.res
	switch msgType {
	case "status":
		var c statusContent
		if decodeContent(frame, &c) && c.State == "idle" {
			p.gotIdle = true
		}
	case "stream":
		var c streamContent
		if !decodeContent(frame, &c) {
			return
		}
		var b *strings.Builder
		switch c.Name {
		case "stdout":
			b = &p.stdout
		case "stderr":
			b = &p.stderr
		default:
			return
		}
		text := p.take(c.Text)
		b.WriteString(text)
		if p.sink != nil && text != "" {
			p.sink(Event{Kind: c.Name, Text: text})
		}
	case "display_data", "execute_result":
		var c dataContent
		if !decodeContent(frame, &c) || len(c.Data) == 0 {
			return
		}
		size := itemOverhead
		for k, v := range c.Data {
			size += keyOverhead + len(k) + len(v)
		}
		if p.used+size > p.limit || len(r.Outputs) >= MaxOutputItems {
			r.Truncated = true
			r.DroppedBytes += int64(size - itemOverhead)
			return
		}
		p.used += size
		r.Outputs = append(r.Outputs, Output{Type: msgType, Data: c.Data})
		if p.sink != nil {
			if msgType == "execute_result" {
				p.sink(Event{Kind: "result", Data: c.Data, ExecutionCount: c.ExecutionCount})
			} else {
				p.sink(Event{Kind: "display", Data: c.Data})
			}
		}
	case "error":
		var e Error
		if decodeContent(frame, &e) && r.Error == nil {
			r.Error = p.capError(e)
			if p.sink != nil {
				p.sink(Event{Kind: "error", Error: r.Error})
			}
		}
	case "execute_reply":
		var c replyContent
		if !decodeContent(frame, &c) {
			return
		}
		p.gotReply = true
		p.gotIdle = p.gotIdle || c.Lean
		r.ExecutionCount = c.ExecutionCount
		r.StateLost = c.StateLost
		r.Truncated = r.Truncated || c.TruncatedBytes > 0
		r.DroppedBytes += max(c.TruncatedBytes, 0)
		r.Status = "ok"
		if c.Status != "ok" {
			r.Status = "error"
			if r.Error == nil {
				r.Error = p.capError(c.Error)
			}
		}
	}
	if p.gotReply && p.gotIdle {
		p.finish(nil)
	}
}

// take returns the part of text that still fits in the request's output budget, cut at a
// character. Text is charged what it costs in the daemon's JSON answer, where a control
// character takes six bytes: the budget bounds the answer, not just the text.
func (p *pending) take(text string) string {
	room := p.limit - p.used
	n, size := fit(text, max(room, 0))
	if n < len(text) {
		p.res.Truncated = true
		p.res.DroppedBytes += int64(len(text) - n)
		text = text[:n]
	}
	p.used += size
	return text
}

// fit returns the length of the longest start of s, cut at a character, whose JSON encoding
// (encoding/json, HTML not escaped, quotes not counted) takes at most room bytes, and that
// size.
func fit(s string, room int) (n, size int) {
	for n < len(s) {
		c := s[n]
		w, cost := 1, 1
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			cost = 2
		case c < 0x20:
			cost = 6
		case c >= utf8.RuneSelf:
			var r rune
			r, w = utf8.DecodeRuneInString(s[n:])
			switch {
			case r == utf8.RuneError && w == 1:
				cost = 6 // an invalid byte becomes \ufffd
			case r == '\u2028' || r == '\u2029':
				cost = 6
			default:
				cost = w
			}
		}
		if size+cost > room {
			break
		}
		n += w
		size += cost
	}
	return n, size
}

// capError keeps what of e fits the budget, each traceback line charged like an item.
func (p *pending) capError(e Error) *Error {
	e.Ename = p.take(e.Ename)
	e.Evalue = p.take(e.Evalue)
	var tb []string
	for _, line := range e.Traceback {
		if len(tb) >= maxTracebackLines || p.used+keyOverhead > p.limit {
			p.res.Truncated = true
			break
		}
		p.used += keyOverhead
		if line = p.take(line); line != "" {
			tb = append(tb, line)
		}
	}
	e.Traceback = tb
	return &e
}

// ---- wire --------------------------------------------------------------------------

type header struct {
	MsgID    string `json:"msg_id"`
	MsgType  string `json:"msg_type"`
	Session  string `json:"session,omitempty"`
	Username string `json:"username,omitempty"`
	Date     string `json:"date,omitempty"`
	Version  string `json:"version,omitempty"`
}

// envelope is what the reader decodes of every frame: which request it answers and its
// type. The content is decoded only for frames of the call in flight.
type envelope struct {
	Header struct {
		MsgType string `json:"msg_type"`
	} `json:"header"`
	ParentHeader struct {
		MsgID string `json:"msg_id"`
	} `json:"parent_header"`
}

type outgoing struct {
	Header       header         `json:"header"`
	ParentHeader struct{}       `json:"parent_header"`
	Metadata     struct{}       `json:"metadata"`
	Content      map[string]any `json:"content"`
	Channel      string         `json:"channel"`
}

// send writes a request; the caller holds callMu.
func (c *Client) send(msgType string, content map[string]any, sink func(Event)) (*pending, error) {
	p := &pending{id: newID(), done: make(chan struct{}), limit: c.maxOutput, sink: sink}
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		return nil, c.closedErr()
	}
	c.current = p
	c.mu.Unlock()

	out := outgoing{
		Header: header{
			MsgID: p.id, MsgType: msgType, Session: c.session, Username: "codeboxd",
			Date: time.Now().UTC().Format(time.RFC3339Nano), Version: protocolVersion,
		},
		Content: content,
		Channel: "shell",
	}
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := c.conn.WriteJSON(out); err != nil {
		c.clearCurrent(p)
		// A failed write leaves the websocket unusable: close it so the reader stops too.
		c.conn.Close()
		return nil, fmt.Errorf("%w: send %s: %v", ErrClosed, msgType, err)
	}
	return p, nil
}

// keepBuffer is the largest read buffer kept between frames: small frames, the common
// case, then cost no allocation; a large one's buffer goes back to the garbage collector.
const keepBuffer = 256 << 10

func (c *Client) readLoop() {
	defer close(c.done)
	buf := make([]byte, 0, 16<<10)
	for {
		_, r, err := c.conn.NextReader()
		var frame []byte
		if err == nil {
			frame, err = readFrame(r, buf)
		}
		if err != nil {
			c.fail(err)
			return
		}
		if cap(frame) <= keepBuffer {
			buf = frame[:0]
		}
		c.mu.Lock()
		p := c.current
		c.mu.Unlock()
		if p == nil {
			c.fail(ErrMisbehaved)
			c.conn.Close()
			return
		}
		p.frames++
		p.wire += len(frame)
		if p.frames > maxFramesPerCall || p.wire > wireFactor*p.limit+frameSlack {
			c.fail(fmt.Errorf("%w: %d frames, %d bytes in one call", ErrMisbehaved, p.frames, p.wire))
			c.conn.Close()
			return
		}
		var env envelope
		if json.Unmarshal(frame, &env) != nil {
			continue // garbage is dropped like an unknown type
		}
		if env.ParentHeader.MsgID == p.id {
			p.apply(env.Header.MsgType, frame)
		}
	}
}

// readFrame reads one message into buf, doubling it as needed: what a frame costs is at
// most about twice its size, where io.ReadAll's smaller steps cost several times.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), max(2*cap(buf), 4096))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// fail ends the connection's reading with err and fails the call in flight.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.readErr == nil {
		c.readErr = err
	}
	p := c.current
	c.mu.Unlock()
	if p != nil {
		cerr := c.closedErr()
		p.mu.Lock()
		p.finish(cerr)
		p.mu.Unlock()
	}
}

// Err is nil while the connection is usable; after, why it is not (wrapping ErrClosed, and
// ErrMisbehaved when the client closed it for the worker's frames).
func (c *Client) Err() error {
	c.mu.Lock()
	failed := c.readErr != nil
	c.mu.Unlock()
	if !failed {
		return nil
	}
	return c.closedErr()
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(c.readErr, ErrMisbehaved) {
		return fmt.Errorf("%w: %w", ErrClosed, ErrMisbehaved)
	}
	if c.readErr != nil {
		return fmt.Errorf("%w: %v", ErrClosed, c.readErr)
	}
	return ErrClosed
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
