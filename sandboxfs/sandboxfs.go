// Package sandboxfs is the daemon's only way into a worker's files: paths of the API
// ("/sandbox/a/b.csv") are checked, then every open is an openat2 beneath the host mount of
// the worker's disk with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
// RESOLVE_NO_XDEV, so nothing user code plants there (a symlink to /etc/shadow, a
// symlinked directory, a bind of another file system) leads the daemon outside the disk.
// Writes go to a temporary file in the same directory, are fsynced and renamed into place,
// and belong to the sandbox user.
//
// User code owns the disk, so nothing on it is trusted to behave: a file is first opened
// with O_PATH (which opens nothing: no FIFO waits for a writer, no lease is broken), checked
// to be a regular file within the size limit, and only then reopened for reading, without
// blocking; listings are read a bounded page at a time.
package sandboxfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix is where the worker sees its disk; API paths start with it.
const Prefix = "/sandbox"

const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// tmpPrefix marks the daemon's temporary files; listings hide them.
const tmpPrefix = ".codebox-tmp-"

// ErrBadPath is wrapped by every path the checks refuse.
var ErrBadPath = errors.New("bad path")

// ErrTooLarge is returned when a file is larger than the limit of the call.
var ErrTooLarge = errors.New("file larger than the limit")

// ErrNotRegular is wrapped by refusals of something that is not a regular file (a FIFO, a
// socket, a device, a directory) where a file is wanted.
var ErrNotRegular = errors.New("not a regular file")

// ErrBusy is returned when a process in the worker holds a lease on the file, which an open
// would have to wait for.
var ErrBusy = errors.New("the file is leased by a process in the worker")

// MaxListEntries is the most entries one page of a listing holds.
const MaxListEntries = 10_000

// CleanDir turns an API directory path ("/sandbox", "/sandbox/", "/sandbox/data/x/") into
// a path relative to the disk's root ("." or "data/x").
func CleanDir(p string) (string, error) {
	if p == "" {
		return ".", nil
	}
	if strings.ContainsAny(p, "\\\x00") {
		return "", fmt.Errorf("%w: %q contains a backslash or NUL", ErrBadPath, p)
	}
	if p != Prefix && !strings.HasPrefix(p, Prefix+"/") {
		return "", fmt.Errorf("%w: %q is not under %s", ErrBadPath, p, Prefix)
	}
	var parts []string
	for _, c := range strings.Split(strings.TrimPrefix(p, Prefix), "/") {
		switch c {
		case "":
			continue // "//" and a trailing "/" say nothing
		case ".", "..":
			return "", fmt.Errorf("%w: %q contains %q", ErrBadPath, p, c)
		}
		if len(c) > 255 {
			return "", fmt.Errorf("%w: a component of %q is longer than 255 bytes", ErrBadPath, p)
		}
		parts = append(parts, c)
	}
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}

// CheckName checks a file name: one path component, no separators.
func CheckName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("%w: file name %q", ErrBadPath, name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("%w: file name %q contains a slash, backslash or NUL", ErrBadPath, name)
	case len(name) > 255:
		return fmt.Errorf("%w: file name longer than 255 bytes", ErrBadPath)
	}
	return nil
}

// SplitFile turns an API file path ("/sandbox/data/a.csv") into its directory relative to
// the disk ("data") and its name ("a.csv").
func SplitFile(p string) (dir, name string, err error) {
	if strings.HasSuffix(p, "/") {
		return "", "", fmt.Errorf("%w: %q names a directory, not a file", ErrBadPath, p)
	}
	dir, err = CleanDir(path.Dir(p))
	if err != nil {
		return "", "", err
	}
	name = path.Base(p)
	if err := CheckName(name); err != nil {
		return "", "", err
	}
	if path.Clean(p) != p || !strings.HasPrefix(p, Prefix+"/") {
		return "", "", fmt.Errorf("%w: %q", ErrBadPath, p)
	}
	return dir, name, nil
}

// Root is a worker's disk, opened for the daemon.
type Root struct {
	fd       *os.File
	uid, gid int
	// mounts are other roots mounted at directories of this one (a session's volumes): a
	// path under one goes there (openat2 does not cross mounts: RESOLVE_NO_XDEV).
	mounts []mount
}

type mount struct {
	rel  string
	root *Root
	ro   bool
}

// ErrReadOnly: a write to a volume the session has read-only.
var ErrReadOnly = errors.New("a read-only volume")

// Mount routes the paths under dir (an API path) to sub, read-only when ro; Close closes it.
func (r *Root) Mount(dir string, sub *Root, ro bool) error {
	rel, err := CleanDir(dir)
	if err != nil {
		return err
	}
	if rel == "." {
		return fmt.Errorf("%w: a volume cannot be the sandbox itself", ErrBadPath)
	}
	r.mounts = append(r.mounts, mount{rel: rel, root: sub, ro: ro})
	return nil
}

// route is the root that holds rel, rel within it, and whether it is read-only.
func (r *Root) route(rel string) (*Root, string, bool) {
	for _, m := range r.mounts {
		switch {
		case rel == m.rel:
			return m.root, ".", m.ro
		case strings.HasPrefix(rel, m.rel+"/"):
			return m.root, rel[len(m.rel)+1:], m.ro
		}
	}
	return r, rel, false
}

// Open opens the host mount point dir; files the daemon writes belong to uid:gid.
func Open(dir string, uid, gid int) (*Root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open sandbox root %s: %w", dir, err)
	}
	return &Root{fd: os.NewFile(uintptr(fd), dir), uid: uid, gid: gid}, nil
}

// Close closes the root and those mounted in it.
func (r *Root) Close() error {
	for _, m := range r.mounts {
		m.root.Close()
	}
	return r.fd.Close()
}

func (r *Root) openat(rel string, flags uint64, mode uint64) (*os.File, error) {
	for {
		fd, err := unix.Openat2(int(r.fd.Fd()), rel, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode, Resolve: resolve})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue // openat2 asks for a retry when a rename raced the lookup
		}
		if err != nil {
			return nil, explain(rel, err)
		}
		return os.NewFile(uintptr(fd), path.Join(Prefix, rel)), nil
	}
}

// explain turns the resolution errors into messages a caller understands.
func explain(rel string, err error) error {
	p := path.Join(Prefix, rel)
	switch {
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%s: is or passes through a symbolic link, which is not followed: %w", p, fs.ErrPermission)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s: leaves the sandbox disk: %w", p, fs.ErrPermission)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s: a parent is not a directory: %w", p, fs.ErrNotExist)
	case errors.Is(err, unix.EISDIR):
		return fmt.Errorf("%s: is a directory", p)
	}
	return fmt.Errorf("%s: %w", p, err)
}

// MkdirAll opens directory dir (an API path, /sandbox/...) as an O_PATH descriptor,
// creating what is missing, owned by the sandbox user; nothing of it may be a symbolic link
// or leave the disk.
func (r *Root) MkdirAll(dir string) (*os.File, error) {
	rel, err := CleanDir(dir)
	if err != nil {
		return nil, err
	}
	return r.dir(rel, true)
}

// dir opens directory rel, creating missing directories (owned by the sandbox user) when
// create is set.
func (r *Root) dir(rel string, create bool) (*os.File, error) {
	d, err := r.openat(rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err == nil || !create || !errors.Is(err, fs.ErrNotExist) || rel == "." {
		return d, err
	}
	parent, err := r.dir(path.Dir(rel), true)
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	base := path.Base(rel)
	if err := unix.Mkdirat(int(parent.Fd()), base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, explain(rel, err)
	}
	if err := unix.Fchownat(int(parent.Fd()), base, r.uid, r.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, explain(rel, err)
	}
	return r.openat(rel, unix.O_PATH|unix.O_DIRECTORY, 0)
}

// Write stores src as dir/name, all or nothing: into a temporary file in the same
// directory, fsynced, then renamed over name. More than limit bytes fail with ErrTooLarge
// and leave nothing.
func (r *Root) Write(dir, name string, src io.Reader, limit int64) (int64, error) {
	if t, rel, ro := r.route(dir); t != r {
		if ro {
			return 0, fmt.Errorf("%s: %w", path.Join(Prefix, dir, name), ErrReadOnly)
		}
		return t.Write(rel, name, src, limit)
	}
	if err := CheckName(name); err != nil {
		return 0, err
	}
	d, err := r.dir(dir, true)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := tmpPrefix + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat2(int(d.Fd()), tmp, &unix.OpenHow{
		Flags: unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC, Mode: 0o644, Resolve: resolve})
	if err != nil {
		return 0, explain(path.Join(dir, tmp), err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	committed := false
	defer func() {
		f.Close()
		if !committed {
			unix.Unlinkat(int(d.Fd()), tmp, 0)
		}
	}()
	n, err := io.Copy(f, io.LimitReader(src, limit+1))
	if err != nil {
		return n, err
	}
	if n > limit {
		return n, ErrTooLarge
	}
	if err := f.Chown(r.uid, r.gid); err != nil {
		return n, err
	}
	if err := f.Sync(); err != nil {
		return n, err
	}
	// A symlink user code planted under this name is left alone. (Should one appear after
	// this check, renameat replaces the link itself; it never writes through it.)
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return n, fmt.Errorf("%s: is a symbolic link, which is not touched: %w", path.Join(Prefix, dir, name), fs.ErrPermission)
	}
	if err := unix.Renameat(int(d.Fd()), tmp, int(d.Fd()), name); err != nil {
		return n, explain(path.Join(dir, name), err)
	}
	committed = true
	return n, nil
}

// OpenFile opens the regular file dir/name for reading, refusing anything else and any
// file over maxSize before a byte is read. It never blocks on what user code planted: the
// file is opened with O_PATH and checked first, then reopened non-blocking through
// /proc/self/fd, which reaches the same inode. The file's size at the check is returned;
// callers read no more than that.
func (r *Root) OpenFile(dir, name string, maxSize int64) (*os.File, os.FileInfo, error) {
	if t, rel, _ := r.route(dir); t != r {
		return t.OpenFile(rel, name, maxSize)
	}
	if err := CheckName(name); err != nil {
		return nil, nil, err
	}
	rel := path.Join(dir, name)
	p, err := r.openat(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	st, err := p.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.Mode()&fs.ModeSymlink != 0 { // O_PATH|O_NOFOLLOW opens the link itself
		return nil, nil, fmt.Errorf("%s: is a symbolic link, which is not followed: %w", path.Join(Prefix, rel), fs.ErrPermission)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: %w: it is %s", path.Join(Prefix, rel), ErrNotRegular, kind(st.Mode()))
	}
	if st.Size() > maxSize {
		return nil, nil, fmt.Errorf("%s: %w (%d bytes, limit %d)", path.Join(Prefix, rel), ErrTooLarge, st.Size(), maxSize)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", p.Fd()), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, nil, fmt.Errorf("%s: %w", path.Join(Prefix, rel), ErrBusy)
	}
	if err != nil {
		return nil, nil, explain(rel, err)
	}
	return os.NewFile(uintptr(fd), path.Join(Prefix, rel)), st, nil
}

// kind names a file mode's type for messages.
func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file"
}

// Remove deletes the regular file dir/name. Symlinks and directories are refused.
func (r *Root) Remove(dir, name string) error {
	if t, rel, ro := r.route(dir); t != r {
		if ro {
			return fmt.Errorf("%s: %w", path.Join(Prefix, dir, name), ErrReadOnly)
		}
		return t.Remove(rel, name)
	}
	if err := CheckName(name); err != nil {
		return err
	}
	d, err := r.dir(dir, false)
	if err != nil {
		return err
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return explain(path.Join(dir, name), err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return fmt.Errorf("%s: is a symbolic link, which is not touched: %w", path.Join(Prefix, dir, name), fs.ErrPermission)
	default:
		return fmt.Errorf("%s: %w", path.Join(Prefix, dir, name), ErrNotRegular)
	}
	if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil {
		return explain(path.Join(dir, name), err)
	}
	return nil
}

// Entry is one item of a directory listing.
type Entry struct {
	Name  string    `json:"name"`
	Size  int64     `json:"size"`
	Type  string    `json:"type"` // file, directory, symlink or other
	Mtime time.Time `json:"mtime"`
}

// Page is one page of a directory listing.
type Page struct {
	Entries []Entry
	// Next is the offset of the next page when the directory has more entries.
	Next      int
	Truncated bool
}

// List lists at most limit entries of directory dir (MaxListEntries when limit is 0 or
// more), after skipping offset of them, without following anything in it. Memory is
// bounded by the page, not the directory: names are read in batches and those outside the
// page dropped. Pages follow the directory's own order; entries added or removed between
// two pages may be missed or repeated.
// It stops when ctx ends: a deep offset in a huge directory reads many names.
func (r *Root) List(ctx context.Context, dir string, offset, limit int) (*Page, error) {
	if t, rel, _ := r.route(dir); t != r {
		return t.List(ctx, rel, offset, limit)
	}
	if limit <= 0 || limit > MaxListEntries {
		limit = MaxListEntries
	}
	d, err := r.openat(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	page := &Page{Entries: []Entry{}}
	seen := 0 // visible entries before the current batch
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		names, err := d.Readdirnames(1024)
		if errors.Is(err, io.EOF) {
			return page, nil
		}
		if err != nil {
			return nil, explain(dir, err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, tmpPrefix) {
				continue
			}
			seen++
			if seen <= offset {
				continue
			}
			if len(page.Entries) == limit {
				page.Truncated, page.Next = true, offset+limit
				return page, nil
			}
			if e, ok := r.entry(d, n); ok {
				page.Entries = append(page.Entries, e)
			} else {
				seen-- // gone since it was read: it takes no place in the count
			}
		}
	}
}

func (r *Root) entry(d *os.File, n string) (Entry, bool) {
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Entry{}, false
	}
	e := Entry{Name: n, Size: st.Size, Mtime: time.Unix(st.Mtim.Unix()).UTC()}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type = "file"
	case unix.S_IFDIR:
		e.Type, e.Size = "directory", 0
	case unix.S_IFLNK:
		e.Type = "symlink"
	default:
		e.Type = "other"
	}
	return e, true
}
