package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"
)

// userOf validates the user_uuid query parameter.
func userOf(r *http.Request) (string, error) {
	u := r.URL.Query().Get("user_uuid")
	return u, ValidateUserUUID(u)
}

// decodeFiles reads a batch body: 1..MaxFilesPerCall files.
func decodeFiles[T any](w http.ResponseWriter, r *http.Request) ([]T, error) {
	var req FilesRequest[T]
	if err := decodeJSON(w, r, &req); err != nil {
		return nil, err
	}
	switch {
	case len(req.Files) == 0:
		return nil, Errorf(http.StatusUnprocessableEntity, "files must list at least one file")
	case len(req.Files) > MaxFilesPerCall:
		return nil, Errorf(http.StatusBadRequest, "at most %d files a call, not %d", MaxFilesPerCall, len(req.Files))
	}
	return req.Files, nil
}

// writeFiles answers a batch call: ok when every file succeeded, 207 otherwise.
func writeFiles(w http.ResponseWriter, ok int, resp *FilesResponse) {
	if resp.Results == nil {
		resp.Results = []FileResult{}
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
func batch[T any](s *server, run func(ctx context.Context, user string, files []T) (*FilesResponse, error), ok int) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		user, err := userOf(r)
		if err != nil {
			return err
		}
		files, err := decodeFiles[T](w, r)
		if err != nil {
			return err
		}
		resp, err := run(r.Context(), user, files)
		if err != nil {
			return err
		}
		writeFiles(w, ok, resp)
		return nil
	}
}

func (s *server) putFile(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(r)
	if err != nil {
		return err
	}
	res, err := s.b.PutFile(r.Context(), user, r.URL.Query().Get("path"), r.Body)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, res)
	return nil
}

func (s *server) getFile(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(r)
	if err != nil {
		return err
	}
	return s.b.GetFile(r.Context(), user, r.URL.Query().Get("path"),
		func(name string, modTime time.Time, content io.ReadSeeker) error {
			w.Header().Set("Content-Disposition", "attachment; filename*=UTF-8''"+url.PathEscape(name))
			// ServeContent sets Content-Length and Content-Type (from the name, else sniffed)
			// and answers Range requests.
			http.ServeContent(w, r, name, modTime, content)
			return nil
		})
}

func (s *server) listFiles(w http.ResponseWriter, r *http.Request) error {
	user, err := userOf(r)
	if err != nil {
		return err
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		p = "/sandbox/"
	}
	resp, err := s.b.ListFiles(r.Context(), user, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
