// Package apiserver serves the API of package api over HTTP: the route table, handlers over
// an api.Backend, authentication, CORS, deadlines and the bounds on what callers may hold
// (connections aside: package connguard), the websocket and server-sent event streams with
// their outboxes, the seed's older routes, and the one mapping of a Problem's kind to an
// HTTP status. It mounts the console and the MCP endpoint it is given.
package apiserver

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/connguard"
)

func serveOpenAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Write(api.OpenAPI)
	return nil
}

// ServerConfig configures the handlers.
type ServerConfig struct {
	Token       string
	CORSOrigins []string // "*" allows any origin
	Log         *slog.Logger
	// MaxFileBytes refuses a direct upload whose Content-Length is larger, before its body
	// is read; 0: no such check (the backend still counts).
	MaxFileBytes int64
	// FileTimeout is how long a file call's body and answer may take; 0: the server's
	// defaults.
	FileTimeout time.Duration
	// MaxExecTimeout is the longest execute a caller may ask for: its answer may take that
	// long (plus the interrupt grace) before the server's write deadline cuts it.
	MaxExecTimeout time.Duration
	// BodyReadTimeout bounds reading a request's body (a client trickling it holds a
	// goroutine and a connection); 0: a minute.
	BodyReadTimeout time.Duration
	// Console, when set, is served at its Paths without a token (it is public: the page
	// asks for the token).
	Console Console
	// MCP, when set, serves the Model Context Protocol at /mcp, behind the token.
	MCP MCP
	// HeldBytes bounds the bytes of callers' requests the server holds at once (bodies being
	// read, code queued or running); 0: DefaultHeldBytes.
	HeldBytes int64
	// TrustedProxies are the addresses of proxies (a load balancer) whose requests say in
	// X-Forwarded-For where they come from; per-source bounds apply to that address.
	TrustedProxies []netip.Prefix
	// Auth says whose a credential is; nil: Token is the one key, an admin's of the
	// default tenant.
	Auth Authenticator
	// AuthFailed, when set, counts a failed authentication (reason: missing or invalid).
	AuthFailed func(reason string)
}

// MCP is the Model Context Protocol endpoint's handler.
type MCP interface {
	http.Handler
	// Shutdown lets running tool calls finish (until ctx ends), then ends the sessions and
	// their event streams, which would hold the server's shutdown.
	Shutdown(ctx context.Context)
}

// Console is the web console's handler.
type Console interface {
	http.Handler
	Paths() []string
}

type server struct {
	b    api.Backend
	cfg  ServerConfig
	auth Authenticator
	log  *slog.Logger
	// failures logs answers of 500 and over, one line each up to a few per interval and
	// a count for the rest: under overload every request would otherwise write a line.
	failures *sampler
	streams  streams
	limits   streamLimits
	// held bounds the bytes of callers' requests held at once (see budget).
	held budget
}

// defaultWriteTimeout bounds writing an answer to a caller that reads slowly.
const defaultWriteTimeout = time.Minute

// route is one route of the API: the router's and the OpenAPI document's (a test keeps
// them the same).
type route struct {
	method, path string
	who          access
	h            handlerFunc
}

// routes is the API's route table.
func (s *server) routes() []route {
	b := s.b
	return []route{
		{http.MethodGet, "/healthz", public, s.healthz},
		{http.MethodGet, "/openapi.json", public, serveOpenAPI},
		{http.MethodPost, "/api/v1/execute", keyed, s.execute},
		// A browser sends the token in the socket's first message.
		{http.MethodGet, "/api/v1/stream", selfish, s.stream},
		{http.MethodPost, "/api/v1/release", keyed, s.release},
		{http.MethodGet, "/api/v1/status", admin, s.status},
		{http.MethodPost, "/api/v1/files", keyed, batch(s, b.ImportFiles, http.StatusCreated)},
		{http.MethodDelete, "/api/v1/files", keyed, batch(s, b.DeleteFiles, http.StatusNoContent)},
		{http.MethodPost, "/api/v1/files/export", keyed, batch(s, b.ExportFiles, http.StatusOK)},
		{http.MethodPut, "/api/v1/files/content", keyed, s.putFile},
		{http.MethodGet, "/api/v1/files/content", keyed, s.getFile},
		{http.MethodGet, "/api/v1/files/list", keyed, s.listFiles},
		{http.MethodPost, "/api/v1/sessions", keyed, s.createSession},
		{http.MethodGet, "/api/v1/sessions", keyed, s.listSessions},
		{http.MethodGet, "/api/v1/sessions/:id", keyed, s.getSession},
		{http.MethodPatch, "/api/v1/sessions/:id", keyed, s.updateSession},
		{http.MethodDelete, "/api/v1/sessions/:id", keyed, s.deleteSession},
		{http.MethodPut, "/api/v1/sessions/:id/network", keyed, s.setNetwork},
		{http.MethodGet, "/api/v1/sessions/:id/network/events", keyed, s.networkEvents},
		{http.MethodPost, "/api/v1/sessions/:id/snapshots", keyed, s.createSnapshot},
		{http.MethodPost, "/api/v1/sessions/:id/fork", keyed, s.fork},
		{http.MethodGet, "/api/v1/snapshots", keyed, s.listSnapshots},
		{http.MethodGet, "/api/v1/snapshots/:snapshot", keyed, s.getSnapshot},
		{http.MethodDelete, "/api/v1/snapshots/:snapshot", keyed, s.deleteSnapshot},
		{http.MethodPost, "/api/v1/volumes", keyed, s.createVolume},
		{http.MethodGet, "/api/v1/volumes", keyed, s.listVolumes},
		{http.MethodGet, "/api/v1/volumes/:volume", keyed, s.getVolume},
		{http.MethodDelete, "/api/v1/volumes/:volume", keyed, s.deleteVolume},
		{http.MethodGet, "/api/v1/environments", keyed, s.listEnvironments},
		// The seed's older form, for its own clients: user_uuid in the body.
		{http.MethodPost, "/execute", keyed, s.execute},
		{http.MethodPost, "/release", keyed, s.legacyRelease},
		{http.MethodGet, "/status", admin, s.legacyStatus},
	}
}

// Handler is the API's HTTP handler.
type Handler struct {
	http.Handler
	s *server
}

// Shutdown ends the websocket streams (http.Server.Shutdown does not wait for them): each
// finishes its running call and is closed; when ctx ends first, the calls still running
// are interrupted. New streams are refused.
func (h *Handler) Shutdown(ctx context.Context) {
	if h.s.cfg.MCP != nil {
		go h.s.cfg.MCP.Shutdown(ctx)
	}
	h.s.streams.shutdown(ctx)
}

// NewHandler returns the API's HTTP handler.
func NewHandler(b api.Backend, cfg ServerConfig) *Handler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.BodyReadTimeout <= 0 {
		cfg.BodyReadTimeout = time.Minute
	}
	if cfg.HeldBytes <= 0 {
		cfg.HeldBytes = DefaultHeldBytes
	}
	auth := cfg.Auth
	if auth == nil {
		auth = tokenAuth(cfg.Token)
	}
	s := &server{b: b, cfg: cfg, auth: auth, log: cfg.Log,
		failures: newSampler(cfg.Log, failureLogInterval, failureLogBurst), limits: currentStreamLimits(),
		held: budget{max: cfg.HeldBytes}}
	r := httprouter.New()
	for _, rt := range s.routes() {
		r.Handler(rt.method, rt.path, s.wrap(rt.h, rt.who))
	}
	if cfg.Console != nil {
		page := s.wrap(func(w http.ResponseWriter, r *http.Request) error {
			cfg.Console.ServeHTTP(w, r)
			return nil
		}, public)
		for _, p := range cfg.Console.Paths() {
			r.Handler(http.MethodGet, p, page)
			r.Handler(http.MethodHead, p, page)
		}
	}
	if cfg.MCP != nil {
		mcp := s.wrap(func(w http.ResponseWriter, r *http.Request) error {
			switch r.Method {
			case http.MethodPost: // a tool call's answer (and its progress) may take as long as an execute
				s.longCall(w, s.cfg.MaxExecTimeout+2*time.Minute)
			case http.MethodGet: // the session's event stream: open until the session ends
				http.NewResponseController(w).SetWriteDeadline(time.Time{})
			}
			// What the SDK reads of the body is held like any other request's.
			r.Body = chargedReadCloser{chargedBody{r.Body, chargeOf(r)}, r.Body}
			cfg.MCP.ServeHTTP(w, r)
			return nil
		}, keyed)
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
			r.Handler(m, "/mcp", mcp)
		}
	}
	r.NotFound = s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusNotFound, "not found")
	}, public)
	r.MethodNotAllowed = s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusMethodNotAllowed, "method not allowed")
	}, public)
	r.HandleOPTIONS = true
	r.GlobalOPTIONS = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.cors(w, r)
		w.WriteHeader(http.StatusNoContent)
	})
	r.PanicHandler = func(w http.ResponseWriter, r *http.Request, v any) {
		s.log.Error("handler panic", "path", r.URL.Path, "panic", v)
		writeJSON(w, http.StatusInternalServerError, map[string]any{"detail": "internal error"})
	}
	return &Handler{Handler: r, s: s}
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// statusWriter remembers the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (deadlines, flushing).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// wrap adds CORS, authentication, error mapping and one log line per request.
func (s *server) wrap(h handlerFunc, who access) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		s.cors(w, r)
		rc := http.NewResponseController(w)
		if r.Body != http.NoBody {
			// Only while there is a body to read: once it is read, the server clears the
			// deadline for its background read, which sees a caller go away; a request
			// without a body starts that read at once, and a deadline here would cancel a
			// long call when it passed.
			rc.SetReadDeadline(start.Add(s.cfg.BodyReadTimeout))
		}
		rc.SetWriteDeadline(start.Add(defaultWriteTimeout))
		held := &charge{b: &s.held}
		defer held.release()
		r = r.WithContext(withCharge(r.Context(), held))
		var err error
		if who == keyed || who == admin {
			var ctx context.Context
			if ctx, err = s.callerOf(r, credential(r)); err == nil {
				r = r.WithContext(ctx)
				connguard.Authenticated(ctx)
				// An answer for one caller's key is nobody else's to keep.
				w.Header().Set("Cache-Control", "no-store")
				if who == admin && !api.CallerOf(ctx).Admin {
					err = api.Errorf(http.StatusForbidden, "this needs an admin key")
				}
			} else if statusOf401(err) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="codebox"`)
			}
		}
		if err == nil {
			err = h(w, r)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
		took := float64(time.Since(start).Microseconds()) / 1000
		if w.status >= 500 {
			s.failures.record(r.Context(), slog.LevelWarn, w.status, "request", "method", r.Method, "path", r.URL.Path,
				"status", w.status, "duration_ms", took)
		} else {
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", w.status, "duration_ms", took)
		}
	})
}

// clientIP is the address a request comes from: its peer's, or, when the peer is a
// trusted proxy, the nearest address in X-Forwarded-For that is not one.
func (s *server) clientIP(r *http.Request) string {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := peer.Addr().Unmap()
	if !s.trusted(addr) {
		return addr.String()
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if addr = a.Unmap(); !s.trusted(addr) {
			break
		}
	}
	return addr.String()
}

func (s *server) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func statusOf401(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Status == http.StatusUnauthorized
}

func (s *server) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	for _, o := range s.cfg.CORSOrigins {
		if o == "*" || o == origin {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Content-Type, X-Auth-Token, Authorization")
			h.Set("Access-Control-Max-Age", "600")
			return
		}
	}
}

func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var e *api.Error
	var p *api.Problem
	switch {
	case errors.As(err, &p): // the domain's failure: its kind says the status
		e = &api.Error{Status: statusOf(p.Kind), Detail: p.Detail, Field: p.Field, After: p.After, Ended: p.Ended,
			RetryAfter: p.RetryAfter, Cause: p.Cause}
		if p.Kind == api.Internal {
			e.Detail = "" // internals are logged, not sent
		}
	case errors.As(err, &e): // the HTTP layer's own (a malformed body, a bad parameter)
	default:
		e = &api.Error{Status: http.StatusInternalServerError, Cause: err}
	}
	// The cause of a failure the daemon did not mean (not an overload, not a caller gone
	// away), sampled like the access lines: a flood of them is one more way to flood the log.
	if e.Status >= 500 && e.Cause != nil && e.RetryAfter == 0 && !errors.Is(e.Cause, context.Canceled) {
		s.failures.record(r.Context(), slog.LevelError, e.Status, "request failed", "method", r.Method, "path", r.URL.Path, "status", e.Status, "err", e.Cause)
	}
	// Only an answer from the session says where it lives (see SessionHeader).
	w.Header().Del(api.SessionHeader)
	detail := e.Detail
	if detail == "" {
		detail = "internal error"
	}
	body := api.ErrorBody{Detail: detail, Field: e.Field, Aftermath: e.After, PreviousSession: e.Ended}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, e.Status, body)
}

// statusOf is the HTTP status that says a failure of kind k.
func statusOf(k api.Kind) int {
	switch k {
	case api.Invalid:
		return http.StatusUnprocessableEntity
	case api.BadRequest:
		return http.StatusBadRequest
	case api.NotFound:
		return http.StatusNotFound
	case api.Forbidden:
		return http.StatusForbidden
	case api.Conflict:
		return http.StatusConflict
	case api.TooLarge:
		return http.StatusRequestEntityTooLarge
	case api.Busy, api.Lost:
		return http.StatusServiceUnavailable
	case api.Timeout:
		return http.StatusGatewayTimeout
	case api.Upstream:
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// writeJSON answers v; an error means the caller went away or read too slowly.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

var errEmptyBody = api.Errorf(http.StatusBadRequest, "request body is empty")

// decodeJSON reads a bounded JSON body into v: 413 when too large, 400 when malformed,
// 422 when a field has the wrong type.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	data, err := readBody(w, r, api.MaxJSONBody)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	err = dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			return api.Errorf(http.StatusBadRequest, "request body must be one JSON object")
		}
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typeErr):
		return api.Errorf(http.StatusUnprocessableEntity, "field %q must be of type %s", typeErr.Field, typeErr.Type)
	case errors.Is(err, io.EOF):
		return errEmptyBody
	default:
		return api.Errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
}

// readBody reads a JSON body of at most limit bytes, charging the request's share of
// the held-bytes budget twice what it holds (the body, and what is decoded from it) before
// it holds it: a body announced by its Content-Length is charged before a byte is read, so
// callers that announce large bodies and send them slowly are refused at once.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	c := chargeOf(r)
	tooLarge := api.Errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", limit)
	if n := r.ContentLength; n >= 0 {
		if n > limit {
			return nil, tooLarge
		}
		if c != nil && !c.take(2*n) {
			return nil, overBudget()
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r.Body, data); err != nil {
			return nil, api.Errorf(http.StatusBadRequest, "request body ended before its Content-Length")
		}
		return data, nil
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(chargedBody{http.MaxBytesReader(w, r.Body, limit), c})
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return nil, tooLarge
	case errors.Is(err, errOverBudget):
		return nil, overBudget()
	case err != nil:
		return nil, api.Errorf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	return buf.Bytes(), nil
}

// decodeOptionalJSON is decodeJSON for a body that may be absent.
func decodeOptionalJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	if err := decodeJSON(w, r, v); err != errEmptyBody { // empty: a chunked body with nothing in it
		return err
	}
	return nil
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.b.Ping(ctx); err != nil {
		return &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: 2 * time.Second, Cause: err,
			Detail: "containerd is unreachable: sessions with a worker keep running, new sessions are refused until it is back"}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *server) execute(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecuteRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	user := r.URL.Query().Get("user_uuid")
	switch {
	case user == "":
		user = req.UserUUID
	case req.UserUUID != "" && req.UserUUID != user:
		return api.Errorf(http.StatusUnprocessableEntity, "user_uuid in the query and in the body differ")
	}
	if err := api.ValidateUserUUID(user); err != nil {
		return err
	}
	if err := req.Validate(s.cfg.MaxExecTimeout); err != nil {
		return err
	}
	w.Header().Set(api.SessionHeader, user)
	if wantsEvents(r) {
		return s.executeEvents(w, r, user, req)
	}
	s.longCall(w, s.cfg.MaxExecTimeout+2*time.Minute)
	answered := false
	err := s.b.Execute(r.Context(), user, req, api.ReplyFunc(func(ctx context.Context, resp *api.ExecuteResponse, err error) error {
		answered = true
		// The session waits while the answer is written: for a minute at most, and a
		// released session cuts it off.
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Now().Add(defaultWriteTimeout))
		if ctx.Err() == nil { // an answer that says the session was released is still sent
			stop := context.AfterFunc(ctx, func() { rc.SetWriteDeadline(time.Now()) })
			defer stop()
		}
		if err != nil {
			s.writeError(w, r, err)
			return nil
		}
		status := http.StatusOK
		if resp.Error != nil {
			status = http.StatusBadRequest
		}
		return writeJSON(w, status, resp)
	}))
	if !answered {
		return err
	}
	return nil
}

// longCall lets the answer of a call that may take up to d be written within d from now.
func (s *server) longCall(w http.ResponseWriter, d time.Duration) {
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
}

func (s *server) release(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.releaseUser(w, r); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// legacyRelease is the seed's POST /release: 200 with a sentence instead of 204.
func (s *server) legacyRelease(w http.ResponseWriter, r *http.Request) error {
	user, err := s.releaseUser(w, r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "detail": "Worker for user " + user + " has been released."})
}

// releaseUser releases the session named in the query or, for the older form, the body,
// and returns its user_uuid.
func (s *server) releaseUser(w http.ResponseWriter, r *http.Request) (string, error) {
	user := r.URL.Query().Get("user_uuid")
	var body struct {
		UserUUID string `json:"user_uuid"`
	}
	if err := decodeOptionalJSON(w, r, &body); err != nil {
		return "", err
	}
	switch {
	case user == "":
		user = body.UserUUID
	case body.UserUUID != "" && body.UserUUID != user:
		return "", api.Errorf(http.StatusUnprocessableEntity, "user_uuid in the query and in the body differ")
	}
	if err := api.ValidateUserUUID(user); err != nil {
		return "", err
	}
	s.longCall(w, defaultWriteTimeout)
	return user, s.b.Release(r.Context(), user)
}

func (s *server) status(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.b.Status())
	return nil
}

// LegacyStatus is the body of the seed's GET /status.
type LegacyStatus struct {
	TotalWorkers      int  `json:"total_workers"`
	BusyWorkers       int  `json:"busy_workers"`
	IdleWorkersInPool int  `json:"idle_workers_in_pool"`
	IsInitializing    bool `json:"is_initializing"`
}

func (s *server) legacyStatus(w http.ResponseWriter, r *http.Request) error {
	st := s.b.Status()
	return writeJSON(w, http.StatusOK, LegacyStatus{TotalWorkers: st.TotalWorkers, BusyWorkers: st.BusyWorkers,
		IdleWorkersInPool: st.IdleWorkers, IsInitializing: st.IsInitializing})
}
