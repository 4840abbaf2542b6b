// Package blockdev owns the workers' virtual disks: a sparse file per worker under
// <state-dir>/disks, formatted ext4 with its root owned by the sandbox user, attached to a
// loop device (containerd's mount.SetupLoop: LOOP_CONFIGURE, EBUSY retries, autoclear) and
// mounted on the host at <state-dir>/mounts/<worker-id> with nosuid, nodev, noexec and
// nosymfollow. The daemon reads and writes a worker's files through that host mount.
//
// A worker's mount point exists from its creation (Prepare) and is bound into its container
// at /sandbox as a slave of <state-dir>/mounts, which the store makes a shared mount; the
// disk itself is made and mounted (Make) only when a session takes the worker, and the
// mount propagates into the running container. So a session's disk has the size it asks
// for, whatever the pool made its workers with.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// MountFlags are the host mount's flags. The container's bind mount must repeat them as
// options: runc does not inherit them from the source mount.
const MountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSYMFOLLOW

// BindOptions are the OCI mount options of the container's /sandbox: a slave of the host's
// mount point, so a disk mounted there later appears in the container; MountFlags repeated,
// for the mount point itself.
var BindOptions = []string{"rbind", "rslave", "rw", "nosuid", "nodev", "noexec", "nosymfollow"}

// Disk is one worker's virtual disk.
type Disk struct {
	ID         string
	File       string // the sparse backing file
	MountPoint string // where the host sees it
}

// Store creates and removes disks under a state directory.
type Store struct {
	disks, mounts string

	mu    sync.Mutex
	locks map[string]*sync.Mutex // by disk: a snapshot and the disk's removal, one at a time
}

// lock takes disk id's lock; the returned func gives it back.
func (s *Store) lock(id string) func() {
	s.mu.Lock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	l := s.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// NewStore prepares <stateDir>/disks and <stateDir>/mounts, the latter a shared mount (a
// bind of itself, idempotently) so that disks mounted under it propagate into containers.
func NewStore(stateDir string) (*Store, error) {
	s := &Store{disks: filepath.Join(stateDir, "disks"), mounts: filepath.Join(stateDir, "mounts")}
	for _, d := range []string{s.disks, s.mounts} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("disk store: %w", err)
		}
		if err := notSymlink(d); err != nil {
			return nil, err
		}
	}
	if err := makeShared(s.mounts); err != nil {
		return nil, err
	}
	return s, nil
}

// makeShared makes dir a mount point of its own, in a shared peer group.
func makeShared(dir string) error {
	if !isMountPoint(dir) {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", dir, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// isMountPoint reports whether path is the root of a mount (its device differs from its
// parent's, or it is a bind of its own directory: then mountinfo names it).
func isMountPoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMountPath(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMountPath undoes mountinfo's octal escapes (space, tab, newline, backslash).
func unescapeMountPath(p string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(p)
}

// Close undoes what NewStore did to <stateDir>/mounts (for `codeboxd cleanup --all`, once no
// worker is left).
func (s *Store) Close() error {
	if !isMountPoint(s.mounts) {
		return nil
	}
	if err := unix.Unmount(s.mounts, unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", s.mounts, err)
	}
	return nil
}

// MountPoint is where worker id's disk is (or would be) mounted on the host.
func (s *Store) MountPoint(id string) string { return filepath.Join(s.mounts, id) }

func (s *Store) file(id string) string { return filepath.Join(s.disks, id+".img") }

// Prepare makes worker id's mount point, empty, for its container to bind before the disk
// is there. Traversable by all (the container's user starts there), writable by none.
func (s *Store) Prepare(id string) (string, error) {
	if err := plainName(id); err != nil {
		return "", err
	}
	mp := s.MountPoint(id)
	if err := os.Mkdir(mp, 0o755); err != nil {
		return "", fmt.Errorf("create mount point: %w", err)
	}
	if err := notSymlink(mp); err != nil {
		return "", err
	}
	return mp, nil
}

func plainName(id string) error {
	if strings.ContainsAny(id, "/\x00") || id == "" || id == "." || id == ".." {
		return fmt.Errorf("disk id %q is not a plain name", id)
	}
	return nil
}

// newDisk is worker id's disk, to be made at its prepared mount point.
func (s *Store) newDisk(id string) (*Disk, error) {
	if err := plainName(id); err != nil {
		return nil, err
	}
	d := &Disk{ID: id, File: s.file(id), MountPoint: s.MountPoint(id)}
	if err := notSymlink(d.MountPoint); err != nil {
		return nil, err
	}
	return d, nil
}

// undoOnError removes what a making of disk id that failed (*err) left; the mount point stays.
func (s *Store) undoOnError(id string, err *error) {
	if *err != nil {
		if rerr := s.removeDisk(id); rerr != nil {
			*err = errors.Join(*err, rerr)
		}
	}
}

// Make makes, formats, attaches and mounts a disk of sizeMB for worker id at its prepared
// mount point, its root owned by owner (uid and gid, as the host sees them). On failure
// the disk is gone again; the mount point stays.
func (s *Store) Make(ctx context.Context, id string, sizeMB, owner int) (_ *Disk, err error) {
	d, err := s.newDisk(id)
	if err != nil {
		return nil, err
	}
	defer s.undoOnError(id, &err)

	f, err := os.OpenFile(d.File, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create disk file: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("size disk file: %w", err)
	}
	// Lazy table and journal init keep formatting to milliseconds; -m 0 leaves no blocks
	// reserved for root, who never writes there.
	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0",
		"-E", fmt.Sprintf("root_owner=%d:%d,lazy_itable_init=1,lazy_journal_init=1", owner, owner), d.File)
	if out, err := mkfs.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}

	if err := s.mount(d); err != nil {
		return nil, err
	}
	// The user's /sandbox starts empty; e2fsck recreates lost+found should it need one.
	if err := os.Remove(filepath.Join(d.MountPoint, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove lost+found: %w", err)
	}
	return d, nil
}

// mount attaches d's file to a loop device and mounts it at d's mount point.
func (s *Store) mount(d *Disk) error {
	loop, err := mount.SetupLoop(d.File, mount.LoopParams{Autoclear: true})
	if err != nil {
		return fmt.Errorf("attach loop device: %w", err)
	}
	// With autoclear the kernel detaches the device once it is unmounted and this file is
	// closed, so a crash of codeboxd cannot leak the device while the mount is gone.
	defer loop.Close()
	if err := unix.Mount(loop.Name(), d.MountPoint, "ext4", MountFlags, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", loop.Name(), d.MountPoint, err)
	}
	return nil
}

// Remove unmounts worker id's disk, which detaches its loop device, and deletes the mount
// point and the file. What is already gone is not an error.
func (s *Store) Remove(id string) error {
	err := s.removeDisk(id)
	if rerr := os.Remove(s.MountPoint(id)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove disk %s: mount point: %w", id, rerr))
	}
	return err
}

// removeDisk unmounts worker id's disk and deletes its file; the mount point stays.
func (s *Store) removeDisk(id string) error {
	unlock := s.lock(id)
	defer func() {
		unlock()
		s.mu.Lock()
		delete(s.locks, id)
		s.mu.Unlock()
	}()
	s.Thaw(id) // a disk frozen by a snapshot a stop cut short would keep its loop device
	var errs []error
	if err := unmount(s.MountPoint(id)); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(s.file(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove disk file: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove disk %s: %w", id, errors.Join(errs...))
	}
	return nil
}

// List returns the ids of the disks present (a file or a mount point).
func (s *Store) List() ([]string, error) {
	seen := map[string]bool{}
	var ids []string
	for _, dir := range []string{s.disks, s.mounts} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("list disks: %w", err)
		}
		for _, e := range entries {
			id := strings.TrimSuffix(e.Name(), ".img")
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// unmount unmounts mp until nothing is mounted there (mounts can stack).
func unmount(mp string) error {
	for i := 0; i < 8; i++ {
		err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more), or no such path
		case errors.Is(err, unix.EBUSY):
			// Something still has it open; detach it lazily so the device goes away
			// when they let go.
			if lerr := unix.Unmount(mp, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); lerr != nil {
				return fmt.Errorf("unmount %s: %w", mp, lerr)
			}
		default:
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted", mp)
}

func notSymlink(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSymlink != 0 || !st.IsDir() {
		return fmt.Errorf("%s must be a real directory, not a symlink", path)
	}
	return nil
}

// Mounted reports whether worker id's disk is mounted at its mount point.
func (s *Store) Mounted(id string) bool {
	var mp, parent unix.Stat_t
	if unix.Lstat(s.MountPoint(id), &mp) != nil || unix.Stat(s.mounts, &parent) != nil {
		return false
	}
	return mp.Dev != parent.Dev
}

// ErrCannotGrow: the host does not let codeboxd grow a mounted ext4 (resize2fs and the
// resize ioctl need CAP_SYS_RESOURCE, which some hosts withhold from root).
var ErrCannotGrow = errors.New("this host does not let codeboxd grow a mounted disk (it lacks CAP_SYS_RESOURCE): create the session with the disk it needs")

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a mounted ext4 to a
// number of blocks.
const ext4IocResizeFS = 0x40086610

// Grow grows worker id's mounted disk to sizeMB, online: the file, then the loop device's
// capacity, then the file system. A disk is never shrunk.
func (s *Store) Grow(ctx context.Context, id string, sizeMB int) error {
	if err := plainName(id); err != nil {
		return err
	}
	if !s.Mounted(id) {
		return fmt.Errorf("grow disk %s: not mounted", id)
	}
	mp := s.MountPoint(id)
	var st unix.Statfs_t
	if err := unix.Statfs(mp, &st); err != nil {
		return fmt.Errorf("grow disk %s: %w", id, err)
	}
	size := int64(sizeMB) << 20
	f, err := os.OpenFile(s.file(id), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("grow disk %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if size <= fi.Size() {
		return nil
	}
	dev, err := loopOf(mp)
	if err != nil {
		return fmt.Errorf("grow disk %s: %w", id, err)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("grow disk %s: %w", id, err)
	}
	loop, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("grow disk %s: %w", id, err)
	}
	defer loop.Close()
	if err := unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("grow disk %s: loop capacity: %w", id, err)
	}
	dir, err := os.Open(mp)
	if err != nil {
		return err
	}
	defer dir.Close()
	blocks := uint64(size) / uint64(st.Bsize)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		if errno == unix.EPERM {
			return ErrCannotGrow
		}
		return fmt.Errorf("grow disk %s: resize: %w", id, errno)
	}
	return nil
}

// loopOf is the loop device mounted at mp (from mountinfo).
func loopOf(mp string) (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	dev := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || unescapeMountPath(f[4]) != mp {
			continue
		}
		for i := 6; i < len(f)-2; i++ {
			if f[i] == "-" {
				dev = f[i+2] // the last mount at mp is the one in use
			}
		}
	}
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("no loop device mounted at %s", mp)
	}
	return dev, nil
}

// Usage is what worker id's mounted disk holds, and its size, in bytes.
func (s *Store) Usage(id string) (used, total int64, err error) {
	if !s.Mounted(id) {
		return 0, 0, fmt.Errorf("disk %s is not mounted", id)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.MountPoint(id), &st); err != nil {
		return 0, 0, err
	}
	bs := int64(st.Bsize)
	return (int64(st.Blocks) - int64(st.Bfree)) * bs, int64(st.Blocks) * bs, nil
}
