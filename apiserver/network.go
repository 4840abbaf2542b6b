package apiserver

import (
	"net/http"
	"strconv"

	"github.com/codebox/codebox/api"
)

// maxEventsPage bounds one page of a session's network events.
const maxEventsPage = 1000

// setNetwork is PUT /api/v1/sessions/{id}/network: the session's policy replaced.
func (s *server) setNetwork(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	var p api.NetworkPolicy
	if err := decodeStrict(w, r, &p); err != nil {
		return err
	}
	sess, err := s.b.SetNetwork(r.Context(), id, p)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

// networkEvents is GET /api/v1/sessions/{id}/network/events?since=SEQ&limit=N.
func (s *server) networkEvents(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var since uint64
	if v := q.Get("since"); v != "" {
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			return &api.Problem{Kind: api.Invalid, Field: "since", Detail: "since must be an event's seq (a whole number)"}
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxEventsPage {
			return &api.Problem{Kind: api.Invalid, Field: "limit", Detail: "limit must be 1.." + strconv.Itoa(maxEventsPage)}
		}
	}
	events, err := s.b.NetworkEvents(r.Context(), id, since, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, events)
}
