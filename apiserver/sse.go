package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/codebox/codebox/api"
)

// sseKeepAlive is how often a quiet event stream gets a comment line, so that proxies
// between the caller and the daemon do not take it for dead.
const sseKeepAlive = 15 * time.Second

// wantsEvents says whether the caller asked for server-sent events.
func wantsEvents(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt != "text/event-stream" {
				continue
			}
			if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q <= 0 {
				return false // "not this", said explicitly
			}
			return true
		}
	}
	return false
}

// executeEvents answers an execute as server-sent events: the call's output as it
// arrives, then done. Past the request's checks the answer is 200 and every outcome is a
// done event. The caller interrupts by closing the connection (the session is kept).
func (s *server) executeEvents(w http.ResponseWriter, r *http.Request, user string, req api.ExecuteRequest) error {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // a proxy that buffers would hold the output back
	w.WriteHeader(http.StatusOK)
	rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	if err := rc.Flush(); err != nil {
		return nil // the caller is gone
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	box := newOutbox()
	call := &streamCall{box: box, cancel: func() { cancel(nil) }}

	written := make(chan struct{})
	go func() {
		defer close(written)
		tick := time.NewTicker(sseKeepAlive)
		defer tick.Stop()
		failed := false
		var buf bytes.Buffer
		for {
			e, ok, idle := box.next(context.Background(), tick.C)
			if !ok {
				return
			}
			if failed {
				continue
			}
			buf.Reset()
			if idle {
				buf.WriteString(": keep-alive\n\n")
			} else {
				writeSSE(&buf, e)
			}
			rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
			_, err := w.Write(buf.Bytes())
			if err == nil {
				err = rc.Flush()
			}
			if err != nil { // gone, or not reading: the call is interrupted
				failed = true
				cancel(err)
			}
		}
	}()
	defer func() { // the writer ends, whatever happened to the call
		box.close()
		<-written
	}()
	func() {
		defer func() {
			if v := recover(); v != nil { // the stream is under way: its done says so
				s.log.Error("stream call panic", "user", user, "panic", v)
			}
		}()
		s.b.Execute(ctx, user, req, call)
	}()
	call.mu.Lock()
	answered := call.closed
	call.mu.Unlock()
	if !answered { // a backend that returned without answering
		call.Reply(ctx, nil, &api.Problem{Kind: api.Internal, Detail: "no answer"})
	}
	return nil
}

// writeSSE writes e as one server-sent event: its type, and its JSON on one line.
func writeSSE(w io.Writer, e api.Event) {
	io.WriteString(w, "event: "+e.Type+"\ndata: ")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(e) // ends the line; JSON escapes the newlines of its strings
	io.WriteString(w, "\n")
}
