// Package kernel is the daemon's client of a worker's kernel agent: Jupyter kernel-channel
// messages as JSON over one websocket (SPEC §4).
//
// The agent runs in the same process as user code, so every frame it sends is untrusted:
// frames are size-bounded, the output kept per call is capped, fields are validated and
// messages of unknown types or for other requests are ignored. The client never waits
// without a deadline the caller controls.
package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ChannelsPath is where the agent serves its websocket.
const ChannelsPath = "/api/kernel/channels"

const (
	protocolVersion = "5.3"
	// maxFrameBytes bounds one frame from the agent; the agent caps a call's output well
	// below this, so a larger frame means a misbehaving worker.
	maxFrameBytes = 64 << 20
	writeTimeout  = 10 * time.Second
)

// DefaultMaxOutputBytes is the output of one call the client keeps when Options leave it 0.
const DefaultMaxOutputBytes = 8 << 20

// ErrClosed is returned for calls on a connection that has gone away (the worker died, the
// agent closed it, or Close was called).
var ErrClosed = errors.New("kernel connection closed")

// Client is one websocket connection to one agent. Calls are serialised: a kernel executes
// one request at a time, and the session layer above orders them.
type Client struct {
	conn      *websocket.Conn
	session   string
	maxOutput int

	callMu  sync.Mutex // held for the whole of one call
	writeMu sync.Mutex

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
	conn.SetReadLimit(maxFrameBytes)
	if opts.MaxOutputBytes <= 0 {
		opts.MaxOutputBytes = DefaultMaxOutputBytes
	}
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

// Done is closed when the connection has gone away.
func (c *Client) Done() <-chan struct{} { return c.done }

// Result is what one execute_request produced.
type Result struct {
	Status         string // "ok" or "error"
	ExecutionCount int
	Stdout         string
	Stderr         string
	// Outputs are the MIME bundles of display_data and execute_result, in order.
	Outputs []Output
	Error   *Error
	// Truncated is set when output beyond the limit was dropped.
	Truncated bool
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
}

// Call is an execute request in flight.
type Call struct {
	c *Client
	p *pending
}

// Execute runs code and waits for the kernel to finish it (execute_reply and status idle).
// When ctx ends first it returns the partial Result together with ctx's error; use Start
// and Call.Wait to keep waiting after that (e.g. after interrupting the kernel).
func (c *Client) Execute(ctx context.Context, code string) (*Result, error) {
	call, err := c.Start(ctx, code)
	if err != nil {
		return nil, err
	}
	defer call.Finish()
	return call.Wait(ctx)
}

// Start sends an execute_request. The caller must call Finish when done with the call.
func (c *Client) Start(ctx context.Context, code string) (*Call, error) {
	return c.start(ctx, code, false)
}

func (c *Client) start(ctx context.Context, code string, silent bool) (*Call, error) {
	c.callMu.Lock()
	p, err := c.send(ctx, "execute_request", map[string]any{
		"code": code, "silent": silent, "store_history": !silent,
		"user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true,
	})
	if err != nil {
		c.callMu.Unlock()
		return nil, err
	}
	return &Call{c: c, p: p}, nil
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
	call.c.callMu.Unlock()
	call.c = nil
}

// Check proves the kernel executes code: a silent execute (no history, no execution
// count) that must come back ok.
func (c *Client) Check(ctx context.Context) error {
	call, err := c.start(ctx, "pass", true)
	if err != nil {
		return err
	}
	defer call.Finish()
	res, err := call.Wait(ctx)
	if err != nil {
		return err
	}
	if res.Status != "ok" {
		return fmt.Errorf("health check execute: status %q", res.Status)
	}
	return nil
}

// KernelInfo asks the kernel for kernel_info and returns its language version. An agent
// that answers is alive and its main loop is free.
func (c *Client) KernelInfo(ctx context.Context) (string, error) {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	p, err := c.send(ctx, "kernel_info_request", map[string]any{})
	if err != nil {
		return "", err
	}
	defer c.clearCurrent(p)
	select {
	case <-p.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if p.err != nil {
		return "", p.err
	}
	return p.info, nil
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

	mu       sync.Mutex
	res      Result
	info     string // kernel_info_reply: language version
	err      error  // set before done is closed, when the request failed
	limit    int
	used     int
	gotReply bool
	gotIdle  bool
	finished bool
}

func (p *pending) snapshot() *Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
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

func (p *pending) apply(m message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	r := &p.res
	switch m.Header.MsgType {
	case "status":
		var c struct {
			State string `json:"execution_state"`
		}
		if json.Unmarshal(m.Content, &c) == nil && c.State == "idle" {
			p.gotIdle = true
		}
	case "stream":
		var c struct {
			Name string `json:"name"`
			Text string `json:"text"`
		}
		if json.Unmarshal(m.Content, &c) != nil {
			return
		}
		switch c.Name {
		case "stdout":
			r.Stdout += p.take(c.Text)
		case "stderr":
			r.Stderr += p.take(c.Text)
		}
	case "display_data", "execute_result":
		var c struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if json.Unmarshal(m.Content, &c) != nil || len(c.Data) == 0 {
			return
		}
		size := 0
		for k, v := range c.Data {
			size += len(k) + len(v)
		}
		if p.used+size > p.limit {
			r.Truncated = true
			return
		}
		p.used += size
		r.Outputs = append(r.Outputs, Output{Type: m.Header.MsgType, Data: c.Data})
	case "error":
		var e Error
		if json.Unmarshal(m.Content, &e) != nil {
			return
		}
		r.Error = p.capError(e)
	case "execute_reply":
		var c struct {
			Status         string `json:"status"`
			ExecutionCount int    `json:"execution_count"`
			// The agent's own output cap dropped this much.
			TruncatedBytes int64 `json:"codebox_truncated_bytes"`
			Error
		}
		if json.Unmarshal(m.Content, &c) != nil {
			return
		}
		p.gotReply = true
		r.ExecutionCount = c.ExecutionCount
		r.Truncated = r.Truncated || c.TruncatedBytes > 0
		r.Status = "ok"
		if c.Status != "ok" {
			r.Status = "error"
			if r.Error == nil {
				r.Error = p.capError(c.Error)
			}
		}
	case "kernel_info_reply":
		var info struct {
			Status       string `json:"status"`
			LanguageInfo struct {
				Version string `json:"version"`
			} `json:"language_info"`
		}
		if err := json.Unmarshal(m.Content, &info); err != nil {
			p.finish(fmt.Errorf("kernel_info_reply: %w", err))
			return
		}
		if info.Status != "ok" {
			p.finish(fmt.Errorf("kernel_info_reply: status %q", info.Status))
			return
		}
		p.info = info.LanguageInfo.Version
		p.finish(nil)
		return
	}
	if p.gotReply && p.gotIdle {
		p.finish(nil)
	}
}

// take returns the part of text that still fits in the request's output budget.
func (p *pending) take(text string) string {
	room := p.limit - p.used
	if len(text) > room {
		p.res.Truncated = true
		text = text[:max(room, 0)]
	}
	p.used += len(text)
	return text
}

func (p *pending) capError(e Error) *Error {
	e.Ename = p.take(e.Ename)
	e.Evalue = p.take(e.Evalue)
	var tb []string
	for _, line := range e.Traceback {
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

type message struct {
	Header       header          `json:"header"`
	ParentHeader header          `json:"parent_header"`
	Content      json.RawMessage `json:"content"`
}

type outgoing struct {
	Header       header         `json:"header"`
	ParentHeader struct{}       `json:"parent_header"`
	Metadata     struct{}       `json:"metadata"`
	Content      map[string]any `json:"content"`
	Channel      string         `json:"channel"`
}

func (c *Client) send(ctx context.Context, msgType string, content map[string]any) (*pending, error) {
	p := &pending{id: newID(), done: make(chan struct{}), limit: c.maxOutput}
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
	deadline := time.Now().Add(writeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.writeMu.Lock()
	c.conn.SetWriteDeadline(deadline)
	err := c.conn.WriteJSON(out)
	c.writeMu.Unlock()
	if err != nil {
		c.mu.Lock()
		c.current = nil
		c.mu.Unlock()
		return nil, fmt.Errorf("send %s: %w", msgType, err)
	}
	return p, nil
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			p := c.current
			c.mu.Unlock()
			if p != nil {
				p.mu.Lock()
				p.finish(fmt.Errorf("%w: %v", ErrClosed, err))
				p.mu.Unlock()
			}
			return
		}
		var m message
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		c.mu.Lock()
		p := c.current
		c.mu.Unlock()
		if p != nil && m.ParentHeader.MsgID == p.id {
			p.apply(m)
		}
	}
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
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
