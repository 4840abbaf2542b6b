// Package blockdev owns the workers' virtual disks: a sparse file per worker under
// <state-dir>/disks, formatted ext4 with its root owned by the sandbox user, attached to a
// loop device (containerd's mount.SetupLoop: LOOP_CONFIGURE, EBUSY retries, autoclear) and
// mounted on the host at <state-dir>/mounts/<worker-id> with nosuid, nodev, noexec and
// nosymfollow. The daemon reads and writes a worker's files through that host mount; the
// worker sees it as /sandbox through a bind mount.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// MountFlags are the host mount's flags. The container's bind mount must repeat them as
// options: runc does not inherit them from the source mount.
const MountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSYMFOLLOW

// BindOptions are the OCI mount options that carry MountFlags into the container.
var BindOptions = []string{"rbind", "rw", "nosuid", "nodev", "noexec", "nosymfollow"}

// Disk is one worker's virtual disk.
type Disk struct {
	ID         string
	File       string // the sparse backing file
	MountPoint string // where the host sees it
}

// Store creates and removes disks under a state directory.
type Store struct {
	disks, mounts string
}

// NewStore prepares <stateDir>/disks and <stateDir>/mounts.
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
	return s, nil
}

// MountPoint is where worker id's disk is (or would be) mounted on the host.
func (s *Store) MountPoint(id string) string { return filepath.Join(s.mounts, id) }

func (s *Store) file(id string) string { return filepath.Join(s.disks, id+".img") }

// Create makes, formats, attaches and mounts a disk of sizeMB for worker id, its root owned
// by owner (uid and gid, as the host sees them). On failure nothing is left behind.
func (s *Store) Create(ctx context.Context, id string, sizeMB, owner int) (_ *Disk, err error) {
	if strings.ContainsAny(id, "/\x00") || id == "" || id == "." || id == ".." {
		return nil, fmt.Errorf("disk id %q is not a plain name", id)
	}
	d := &Disk{ID: id, File: s.file(id), MountPoint: s.MountPoint(id)}
	defer func() {
		if err != nil {
			if rerr := s.Remove(id); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()

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

	loop, err := mount.SetupLoop(d.File, mount.LoopParams{Autoclear: true})
	if err != nil {
		return nil, fmt.Errorf("attach loop device: %w", err)
	}
	// With autoclear the kernel detaches the device once it is unmounted and this file is
	// closed, so a crash of codeboxd cannot leak the device while the mount is gone.
	defer loop.Close()

	if err := os.Mkdir(d.MountPoint, 0o700); err != nil {
		return nil, fmt.Errorf("create mount point: %w", err)
	}
	if err := notSymlink(d.MountPoint); err != nil {
		return nil, err
	}
	if err := unix.Mount(loop.Name(), d.MountPoint, "ext4", MountFlags, ""); err != nil {
		return nil, fmt.Errorf("mount %s on %s: %w", loop.Name(), d.MountPoint, err)
	}
	// The user's /sandbox starts empty; e2fsck recreates lost+found should it need one.
	if err := os.Remove(filepath.Join(d.MountPoint, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove lost+found: %w", err)
	}
	return d, nil
}

// Remove unmounts worker id's disk, which detaches its loop device, and deletes the mount
// point and the file. What is already gone is not an error.
func (s *Store) Remove(id string) error {
	mp := s.MountPoint(id)
	var errs []error
	if err := unmount(mp); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(mp); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove mount point: %w", err))
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
