package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/connguard"
	"github.com/gorilla/websocket"
)

// Bounds of a websocket stream. Every one of them is a client's to hit: what it sends is
// hostile input, and a client that stops reading must cost the daemon a bounded buffer.
const (
	// maxAuthMessage bounds the first message of a socket not yet authenticated.
	maxAuthMessage = 4 << 10
	// maxStreamMessage bounds a message: an execute's code may be as large as over REST.
	maxStreamMessage = api.MaxJSONBody + 64<<10
	// maxStreamCalls bounds the calls a socket has queued or running, and
	// maxQueuedCode the code they hold: over REST a connection holds one body.
	maxStreamCalls = 16
	maxQueuedCode  = 2 * api.MaxJSONBody
	// maxCallID bounds a call's id, which every event of the call repeats.
	maxCallID = 128
	// readIdle is how long the server waits for any message or pong before it takes the
	// client for gone.
	readIdle = 75 * time.Second
	// eventWriteTimeout is how long one event may take to write: a client that reads
	// nothing for that long is disconnected (its output is dropped well before).
	eventWriteTimeout = 30 * time.Second
)

// Bounds of the streams that the tests shorten.
var (
	// authTimeout is how long a socket without a token in its headers has to send auth.
	authTimeout = 3 * time.Second
	// pingInterval is how often the server pings, and looks for an idle socket.
	pingInterval = 30 * time.Second
	// streamIdle closes a socket that ran no call and sent nothing for that long: pongs,
	// which any library sends by itself, do not keep it.
	streamIdle = 10 * time.Minute
	// maxStreams bounds the authenticated sockets, well below the API's connection limit,
	// so that sockets held open never lock out REST callers.
	maxStreams = 1024
	// maxUnauthStreams bounds the sockets still waiting for their auth message, and
	// maxUnauthPerSource those of one source address: tokenless handshakes have a budget of
	// their own, so they never take an authenticated client's place.
	maxUnauthStreams   = 64
	maxUnauthPerSource = 8
)

// streamLimits are those bounds as a handler took them when it was made: a socket's
// goroutines outlive its test's server, so they must not read the variables a later test
// changes.
type streamLimits struct {
	auth, ping, idle             time.Duration
	max, unauth, unauthPerSource int
}

func currentStreamLimits() streamLimits {
	return streamLimits{auth: authTimeout, ping: pingInterval, idle: streamIdle, max: maxStreams,
		unauth: maxUnauthStreams, unauthPerSource: maxUnauthPerSource}
}

// clientMessage is what a client sends on the socket.
type clientMessage struct {
	Type     string   `json:"type"`
	ID       string   `json:"id"`
	Token    string   `json:"token"`
	Code     string   `json:"code"`
	Language string   `json:"language"`
	Timeout  *float64 `json:"timeout"`
}

// closeEvent is the writer's cue to close the socket (never sent as an event).
const closeEvent = "close"

// wsStream is one websocket: a reader (this handler's goroutine) takes messages, a runner
// executes the calls one after another, a writer sends the events.
type wsStream struct {
	s    *server
	conn *websocket.Conn
	user string
	// cred is what the socket authenticated with, checked again at each call: a key
	// removed from the keys file, or a session's token whose session ended, stops working
	// on sockets already open too.
	cred string
	box  *outbox
	// ctx ends with the socket: the running call is interrupted, queued ones dropped.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	calls    []*wsCall // queued; the first is running once the runner took it
	code     int       // bytes of code the calls hold
	wake     chan struct{}
	draining bool
	ran      int
	active   time.Time // the last message, or the end of the last call
}

type wsCall struct {
	streamCall
	req api.ExecuteRequest
	ctx context.Context
}

// stream serves GET /api/v1/stream.
func (s *server) stream(w http.ResponseWriter, r *http.Request) error {
	// A page of another origin never gets as far as a place or a token check.
	if !s.originAllowed(r) {
		return api.Errorf(http.StatusForbidden, "origin %q is not allowed", api.Echo(r.Header.Get("Origin")))
	}
	user := r.URL.Query().Get("user_uuid")
	if err := api.ValidateUserUUID(user); err != nil {
		return err
	}
	authed := false
	cred := credential(r)
	if cred != "" {
		ctx, err := s.callerOf(r, cred)
		if err != nil {
			return err
		}
		r = r.WithContext(ctx)
		connguard.Authenticated(ctx)
		authed = true
	}
	// The place is taken before the upgrade answers, so that sockets opened at once cannot
	// all pass a count none of them is in yet. A socket that has shown no token takes a
	// place of the small budget for those, until its auth message moves it.
	src := s.clientIP(r)
	if authed {
		if !s.streams.reserve(s.limits.max) {
			return &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: 5 * time.Second,
				Detail: fmt.Sprintf("%d streams are open, the most codeboxd keeps", s.limits.max)}
		}
	} else if !s.streams.reserveUnauth(src, s.limits.unauth, s.limits.unauthPerSource) {
		return &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: 5 * time.Second,
			Detail: "too many streams are waiting for their auth message; send the token in the X-Auth-Token header, or retry"}
	}
	defer func() {
		if authed {
			s.streams.release()
		} else {
			s.streams.releaseUnauth(src)
		}
	}()
	up := websocket.Upgrader{
		CheckOrigin: func(*http.Request) bool { return true }, // checked above
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			writeJSON(w, status, map[string]any{"detail": reason.Error()})
		},
	}
	conn, err := up.Upgrade(w, r, http.Header{api.SessionHeader: {user}})
	if err != nil {
		return nil // answered by up.Error
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.status = http.StatusSwitchingProtocols
	}
	st := &wsStream{s: s, conn: conn, user: user, cred: cred, box: newOutbox(), wake: make(chan struct{}, 1), active: time.Now()}
	// The request's context ends only when this handler returns: the socket's own ends
	// with the socket, or when the daemon shuts down.
	st.ctx, st.cancel = context.WithCancelCause(context.WithoutCancel(r.Context()))
	defer st.cancel(nil)
	if !authed {
		ctx, ok := st.authenticate(r)
		if !ok {
			st.conn.Close()
			return nil
		}
		st.ctx = ctx
		if !s.streams.promote(src, s.limits.max) {
			st.closeWith(websocket.CloseTryAgainLater, fmt.Sprintf("%d streams are open, the most codeboxd keeps", s.limits.max))
			return nil
		}
		authed = true
	}
	if !s.streams.add(st) {
		st.closeWith(websocket.CloseGoingAway, "codeboxd is shutting down")
		return nil
	}
	defer s.streams.remove(st)
	st.serve()
	return nil
}

// originAllowed lets a browser open a socket from the daemon's own origin or one the CORS
// list allows; other clients send no Origin.
func (s *server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.Contains(s.cfg.CORSOrigins, "*") || slices.Contains(s.cfg.CORSOrigins, origin)
}

func (st *wsStream) serve() {
	st.conn.SetPongHandler(func(string) error {
		return st.conn.SetReadDeadline(time.Now().Add(readIdle))
	})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); st.write() }()
	go func() { defer wg.Done(); st.ping() }()
	runnerDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(runnerDone); st.run() }()

	err := st.read()
	st.cancel(err)
	st.conn.Close() // the client is gone, or the writer closed the socket
	<-runnerDone    // its calls were interrupted and answered
	st.box.close()
	wg.Wait()
	st.s.log.Debug("stream closed", "user", st.user, "calls", st.ran, "why", err)
}

// authenticate waits for the auth message of a socket whose request had no token, and
// returns the socket's context carrying who the caller is.
func (st *wsStream) authenticate(r *http.Request) (context.Context, bool) {
	st.conn.SetReadDeadline(time.Now().Add(st.s.limits.auth))
	data, err := st.readMessage(maxAuthMessage, nil)
	if err != nil {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			st.closeWith(websocket.ClosePolicyViolation, `authentication required: send {"type": "auth", "token": "..."} first`)
		}
		return nil, false
	}
	var m clientMessage
	if json.Unmarshal(data, &m) != nil || m.Type != "auth" {
		st.closeWith(websocket.ClosePolicyViolation, `the first message must be {"type": "auth", "token": "..."}`)
		return nil, false
	}
	ctx, err := st.s.callerOf(r.WithContext(st.ctx), m.Token)
	if err != nil {
		st.closeWith(websocket.ClosePolicyViolation, "invalid token")
		return nil, false
	}
	st.cred = m.Token
	return ctx, true
}

// read takes the client's messages until the socket ends; it returns why.
func (st *wsStream) read() error {
	for {
		st.conn.SetReadDeadline(time.Now().Add(readIdle))
		// A message is held while it is read and handled; a call's code stays charged
		// until the call ends (see execute and run).
		msg := &charge{b: &st.s.held}
		data, err := st.readMessage(maxStreamMessage, msg)
		if errors.Is(err, errOverBudget) {
			msg.release()
			st.closeWith(websocket.CloseTryAgainLater, "codeboxd holds as much of callers' requests as it may: retry shortly")
			return err
		}
		if err != nil {
			msg.release()
			return err
		}
		st.mu.Lock()
		st.active = time.Now()
		st.mu.Unlock()
		handled := st.handle(data)
		msg.release()
		if !handled {
			st.closeWith(websocket.ClosePolicyViolation, "too many answers waiting: read the events")
			return errors.New("client does not read")
		}
	}
}

var errTooLarge = errors.New("message too large")

// readMessage reads one text message of at most limit bytes, taking what it reads from c
// (nil: nothing taken); a larger one closes the socket (1009) and a binary one is refused
// (1003).
func (st *wsStream) readMessage(limit int64, c *charge) ([]byte, error) {
	typ, r, err := st.conn.NextReader()
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(chargedBody{r, c}, limit+1))
	if errors.Is(err, errOverBudget) {
		// The rest of the message is read and dropped, never held: a socket closed with
		// it unread would be reset, and the client would not learn why.
		io.Copy(io.Discard, io.LimitReader(r, limit))
	}
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		st.closeWith(websocket.CloseMessageTooBig, fmt.Sprintf("message larger than %d bytes", limit))
		return nil, errTooLarge
	}
	if typ != websocket.TextMessage {
		st.closeWith(websocket.CloseUnsupportedData, "messages are JSON text")
		return nil, errors.New("binary message")
	}
	return data, nil
}

// closeWith sends a close frame with a reason and closes the socket.
func (st *wsStream) closeWith(code int, reason string) {
	st.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	st.conn.Close()
}

// handle takes one message; false when its answer cannot be queued (see maxNotes).
func (st *wsStream) handle(data []byte) bool {
	var m clientMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return st.protocolError("", "field %q must be of type %s", api.Echo(te.Field), te.Type)
		}
		return st.protocolError("", "message is not a JSON object: %s", api.Echo(err.Error()))
	}
	switch m.Type {
	case "execute":
		return st.execute(m)
	case "interrupt":
		if m.ID == "" {
			return st.protocolError("", "interrupt needs the id of a call")
		}
		if len(m.ID) > maxCallID {
			return st.protocolError("", "no call has an id longer than %d bytes", maxCallID)
		}
		st.mu.Lock()
		i := slices.IndexFunc(st.calls, func(c *wsCall) bool { return c.id == m.ID })
		var c *wsCall
		if i >= 0 {
			c = st.calls[i]
		}
		st.mu.Unlock()
		if c == nil {
			return st.protocolError("", "no call with id %q is queued or running (it may have ended)", m.ID)
		}
		c.interrupt()
		return true
	case "auth":
		return st.protocolError("", "this socket is authenticated already")
	case "":
		return st.protocolError("", "message has no type")
	default:
		return st.protocolError("", "unknown message type %q: execute, interrupt", api.Echo(m.Type))
	}
}

// protocolError answers a message the stream could not take.
func (st *wsStream) protocolError(id, format string, args ...any) bool {
	return st.box.note(api.Event{Type: api.EventError, ID: id, Ename: api.ProtocolError, Evalue: fmt.Sprintf(format, args...),
		Traceback: []string{}})
}

func (st *wsStream) execute(m clientMessage) bool {
	if _, ok := st.s.auth.Authenticate(st.cred); !ok {
		st.closeWith(websocket.ClosePolicyViolation, "the key or token of this socket is no longer valid")
		return false
	}
	switch {
	case m.ID == "":
		return st.protocolError("", "execute needs an id: its events carry it")
	case len(m.ID) > maxCallID || !utf8.ValidString(m.ID):
		return st.protocolError("", "id must be at most %d bytes of UTF-8", maxCallID)
	}
	st.mu.Lock()
	taken := slices.ContainsFunc(st.calls, func(q *wsCall) bool { return q.id == m.ID })
	st.mu.Unlock()
	if taken { // before anything that answers with the id: the call that has it runs on
		return st.protocolError("", "a call with id %q is queued or running already", m.ID)
	}
	ctx, cancel := context.WithCancel(st.ctx)
	c := &wsCall{streamCall: streamCall{id: m.ID, box: st.box, cancel: cancel}, ctx: ctx,
		req: api.ExecuteRequest{Code: m.Code, Language: m.Language, Timeout: m.Timeout}}
	if err := c.req.Validate(st.s.cfg.MaxExecTimeout); err != nil {
		return st.reject(c, err)
	}
	st.mu.Lock()
	var refuse error
	switch {
	case st.draining:
		refuse = &api.Problem{Kind: api.Busy, Detail: "codeboxd is shutting down"}
	case len(st.calls) >= maxStreamCalls:
		refuse = &api.Problem{Kind: api.Busy, Detail: fmt.Sprintf("%d calls are queued or running on this socket already", maxStreamCalls)}
	case st.code+len(m.Code) > maxQueuedCode:
		refuse = &api.Problem{Kind: api.Busy, Detail: fmt.Sprintf("the calls queued on this socket hold %d bytes of code already", st.code)}
	case !st.s.held.take(int64(len(m.Code))): // given back when the call leaves the queue (run)
		refuse = &api.Problem{Kind: api.Busy, Detail: "codeboxd holds as much of callers' requests as it may: retry shortly"}
	default:
		st.calls = append(st.calls, c)
		st.code += len(m.Code)
	}
	st.mu.Unlock()
	if refuse != nil {
		return st.reject(c, refuse)
	}
	select {
	case st.wake <- struct{}{}:
	default:
	}
	return true
}

// reject answers an execute that will not run: an error event that says why, then its
// done; false when they cannot be queued.
func (st *wsStream) reject(c *wsCall, err error) bool {
	defer c.cancel()
	detail := "internal error"
	var he *api.Error
	var p *api.Problem
	if errors.As(err, &he) {
		detail = he.Detail
	} else if errors.As(err, &p) {
		detail = p.Detail
	}
	return st.protocolError(c.id, "%s", detail) && c.Reply(c.ctx, nil, err) == nil
}

// run executes the socket's calls in order, until the socket ends or drains.
func (st *wsStream) run() {
	for {
		st.mu.Lock()
		var c *wsCall
		if len(st.calls) > 0 {
			c = st.calls[0]
		}
		draining := st.draining
		st.mu.Unlock()
		var err error
		switch {
		case c != nil && c.ctx.Err() != nil:
			// Interrupted while queued (its done says so), or the socket ended.
			err = c.Reply(c.ctx, nil, &api.Problem{Kind: api.Busy, Detail: "the call was cancelled before it ran", Cause: c.ctx.Err()})
		case c != nil && draining:
			if !st.reject(c, &api.Problem{Kind: api.Busy, Detail: "codeboxd is shutting down"}) {
				err = errNotReading
			}
		case c != nil:
			err = st.runCall(c)
		case draining:
			st.box.note(api.Event{Type: closeEvent})
			return
		default:
			if st.ctx.Err() != nil {
				return
			}
			select {
			case <-st.wake:
			case <-st.ctx.Done():
			}
			continue
		}
		if errors.Is(err, errNotReading) { // a done that cannot be queued: the contract is broken
			st.closeWith(websocket.ClosePolicyViolation, "too many answers waiting: read the events")
		}
		c.cancel()
		st.mu.Lock()
		st.calls = slices.DeleteFunc(st.calls, func(q *wsCall) bool { return q == c })
		st.code -= len(c.req.Code)
		st.s.held.give(int64(len(c.req.Code)))
		st.active = time.Now()
		st.mu.Unlock()
	}
}

// runCall runs one call through the backend, which answers it; a backend that returns
// without answering, or panics, still gives the call its done.
func (st *wsStream) runCall(c *wsCall) (err error) {
	defer func() {
		if v := recover(); v != nil {
			st.s.log.Error("stream call panic", "user", st.user, "panic", v)
			err = errors.New("panic")
		}
		c.mu.Lock()
		answered := c.closed
		c.mu.Unlock()
		if !answered {
			if rerr := c.Reply(c.ctx, nil, &api.Problem{Kind: api.Internal, Detail: "no answer"}); rerr != nil {
				err = rerr
			}
		}
	}()
	st.ran++
	return st.s.b.Execute(c.ctx, st.user, c.req, c)
}

// drain stops taking calls; the running one ends, then the socket closes (1001).
func (st *wsStream) drain() {
	st.mu.Lock()
	st.draining = true
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// write sends the events in order; it ends the socket when a write fails.
func (st *wsStream) write() {
	failed := false
	for {
		e, ok, _ := st.box.next(context.Background(), nil)
		if !ok {
			return
		}
		if failed {
			continue
		}
		if e.Type == closeEvent {
			st.closeWith(websocket.CloseGoingAway, "codeboxd is shutting down")
			failed = true
			continue
		}
		st.conn.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		if err := st.writeEvent(e); err != nil {
			st.cancel(fmt.Errorf("write: %w", err))
			st.conn.Close()
			failed = true
		}
	}
}

func (st *wsStream) writeEvent(e api.Event) error {
	w, err := st.conn.NextWriter(websocket.TextMessage)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// ping keeps the socket alive and finds clients that went away without closing it.
func (st *wsStream) ping() {
	t := time.NewTicker(st.s.limits.ping)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-t.C:
			st.mu.Lock()
			idle := len(st.calls) == 0 && time.Since(st.active) > st.s.limits.idle
			st.mu.Unlock()
			if idle {
				st.closeWith(websocket.CloseGoingAway, fmt.Sprintf("no call for %s", st.s.limits.idle))
				return
			}
			if err := st.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(eventWriteTimeout)); err != nil {
				st.cancel(fmt.Errorf("ping: %w", err))
				st.conn.Close()
				return
			}
		}
	}
}

// streams are the open websockets, for a graceful shutdown: http.Server.Shutdown does not
// wait for connections a handler took over.
type streams struct {
	mu    sync.Mutex
	open  map[*wsStream]struct{}
	taken int // places reserved: authenticated sockets open or being upgraded
	// unauth and unauthBy (per source address) count the sockets waiting for their auth
	// message.
	unauth   int
	unauthBy map[string]int
	closing  bool
	wg       sync.WaitGroup
}

// reserve takes one of max places for a socket; false when all are taken.
func (ss *streams) reserve(max int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.taken >= max {
		return false
	}
	ss.taken++
	return true
}

// release gives back a place reserve took.
func (ss *streams) release() {
	ss.mu.Lock()
	ss.taken--
	ss.mu.Unlock()
}

// reserveUnauth takes a place of the budget of sockets waiting for their auth message:
// at most max in all and perSource from src.
func (ss *streams) reserveUnauth(src string, max, perSource int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.unauth >= max || ss.unauthBy[src] >= perSource {
		return false
	}
	if ss.unauthBy == nil {
		ss.unauthBy = map[string]int{}
	}
	ss.unauth++
	ss.unauthBy[src]++
	return true
}

func (ss *streams) releaseUnauth(src string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.releaseUnauthLocked(src)
}

func (ss *streams) releaseUnauthLocked(src string) {
	ss.unauth--
	if ss.unauthBy[src]--; ss.unauthBy[src] <= 0 {
		delete(ss.unauthBy, src)
	}
}

// promote moves an authenticated socket from the unauthenticated budget to one of max
// places; false (and nothing moved) when all are taken.
func (ss *streams) promote(src string, max int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.taken >= max {
		return false
	}
	ss.releaseUnauthLocked(src)
	ss.taken++
	return true
}

func (ss *streams) add(st *wsStream) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closing {
		return false
	}
	if ss.open == nil {
		ss.open = map[*wsStream]struct{}{}
	}
	ss.open[st] = struct{}{}
	ss.wg.Add(1)
	return true
}

func (ss *streams) remove(st *wsStream) {
	ss.mu.Lock()
	delete(ss.open, st)
	ss.mu.Unlock()
	ss.wg.Done()
}

// shutdown lets each socket finish its running call and closes it; when ctx ends first,
// the calls still running are interrupted.
func (ss *streams) shutdown(ctx context.Context) {
	ss.mu.Lock()
	ss.closing = true
	all := make([]*wsStream, 0, len(ss.open))
	for st := range ss.open {
		all = append(all, st)
	}
	ss.mu.Unlock()
	for _, st := range all {
		st.drain()
	}
	done := make(chan struct{})
	go func() { ss.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	for _, st := range all {
		st.cancel(errors.New("shutdown"))
		st.conn.Close()
	}
	<-done
}
