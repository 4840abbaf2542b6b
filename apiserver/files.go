package apiserver

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/codebox/codebox/api"
)

// userOf validates the user_uuid query parameter, and names the session in the answer.
func userOf(w http.ResponseWriter, r *http.Request) (string, error) {
	u := r.URL.Query().Get("user_uuid")
	if err := api.ValidateUserUUID(u); err != nil {
		return "", err
	}
	w.Header().Set(api.SessionHeader, u)
	return u, nil
}

// decodeFiles reads a batch body: 1..MaxFilesPerCall files.
func decodeFiles[T any](w http.ResponseWriter, r *http.Request) ([]T, error) {
	var req api.FilesRequest[T]
	if err := decodeJSON(w, r, &req); err != nil {
		return nil, err
	}
	switch {
	case len(req.Files) == 0:
		return nil, api.Errorf(http.StatusUnprocessableEntity, "files must list at least one file")
	case len(req.Files) > api.MaxFilesPerCall:
		return nil, api.Errorf(http.StatusBadRequest, "at most %d files a call, not %d", api.MaxFilesPerCall, len(req.Files))
	}
	return req.Files, nil
}

// writeFiles answers a batch call: ok when every file succeeded, 207 otherwise.
func writeFiles(w http.ResponseWriter, ok int, resp *api.FilesResponse) {
	if resp.Results == nil {
		resp.Results = []api.FileResult{}
	}
	status := ok
	if !resp.Success {
		status = http.StatusMultiStatus
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, resp)
}

// batch serves one of the batch file calls: decode and bound the list, run it, answer ok
// or 207.
func batch[T any](s *server, run func(ctx context.Context, user string, files []T) (*api.FilesResponse, error), ok int) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		user, err := userOf(w, r)
		if err != nil {
			return err
		}
		files, err := decodeFiles[T](w, r)
		if err != nil {
			return err
		}
		s.longCall(w, s.cfg.FileTimeout+defaultWriteTimeout)
		resp, err := run(r.Context(), user, files)
		if err != nil {
			return err
		}
		writeFiles(w, ok, resp)
		return nil
	}
}

// requestBody is a request's body whose reads a backend can cut off (SetReadDeadline): a
// file call that must end early (its session released, its time up) does not wait for a
// slow client.
type requestBody struct {
	io.Reader
	rc *http.ResponseController
}

func (b requestBody) SetReadDeadline(t time.Time) error { return b.rc.SetReadDeadline(t) }

func (s *server) putFile(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(w, r)
	if err != nil {
		return err
	}
	if s.cfg.MaxFileBytes > 0 && r.ContentLength > s.cfg.MaxFileBytes {
		return api.Errorf(http.StatusRequestEntityTooLarge, "the body (%d bytes) is larger than the file size limit (%d bytes)", r.ContentLength, s.cfg.MaxFileBytes)
	}
	rc := http.NewResponseController(w)
	s.fileDeadline(rc)
	res, err := s.b.PutFile(r.Context(), user, r.URL.Query().Get("path"), requestBody{r.Body, rc})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, res)
	return nil
}

// fileDeadline lets the body and the answer of a file call take up to the file timeout,
// instead of the server's short defaults for JSON calls.
func (s *server) fileDeadline(rc *http.ResponseController) {
	if s.cfg.FileTimeout > 0 {
		deadline := time.Now().Add(s.cfg.FileTimeout)
		rc.SetReadDeadline(deadline)
		rc.SetWriteDeadline(deadline)
	}
}

func (s *server) getFile(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(w, r)
	if err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	s.fileDeadline(rc)
	return s.b.GetFile(r.Context(), user, r.URL.Query().Get("path"),
		func(ctx context.Context, name string, modTime time.Time, content io.ReadSeeker) error {
			// When the call must end (released, or out of time), a write blocked on a slow
			// reader fails at once.
			stop := context.AfterFunc(ctx, func() { rc.SetWriteDeadline(time.Now()) })
			defer stop()
			w.Header().Set("Content-Disposition", "attachment; filename*=UTF-8''"+url.PathEscape(name))
			// ServeContent sets Content-Length and Content-Type (from the name, else sniffed)
			// and answers Range requests.
			http.ServeContent(w, r, name, modTime, content)
			return nil
		})
}

// intParam reads an optional non-negative integer query parameter, at most maxValue.
func intParam(r *http.Request, name string, def, maxValue int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxValue {
		return 0, api.Errorf(http.StatusUnprocessableEntity, "%s must be an integer from 0 to %d, not %q", name, maxValue, v)
	}
	return n, nil
}

func (s *server) listFiles(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(w, r)
	if err != nil {
		return err
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		p = "/sandbox/"
	}
	offset, err := intParam(r, "offset", 0, 1<<31-1)
	if err != nil {
		return err
	}
	limit, err := intParam(r, "limit", api.MaxListEntries, api.MaxListEntries)
	if err != nil {
		return err
	}
	if limit == 0 {
		return api.Errorf(http.StatusUnprocessableEntity, "limit must be from 1 to %d", api.MaxListEntries)
	}
	s.longCall(w, s.cfg.FileTimeout+defaultWriteTimeout)
	resp, err := s.b.ListFiles(r.Context(), user, p, offset, limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
