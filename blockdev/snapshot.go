package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW (_IOWR('X', 119/120, int)): a file system's writes held, everything
// written so far on its device, until thawed.
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// maxFreeze bounds how long a copy may keep a worker's disk frozen: past it the copy is
// given up (and the disk thawed), so a worker never waits on a slow host for long.
const maxFreeze = 30 * time.Second

// Snapshot copies worker id's disk, as it is at one instant, to dst (which must not exist):
// its file system is frozen, the backing file cloned (FICLONE where the state directory's
// file system offers it, else a sparse copy: holes stay holes), then thawed. It returns how
// long the disk was frozen. On failure dst is gone and the disk thawed. A snapshot and the
// disk's removal wait for each other, and the freeze is on the descriptor of the disk's own
// mount, checked to be one: never on the file system the state directory is on.
func (s *Store) Snapshot(ctx context.Context, id, dst string) (time.Duration, error) {
	if err := plainName(id); err != nil {
		return 0, err
	}
	unlock := s.lock(id)
	defer unlock()
	fd, err := unix.Open(s.MountPoint(id), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("snapshot disk %s: %w", id, err)
	}
	dir := os.NewFile(uintptr(fd), s.MountPoint(id))
	defer dir.Close()
	var disk, parent unix.Stat_t
	if err := unix.Fstat(fd, &disk); err != nil {
		return 0, err
	}
	if err := unix.Stat(s.mounts, &parent); err != nil {
		return 0, err
	}
	if disk.Dev == parent.Dev {
		return 0, fmt.Errorf("snapshot disk %s: not mounted", id)
	}
	// Most of what is dirty goes out first, while writes go on: the freeze then has little
	// left to flush, and the writes it holds wait less.
	unix.Syncfs(fd)
	frozen := time.Now() // the freeze's own flush counts: writes wait through it
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiFreeze, 0); errno != 0 {
		return 0, fmt.Errorf("snapshot disk %s: freeze: %w", id, errno)
	}
	cctx, cancel := context.WithTimeout(ctx, maxFreeze)
	defer cancel()
	err = copyDisk(cctx, s.file(id), dst)
	took := time.Since(frozen)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0); errno != 0 && errno != unix.EINVAL {
		err = errors.Join(err, fmt.Errorf("snapshot disk %s: thaw: %w", id, errno))
	}
	if err != nil {
		os.Remove(dst)
		return took, fmt.Errorf("snapshot disk %s: %w", id, err)
	}
	return took, nil
}

// Thaw thaws worker id's disk should a codeboxd that stopped in the middle of a copy have
// left it frozen (nothing happens to a disk that is not).
func (s *Store) Thaw(id string) {
	fd, err := unix.Open(s.MountPoint(id), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	var disk, parent unix.Stat_t
	if unix.Fstat(fd, &disk) != nil || unix.Stat(s.mounts, &parent) != nil || disk.Dev == parent.Dev {
		return // not the disk's own mount: nothing of ours to thaw
	}
	unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0)
}

// copyDisk clones src to dst: coreutils' cp does FICLONE when it can, a sparse copy when it
// cannot.
func copyDisk(ctx context.Context, src, dst string) error {
	cmd := exec.CommandContext(ctx, "cp", "--reflink=auto", "--sparse=always", "--no-preserve=all", "--", src, dst)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(dst)
		if ctx.Err() != nil {
			return fmt.Errorf("copy: %w", ctx.Err())
		}
		return fmt.Errorf("copy: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Chmod(dst, 0o600)
}

// MakeFrom makes worker id's disk a copy of the image src (a snapshot), grown to sizeMB
// when that is larger, and mounts it at its prepared mount point. On failure the disk is
// gone again; the mount point stays.
func (s *Store) MakeFrom(ctx context.Context, id, src string, sizeMB int) (_ *Disk, err error) {
	d, err := s.newDisk(id)
	if err != nil {
		return nil, err
	}
	defer s.undoOnError(id, &err)
	if _, err := os.Lstat(d.File); err == nil {
		return nil, fmt.Errorf("disk %s exists", id)
	}
	if _, err := os.Stat(src); err != nil {
		return nil, err // a snapshot deleted meanwhile: os.ErrNotExist
	}
	if err := copyDisk(ctx, src, d.File); err != nil {
		return nil, err
	}
	// Grown before it is mounted: resize2fs on a file needs no privilege a host may withhold.
	if fi, err := os.Stat(d.File); err != nil {
		return nil, err
	} else if size := int64(sizeMB) << 20; size > fi.Size() {
		if err := os.Truncate(d.File, size); err != nil {
			return nil, fmt.Errorf("grow disk %s: %w", id, err)
		}
		if out, err := exec.CommandContext(ctx, "resize2fs", "-f", d.File).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("grow disk %s: resize2fs: %w: %s", id, err, strings.TrimSpace(string(out)))
		}
	}
	if err := s.mount(d); err != nil {
		return nil, err
	}
	return d, nil
}

// Bounds on giving a disk to another uid range: a tenant's tree may be anything.
const (
	maxRebaseDepth   = 256
	maxRebaseEntries = 10_000_000
	rebaseBatch      = 1024
)

// Rebase gives worker id's mounted disk to another user namespace's range: every file owned
// by a uid or gid in [from, from+size) is owned by the same offset from to. A disk copied
// from another worker's snapshot holds that worker's host uids. It walks by directory
// descriptors (no path grows, no link is followed), a batch of names at a time, within
// maxRebaseDepth, maxRebaseEntries and ctx.
func (s *Store) Rebase(ctx context.Context, id string, from, to, size int) error {
	if err := plainName(id); err != nil {
		return err
	}
	if from == to {
		return nil
	}
	root, err := unix.Open(s.MountPoint(id), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	r := rebaser{ctx: ctx, from: from, to: to, size: size}
	if err := r.chown(root, ""); err != nil {
		unix.Close(root)
		return err
	}
	return r.dir(root, 0) // closes root
}

type rebaser struct {
	ctx            context.Context
	from, to, size int
	entries        int
}

func (r *rebaser) move(v uint32) int {
	if int(v) >= r.from && int(v) < r.from+r.size {
		return int(v) - r.from + r.to
	}
	return -1 // not the source's: left as it is
}

// chown moves the owner of name in dirfd ("" : dirfd itself).
func (r *rebaser) chown(dirfd int, name string) error {
	var st unix.Stat_t
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	if err := unix.Fstatat(dirfd, name, &st, flags); err != nil {
		return err
	}
	if uid, gid := r.move(st.Uid), r.move(st.Gid); uid >= 0 || gid >= 0 {
		if err := unix.Fchownat(dirfd, name, uid, gid, flags); err != nil {
			return fmt.Errorf("rebase: %w", err)
		}
	}
	return nil
}

// dir moves the owners of everything in directory fd (which it closes), depth deep.
func (r *rebaser) dir(fd, depth int) error {
	d := os.NewFile(uintptr(fd), "dir")
	defer d.Close()
	if depth > maxRebaseDepth {
		return fmt.Errorf("rebase: directories nested more than %d deep", maxRebaseDepth)
	}
	for {
		if err := r.ctx.Err(); err != nil {
			return fmt.Errorf("rebase: %w", err)
		}
		names, err := d.Readdirnames(rebaseBatch)
		for _, n := range names {
			if r.entries++; r.entries > maxRebaseEntries {
				return fmt.Errorf("rebase: more than %d files", maxRebaseEntries)
			}
			if err := r.chown(fd, n); err != nil {
				return err
			}
			sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue // not a directory
			}
			if err := r.dir(sub, depth+1); err != nil {
				return err
			}
		}
		if err != nil { // io.EOF: done
			return nil
		}
	}
}

// MakeImage makes file a sparse ext4 image of sizeMB whose root belongs to owner (a volume's:
// the uid it is seen with inside any worker, through an idmapped mount).
func MakeImage(ctx context.Context, file string, sizeMB, owner int) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0",
			"-E", fmt.Sprintf("root_owner=%d:%d,lazy_itable_init=1,lazy_journal_init=1", owner, owner), file)
		if out, merr := mkfs.CombinedOutput(); merr != nil {
			err = fmt.Errorf("mkfs.ext4: %w: %s", merr, strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		os.Remove(file)
	}
	return err
}

// MountImage mounts the image file at mp (a directory), with MountFlags, unless something
// is mounted there already.
func MountImage(file, mp string) error {
	if isMountPoint(mp) {
		return nil
	}
	return (&Store{}).mount(&Disk{File: file, MountPoint: mp})
}

// Unmount unmounts what is mounted at mp (its submounts lazily), which frees the loop device.
func Unmount(mp string) error { return unmount(mp) }

// Allocated is what file takes on its file system (a sparse file's blocks), in bytes.
func Allocated(file string) int64 {
	var st unix.Stat_t
	if unix.Stat(file, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
