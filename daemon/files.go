package daemon

import (
	"context"
	"errors"

	"io"
	"io/fs"
	"mime"
	"os"
	"path"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/sandboxfs"
	"github.com/codebox/codebox/transfer"
)

// maxParallelTransfers bounds downloads and uploads in flight across all requests, and
// maxSessionTransfers those of one session, so one session's slow files cannot take every
// slot.
const (
	maxParallelTransfers = 8
	maxSessionTransfers  = 2
)

// withSandbox runs fn on the session's disk while holding the session, so its worker is
// neither released nor replaced meanwhile. fn's context ends --file-timeout after the turn
// was taken, or when the session is released: no file call holds a session longer.
// Without create, a user_uuid with no worker is a 404.
func (d *Daemon) withSandbox(ctx context.Context, user string, create bool, fn func(ctx context.Context, root *sandboxfs.Root) error) error {
	return d.withSandboxOf(ctx, user, create, func(ctx context.Context, _ *session, root *sandboxfs.Root) error { return fn(ctx, root) })
}

func (d *Daemon) withSandboxOf(ctx context.Context, user string, create bool, fn func(ctx context.Context, s *session, root *sandboxfs.Root) error) error {
	create = create && api.MayCreate(ctx) && api.CallerOf(ctx).Session == ""
	return d.withSession(ctx, user, create, func(ctx context.Context, s *session) error {
		if s.worker == nil {
			if !create {
				return d.notFound(s.key)
			}
			if err := d.assign(ctx, s); err != nil {
				return err
			}
		}
		ctx, cancel := context.WithTimeout(ctx, d.cfg.FileTimeout)
		defer cancel()
		owner := runtime.HostUID(s.worker.uidBase)
		root, err := sandboxfs.Open(d.disks.MountPoint(s.worker.id), owner, owner)
		if err != nil {
			return err
		}
		defer root.Close()
		if err := d.volumeRoots(s, root); err != nil {
			return err
		}
		return fileError(ctx, fn(ctx, s, root))
	})
}

// fileError says what a file operation's error is for the caller (its kind, a message); ctx
// is the call's, which says whether the session was released or time ran out.
func fileError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var p *api.Problem
	cut := ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded))
	switch {
	case errors.As(err, &p):
		return p
	case cut && errors.Is(context.Cause(ctx), errReleased):
		return &api.Problem{Kind: api.Lost, Detail: "the session was released during the call", Cause: err}
	case cut:
		return &api.Problem{Kind: api.Timeout, Detail: "the file call took longer than the file timeout", Cause: err}
	case errors.Is(err, sandboxfs.ErrNotRegular), errors.Is(err, sandboxfs.ErrBusy), errors.Is(err, sandboxfs.ErrReadOnly):
		return &api.Problem{Kind: api.Conflict, Detail: err.Error()}
	case errors.Is(err, sandboxfs.ErrBadPath):
		return &api.Problem{Kind: api.BadRequest, Detail: err.Error()}
	case errors.Is(err, sandboxfs.ErrTooLarge), errors.Is(err, transfer.ErrTooLarge):
		return &api.Problem{Kind: api.TooLarge, Detail: err.Error()}
	case errors.Is(err, fs.ErrNotExist):
		return &api.Problem{Kind: api.NotFound, Detail: err.Error()}
	case errors.Is(err, fs.ErrPermission):
		return &api.Problem{Kind: api.Forbidden, Detail: err.Error()}
	}
	return &api.Problem{Kind: api.Upstream, Detail: err.Error()}
}

// detail is what a caller is told of one failed file of a batch.
func detail(ctx context.Context, err error) string {
	var p *api.Problem
	if errors.As(fileError(ctx, err), &p) {
		return p.Detail
	}
	return err.Error()
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
			return nil, api.Fail(api.BadRequest, "file %d (%q): %v", i+1, name, err)
		}
		t := target{dir: dir, name: name, url: u, apiPath: p}
		if seen[t.fullPath()] {
			return nil, api.Fail(api.BadRequest, "file %d: %s is listed twice", i+1, t.fullPath())
		}
		seen[t.fullPath()] = true
		out[i] = t
	}
	return out, nil
}

// transferSlot takes one of s's transfer slots, then one of those shared by all sessions;
// the caller frees them.
func (d *Daemon) transferSlot(ctx context.Context, s *session) (func(), error) {
	select {
	case s.transfers <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case d.transfers <- struct{}{}:
		return func() { <-d.transfers; <-s.transfers }, nil
	case <-ctx.Done():
		<-s.transfers
		return nil, ctx.Err()
	}
}

// batch runs op on every file of a validated batch in the session's disk, in parallel, and
// gathers the answer. op takes a transfer slot (slot) only once it has what it moves ready,
// so a file that cannot be opened never holds one.
func (d *Daemon) batch(ctx context.Context, user string, create bool, direction string, ts []target,
	op func(ctx context.Context, root *sandboxfs.Root, t target, slot func() (func(), error)) (int64, error),
	result func(t target, size int64) api.FileResult) (*api.FilesResponse, error) {
	var resp *api.FilesResponse
	err := d.withSandboxOf(ctx, user, create, func(ctx context.Context, s *session, root *sandboxfs.Root) error {
		sizes := make([]int64, len(ts))
		errs := make([]error, len(ts))
		var wg sync.WaitGroup
		for i, t := range ts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sizes[i], errs[i] = op(ctx, root, t, func() (func(), error) { return d.transferSlot(ctx, s) })
			}()
		}
		wg.Wait()
		resp = &api.FilesResponse{Success: true, Results: []api.FileResult{}}
		for i, t := range ts {
			d.metrics.fileBytes.WithLabelValues(direction).Add(float64(sizes[i]))
			if errs[i] != nil {
				resp.Success = false
				resp.Errors = append(resp.Errors, api.FileFailure{Path: t.apiPath, Name: t.name, Detail: detail(ctx, errs[i])})
				continue
			}
			resp.Results = append(resp.Results, result(t, sizes[i]))
		}
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
	return d.batch(ctx, user, true, "in", ts, func(ctx context.Context, root *sandboxfs.Root, t target, slot func() (func(), error)) (int64, error) {
		free, err := slot()
		if err != nil {
			return 0, err
		}
		defer free()
		return d.xfer.Download(ctx, t.url, d.maxFileBytes(), func(body io.Reader, limit int64) (int64, error) {
			return root.Write(t.dir, t.name, body, limit)
		})
	}, func(t target, size int64) api.FileResult {
		return api.FileResult{FullPath: t.fullPath(), Size: size}
	})
}

// ExportFiles implements api.Backend: PUTs files of the session's disk to their URLs,
// streaming from the disk. A file is opened (and refused if it is no regular file or over
// --max-file-mb) before it takes a transfer slot.
func (d *Daemon) ExportFiles(ctx context.Context, user string, files []api.FileExport) (*api.FilesResponse, error) {
	ts, err := checkTargets(len(files), func(i int) (string, string, string) {
		return files[i].Path, files[i].Name, files[i].UploadURL
	}, true)
	if err != nil {
		return nil, err
	}
	return d.batch(ctx, user, false, "out", ts, func(ctx context.Context, root *sandboxfs.Root, t target, slot func() (func(), error)) (int64, error) {
		f, st, err := root.OpenFile(t.dir, t.name, d.maxFileBytes())
		if err != nil {
			return 0, err
		}
		defer f.Close()
		free, err := slot()
		if err != nil {
			return 0, err
		}
		defer free()
		// The size at the check, and no more: a file user code grows meanwhile is cut there.
		return st.Size(), d.xfer.Upload(ctx, t.url, io.NewSectionReader(f, 0, st.Size()), st.Size(), contentType(t.name))
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
	return d.batch(ctx, user, false, "out", ts, func(_ context.Context, root *sandboxfs.Root, t target, _ func() (func(), error)) (int64, error) {
		return 0, root.Remove(t.dir, t.name)
	}, func(t target, _ int64) api.FileResult {
		return api.FileResult{Path: t.apiPath, Name: t.name}
	})
}

// PutFile implements api.Backend: a direct upload, creating the session if needed. The
// body is read within the call's deadline: when it ends (or the session is released), a
// body with SetReadDeadline (the API's request body) is cut off at once.
func (d *Daemon) PutFile(ctx context.Context, user, p string, body io.Reader) (*api.FileResult, error) {
	dir, name, err := sandboxfs.SplitFile(p)
	if err != nil {
		return nil, fileError(ctx, err)
	}
	var res *api.FileResult
	err = d.withSandbox(ctx, user, true, func(ctx context.Context, root *sandboxfs.Root) error {
		if dl, ok := body.(interface{ SetReadDeadline(time.Time) error }); ok {
			stop := context.AfterFunc(ctx, func() { dl.SetReadDeadline(time.Now()) })
			defer stop()
		}
		n, err := root.Write(dir, name, body, d.maxFileBytes())
		d.metrics.fileBytes.WithLabelValues("in").Add(float64(n))
		if err != nil {
			return err
		}
		res = &api.FileResult{FullPath: path.Join(sandboxfs.Prefix, dir, name), Size: n}
		return nil
	})
	return res, err
}

// GetFile implements api.Backend. The file is refused before a byte moves if it is no
// regular file or over --max-file-mb; send gets the call's context, which ends at the
// file timeout or when the session is released.
func (d *Daemon) GetFile(ctx context.Context, user, p string, send func(ctx context.Context, name string, modTime time.Time, content io.ReadSeeker) error) error {
	dir, name, err := sandboxfs.SplitFile(p)
	if err != nil {
		return fileError(ctx, err)
	}
	return d.withSandbox(ctx, user, false, func(ctx context.Context, root *sandboxfs.Root) error {
		f, st, err := root.OpenFile(dir, name, d.maxFileBytes())
		if err != nil {
			return err
		}
		defer f.Close()
		err = send(ctx, name, st.ModTime(), io.NewSectionReader(f, 0, st.Size()))
		if err == nil {
			d.metrics.fileBytes.WithLabelValues("out").Add(float64(st.Size()))
		}
		return err
	})
}

// ListFiles implements api.Backend: one page of at most sandboxfs.MaxListEntries entries.
func (d *Daemon) ListFiles(ctx context.Context, user, p string, offset, limit int) (*api.ListResponse, error) {
	dir, err := sandboxfs.CleanDir(p)
	if err != nil {
		return nil, fileError(ctx, err)
	}
	var resp *api.ListResponse
	err = d.withSandbox(ctx, user, false, func(ctx context.Context, root *sandboxfs.Root) error {
		page, err := root.List(ctx, dir, offset, limit)
		if err != nil {
			return err
		}
		resp = &api.ListResponse{Path: path.Join(sandboxfs.Prefix, dir) + "/", Entries: make([]api.FileEntry, 0, len(page.Entries)),
			Truncated: page.Truncated}
		if page.Truncated {
			resp.NextOffset = page.Next
		}
		for _, e := range page.Entries {
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
