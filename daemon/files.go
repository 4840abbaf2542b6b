package daemon

import (
	"context"
	"errors"

	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/sandboxfs"
	"github.com/codebox/codebox/transfer"
)

// maxParallelTransfers bounds downloads and uploads in flight across all requests.
const maxParallelTransfers = 8

// withSandbox runs fn on the session's disk while holding the session, so its worker is
// neither released nor replaced meanwhile. Without create, a user_uuid with no worker is a
// 404.
func (d *Daemon) withSandbox(ctx context.Context, user string, create bool, fn func(root *sandboxfs.Root) error) error {
	for {
		var s *session
		if create {
			s = d.lookup(user)
		} else {
			d.mu.Lock()
			s = d.sessions[user]
			d.mu.Unlock()
			if s == nil {
				return api.Errorf(http.StatusNotFound, "no session for this user_uuid")
			}
		}
		if err := s.acquire(ctx); err != nil {
			return &api.Error{Status: http.StatusServiceUnavailable, Detail: "request cancelled while waiting for the session", Cause: err}
		}
		if s.gone {
			s.release()
			continue
		}
		err := d.sandboxIn(ctx, s, create, fn)
		s.lastUsed.Store(time.Now().UnixNano())
		s.release()
		return err
	}
}

func (d *Daemon) sandboxIn(ctx context.Context, s *session, create bool, fn func(root *sandboxfs.Root) error) error {
	if s.worker == nil {
		if !create {
			return api.Errorf(http.StatusNotFound, "no session for this user_uuid")
		}
		if err := d.assign(ctx, s); err != nil {
			return err
		}
	}
	root, err := sandboxfs.Open(d.disks.MountPoint(s.worker.id), runtime.SandboxUID, runtime.SandboxUID)
	if err != nil {
		return err
	}
	defer root.Close()
	return fn(root)
}

// fileError maps a file operation's error to its status and a message for the caller.
func fileError(err error) *api.Error {
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, sandboxfs.ErrBadPath):
		return &api.Error{Status: http.StatusBadRequest, Detail: err.Error()}
	case errors.Is(err, sandboxfs.ErrTooLarge), errors.Is(err, transfer.ErrTooLarge):
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Detail: err.Error()}
	case errors.Is(err, fs.ErrNotExist):
		return &api.Error{Status: http.StatusNotFound, Detail: err.Error()}
	case errors.Is(err, fs.ErrPermission):
		return &api.Error{Status: http.StatusForbidden, Detail: err.Error()}
	}
	return &api.Error{Status: http.StatusBadGateway, Detail: err.Error()}
}

func (d *Daemon) maxFileBytes() int64 { return int64(d.cfg.MaxFileMB) << 20 }

// target is one file of a batch call, checked.
type target struct {
	dir, name, url string
	apiPath        string // the directory as the caller gave it
}

func (t target) fullPath() string { return path.Join(sandboxfs.Prefix, t.dir, t.name) }

// checkTargets validates every file of a batch before any is touched: a bad path or URL
// fails the whole call (400), naming the file.
func checkTargets(n int, item func(i int) (p, name, url string), needURL bool) ([]target, error) {
	out := make([]target, n)
	seen := map[string]bool{}
	for i := range out {
		p, name, u := item(i)
		if p == "" {
			p = sandboxfs.Prefix + "/"
		}
		dir, err := sandboxfs.CleanDir(p)
		if err == nil {
			err = sandboxfs.CheckName(name)
		}
		if err == nil && needURL {
			_, err = transfer.CheckURL(u)
		}
		if err != nil {
			return nil, api.Errorf(http.StatusBadRequest, "file %d (%q): %v", i+1, name, err)
		}
		t := target{dir: dir, name: name, url: u, apiPath: p}
		if seen[t.fullPath()] {
			return nil, api.Errorf(http.StatusBadRequest, "file %d: %s is listed twice", i+1, t.fullPath())
		}
		seen[t.fullPath()] = true
		out[i] = t
	}
	return out, nil
}

// each runs op on every target, in parallel within the shared transfer bound, and
// gathers the answer.
func (d *Daemon) each(ctx context.Context, direction string, ts []target, op func(t target) (int64, error), result func(t target, size int64) api.FileResult) *api.FilesResponse {
	sizes := make([]int64, len(ts))
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case d.transfers <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-d.transfers }()
			sizes[i], errs[i] = op(t)
		}()
	}
	wg.Wait()
	resp := &api.FilesResponse{Success: true, Results: []api.FileResult{}}
	for i, t := range ts {
		d.metrics.fileBytes.WithLabelValues(direction).Add(float64(sizes[i]))
		if errs[i] != nil {
			resp.Success = false
			resp.Errors = append(resp.Errors, api.FileFailure{Path: t.apiPath, Name: t.name, Detail: fileError(errs[i]).Detail})
			continue
		}
		resp.Results = append(resp.Results, result(t, sizes[i]))
	}
	return resp
}

// batch runs op on every file of a validated batch in the session's disk (see each).
func (d *Daemon) batch(ctx context.Context, user string, create bool, direction string, ts []target,
	op func(root *sandboxfs.Root, t target) (int64, error), result func(t target, size int64) api.FileResult) (*api.FilesResponse, error) {
	var resp *api.FilesResponse
	err := d.withSandbox(ctx, user, create, func(root *sandboxfs.Root) error {
		resp = d.each(ctx, direction, ts, func(t target) (int64, error) { return op(root, t) }, result)
		return nil
	})
	return resp, err
}

// ImportFiles implements api.Backend: downloads into the session's disk, creating the
// session if needed.
func (d *Daemon) ImportFiles(ctx context.Context, user string, files []api.FileImport) (*api.FilesResponse, error) {
	ts, err := checkTargets(len(files), func(i int) (string, string, string) {
		return files[i].Path, files[i].Name, files[i].DownloadURL
	}, true)
	if err != nil {
		return nil, err
	}
	return d.batch(ctx, user, true, "in", ts, func(root *sandboxfs.Root, t target) (int64, error) {
		return d.xfer.Download(ctx, t.url, d.maxFileBytes(), func(body io.Reader, limit int64) (int64, error) {
			return root.Write(t.dir, t.name, body, limit)
		})
	}, func(t target, size int64) api.FileResult {
		return api.FileResult{FullPath: t.fullPath(), Size: size}
	})
}

// ExportFiles implements api.Backend: PUTs files of the session's disk to their URLs,
// streaming from the disk.
func (d *Daemon) ExportFiles(ctx context.Context, user string, files []api.FileExport) (*api.FilesResponse, error) {
	ts, err := checkTargets(len(files), func(i int) (string, string, string) {
		return files[i].Path, files[i].Name, files[i].UploadURL
	}, true)
	if err != nil {
		return nil, err
	}
	return d.batch(ctx, user, false, "out", ts, func(root *sandboxfs.Root, t target) (int64, error) {
		f, st, err := root.OpenFile(t.dir, t.name)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return st.Size(), d.xfer.Upload(ctx, t.url, f, st.Size(), contentType(t.name))
	}, func(t target, size int64) api.FileResult {
		return api.FileResult{Path: t.apiPath, Name: t.name, Size: size}
	})
}

// DeleteFiles implements api.Backend.
func (d *Daemon) DeleteFiles(ctx context.Context, user string, files []api.FileRef) (*api.FilesResponse, error) {
	ts, err := checkTargets(len(files), func(i int) (string, string, string) {
		return files[i].Path, files[i].Name, ""
	}, false)
	if err != nil {
		return nil, err
	}
	return d.batch(ctx, user, false, "out", ts, func(root *sandboxfs.Root, t target) (int64, error) {
		return 0, root.Remove(t.dir, t.name)
	}, func(t target, _ int64) api.FileResult {
		return api.FileResult{Path: t.apiPath, Name: t.name}
	})
}

// PutFile implements api.Backend: a direct upload, creating the session if needed.
func (d *Daemon) PutFile(ctx context.Context, user, p string, body io.Reader) (*api.FileResult, error) {
	dir, name, err := sandboxfs.SplitFile(p)
	if err != nil {
		return nil, fileError(err)
	}
	var res *api.FileResult
	err = d.withSandbox(ctx, user, true, func(root *sandboxfs.Root) error {
		n, err := root.Write(dir, name, body, d.maxFileBytes())
		d.metrics.fileBytes.WithLabelValues("in").Add(float64(n))
		if err != nil {
			return fileError(err)
		}
		res = &api.FileResult{FullPath: path.Join(sandboxfs.Prefix, dir, name), Size: n}
		return nil
	})
	return res, err
}

// GetFile implements api.Backend.
func (d *Daemon) GetFile(ctx context.Context, user, p string, send func(string, time.Time, io.ReadSeeker) error) error {
	dir, name, err := sandboxfs.SplitFile(p)
	if err != nil {
		return fileError(err)
	}
	return d.withSandbox(ctx, user, false, func(root *sandboxfs.Root) error {
		f, st, err := root.OpenFile(dir, name)
		if err != nil {
			return fileError(err)
		}
		defer f.Close()
		err = send(name, st.ModTime(), f)
		if err == nil {
			d.metrics.fileBytes.WithLabelValues("out").Add(float64(st.Size()))
		}
		return err
	})
}

// ListFiles implements api.Backend.
func (d *Daemon) ListFiles(ctx context.Context, user, p string) (*api.ListResponse, error) {
	dir, err := sandboxfs.CleanDir(p)
	if err != nil {
		return nil, fileError(err)
	}
	var resp *api.ListResponse
	err = d.withSandbox(ctx, user, false, func(root *sandboxfs.Root) error {
		entries, err := root.List(dir)
		if err != nil {
			return fileError(err)
		}
		resp = &api.ListResponse{Path: path.Join(sandboxfs.Prefix, dir) + "/", Entries: make([]api.FileEntry, 0, len(entries))}
		for _, e := range entries {
			resp.Entries = append(resp.Entries, api.FileEntry{Name: e.Name, Size: e.Size, Type: e.Type, Mtime: e.Mtime})
		}
		return nil
	})
	return resp, err
}

func contentType(name string) string {
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}
