package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/julienschmidt/httprouter"

	"github.com/codebox/codebox/api"
)

// The session routes (docs/API.md#sessions).

func (s *server) createSession(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSessionRequest
	if err := decodeStrict(w, r, &req); err != nil {
		return err
	}
	sess, err := s.b.CreateSession(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set(api.SessionHeader, sess.SessionID)
	return writeJSON(w, http.StatusCreated, sess)
}

func (s *server) listSessions(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	query := api.SessionQuery{Environment: q.Get("environment"), State: q.Get("state"), PageToken: q.Get("page_token"),
		Tenant: q.Get("tenant"), Metadata: map[string]string{}}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxSessionsPage {
			return &api.Problem{Kind: api.Invalid, Field: "limit", Detail: "limit must be 1.." + strconv.Itoa(api.MaxSessionsPage)}
		}
		query.Limit = n
	}
	// metadata=team:research,run:42 (repeatable), or metadata.team=research for a value
	// with a comma.
	for _, list := range q["metadata"] {
		for _, pair := range strings.Split(list, ",") {
			k, v, ok := strings.Cut(pair, ":")
			if !ok || k == "" {
				return &api.Problem{Kind: api.Invalid, Field: "metadata", Detail: "metadata must be key:value pairs, comma-separated"}
			}
			query.Metadata[k] = v
		}
	}
	for name, vals := range q {
		if k, ok := strings.CutPrefix(name, "metadata."); ok && k != "" && len(vals) > 0 {
			query.Metadata[k] = vals[0]
		}
	}
	if len(query.Metadata) > api.MaxMetadataPairs {
		return &api.Problem{Kind: api.Invalid, Field: "metadata", Detail: "at most " + strconv.Itoa(api.MaxMetadataPairs) + " metadata pairs"}
	}
	list, err := s.b.ListSessions(r.Context(), query)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, list)
}

// sessionID is the {id} of a session route, checked.
func sessionID(r *http.Request) (string, error) {
	id := httprouter.ParamsFromContext(r.Context()).ByName("id")
	if err := api.ValidateUserUUID(id); err != nil {
		return "", err
	}
	return id, nil
}

func (s *server) getSession(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	sess, err := s.b.GetSession(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

func (s *server) updateSession(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	var req api.UpdateSessionRequest
	if err := decodeStrict(w, r, &req); err != nil {
		return err
	}
	sess, err := s.b.UpdateSession(r.Context(), id, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

func (s *server) deleteSession(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	if err := s.b.DeleteSession(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// maxShapeBody bounds the body of a session route.
const maxShapeBody = 512 << 10

// decodeStrict is decodeJSON for the newer routes: a field the request type does not have
// is a 422 naming it, not silently ignored (a typo'd "limit" would otherwise make a session
// without the limit asked for).
func decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	// A session's shape is small (env at most 256 KiB): a body of 8 MiB of metadata keys
	// would be decoded whole, at many times its size, before a bound refused it.
	data, err := readBody(w, r, maxShapeBody)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			return api.Errorf(http.StatusBadRequest, "request body must be one JSON object")
		}
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return &api.Error{Status: http.StatusUnprocessableEntity, Field: typeErr.Field,
			Detail: "field " + strconv.Quote(typeErr.Field) + " must be of type " + typeErr.Type.String()}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &api.Error{Status: http.StatusUnprocessableEntity, Field: field, Detail: "unknown field " + strconv.Quote(api.Echo(field))}
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return api.Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
	}
	return api.Errorf(http.StatusBadRequest, "request body: %v", err)
}
