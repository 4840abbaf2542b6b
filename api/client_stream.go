package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"mime"
	"net/http"
)

// maxEventLine bounds one line of an event stream the client reads: a display event holds
// at most the daemon's output cap, JSON-escaped.
const maxEventLine = 64 << 20

// Stream runs req in userUUID's session and yields its events as they arrive (server-sent
// events), the last one done. A failure before the stream starts (a bad request, a wrong
// token: an *Error) or a stream that breaks before done is yielded as the error, last.
// Stopping the iteration, or ctx ending, closes the connection, which interrupts the call;
// the session keeps its state.
func (c *Client) Stream(ctx context.Context, userUUID string, req ExecuteRequest) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		body, err := json.Marshal(req)
		if err != nil {
			yield(Event{}, err)
			return
		}
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/execute?"+userQuery(userUUID).Encode(), bytes.NewReader(body))
		if err != nil {
			yield(Event{}, err)
			return
		}
		hreq.Header.Set("Content-Type", "application/json")
		hreq.Header.Set("Accept", "text/event-stream")
		resp, err := c.send(hreq)
		if err != nil {
			yield(Event{}, err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			yield(Event{}, errorFrom(resp))
			return
		}
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
			yield(Event{}, fmt.Errorf("POST /api/v1/execute: answer is %q, not an event stream", mt))
			return
		}
		for e, err := range readEvents(bufio.NewReader(resp.Body)) {
			if !yield(e, err) || err != nil || e.Type == EventDone {
				return
			}
		}
	}
}

// readEvents parses a server-sent event stream: each event's data is one Event in JSON.
// It yields an error, last, when the stream ends before a done event.
func readEvents(r *bufio.Reader) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
		var data []byte
		for sc.Scan() {
			line := sc.Bytes()
			switch {
			case len(line) == 0: // the end of an event
				if len(data) == 0 {
					continue
				}
				var e Event
				if err := json.Unmarshal(data, &e); err != nil {
					yield(Event{}, fmt.Errorf("event stream: malformed event: %w", err))
					return
				}
				data = data[:0]
				if !yield(e, nil) || e.Type == EventDone {
					return
				}
			case bytes.HasPrefix(line, []byte("data:")):
				data = append(data, bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))...)
			}
			// Comments (keep-alives) and event: lines need nothing: the JSON has the type.
		}
		err := sc.Err()
		if err == nil {
			err = errors.New("event stream ended before the call's done event")
		}
		yield(Event{}, fmt.Errorf("event stream: %w", err))
	}
}
