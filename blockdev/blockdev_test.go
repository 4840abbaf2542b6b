package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// These tests use real loop devices and mounts, so they need root.
func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts (make test runs as root)")
	}
}

// newStore is a store in a temporary directory, its shared mount undone at the end.
func newStore(t testing.TB) *Store {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestCreateMountRemove(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	if _, err := s.Prepare("w-test"); err != nil {
		t.Fatal(err)
	}
	if s.Mounted("w-test") {
		t.Fatal("a prepared mount point counts as a mounted disk")
	}
	d, err := s.Make(context.Background(), "w-test", 32, 1<<30+1000) // a uid of a user namespace's range
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Remove("w-test") })

	opts := mountOptions(t, d.MountPoint)
	for _, want := range []string{"nosuid", "nodev", "noexec", "nosymfollow"} {
		if !strings.Contains(opts, want) {
			t.Errorf("mount options %q lack %s", opts, want)
		}
	}
	st, err := os.Stat(d.MountPoint)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sys().(*syscall.Stat_t).Uid != 1<<30+1000 {
		t.Errorf("disk root owned by %d, want the owner given", st.Sys().(*syscall.Stat_t).Uid)
	}
	if entries, _ := os.ReadDir(d.MountPoint); len(entries) != 0 {
		t.Errorf("a new disk is not empty: %v", entries)
	}
	dev := loopDeviceOf(t, d.File)
	if dev == "" {
		t.Fatalf("no loop device backs %s", d.File)
	}

	// Writes stop at the disk's size.
	f, err := os.Create(filepath.Join(d.MountPoint, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	written := 0
	for ; written < 64<<20; written += len(buf) {
		if _, err = f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) || written > 32<<20 {
		t.Fatalf("wrote %d bytes, err %v; want ENOSPC within 32 MiB", written, err)
	}

	// A symlink on the disk is not followed through the host mount.
	os.Symlink("/etc/passwd", filepath.Join(d.MountPoint, "link"))
	if _, err := os.ReadFile(filepath.Join(d.MountPoint, "link")); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("symlink followed: %v", err)
	}

	if err := s.Remove("w-test"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.MountPoint, d.File} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Remove", p)
		}
	}
	if loopDeviceOf(t, d.File) != "" {
		t.Errorf("loop device %s still attached", dev)
	}
	if err := s.Remove("w-test"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestCreateRejectsBadIDs(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	for _, id := range []string{"", "..", "a/b"} {
		if _, err := s.Prepare(id); err == nil {
			t.Errorf("mount point %q prepared", id)
		}
		if _, err := s.Make(context.Background(), id, 16, 1000); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
}

func mountOptions(t *testing.T, mp string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == mp {
			return f[5]
		}
	}
	t.Fatalf("%s is not mounted", mp)
	return ""
}

// loopDeviceOf returns the loop device whose backing file is file, or "".
func loopDeviceOf(t *testing.T, file string) string {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		if strings.TrimSpace(string(b)) == file {
			return strings.Split(m, "/")[3]
		}
	}
	return ""
}

// BenchmarkCreateRemove measures a 500 MB disk's set-up and teardown (make bench).
func BenchmarkCreateRemove(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipped: needs root")
	}
	s := newStore(b)
	for i := 0; i < b.N; i++ {
		if _, err := s.Prepare("w-bench"); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Make(context.Background(), "w-bench", 500, 1000); err != nil {
			b.Fatal(err)
		}
		if err := s.Remove("w-bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// The store's mounts directory is a shared mount: a mount made under it later reaches every
// bind of it that is its slave (as a container's /sandbox is).
func TestMountsPropagateToSlaves(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	mp, err := s.Prepare("w-prop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Remove("w-prop") })
	slave := t.TempDir()
	if err := unix.Mount(mp, slave, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(slave, unix.MNT_DETACH) })
	if err := unix.Mount("", slave, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Make(context.Background(), "w-prop", 16, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mp, "seen"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(slave, "seen")); err != nil {
		t.Fatalf("the disk mounted after the bind did not reach it: %v", err)
	}
	if err := s.Remove("w-prop"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(slave, "seen")); err == nil {
		t.Fatal("the disk's unmount did not reach the bind")
	}
}

// A mounted disk grows online where the host lets root resize a mounted ext4
// (CAP_SYS_RESOURCE); elsewhere Grow says so, and the disk is as it was.
func TestGrow(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	if _, err := s.Prepare("w-grow"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Remove("w-grow") })
	if _, err := s.Make(context.Background(), "w-grow", 32, 1000); err != nil {
		t.Fatal(err)
	}
	_, before, err := s.Usage("w-grow")
	if err != nil {
		t.Fatal(err)
	}
	err = s.Grow(context.Background(), "w-grow", 64)
	_, after, uerr := s.Usage("w-grow")
	if uerr != nil {
		t.Fatal(uerr)
	}
	if hasCapSysResource(t) {
		if err != nil || after < before+24<<20 {
			t.Fatalf("grow with CAP_SYS_RESOURCE: %v; size %d -> %d", err, before, after)
		}
		return
	}
	if !errors.Is(err, ErrCannotGrow) || after != before {
		t.Fatalf("grow without CAP_SYS_RESOURCE: %v; size %d -> %d, want ErrCannotGrow and no change", err, before, after)
	}
}

func hasCapSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	t.Fatal("no CapEff")
	return false
}

// A snapshot is the disk at one instant, sparse; a disk made from it is its own.
func TestSnapshotAndMakeFrom(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"w-src", "w-copy"} {
		if _, err := s.Prepare(id); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Remove(id) })
	}
	src, err := s.Make(ctx, "w-src", 64, 1000)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src.MountPoint, "f"), []byte("before"), 0o644)
	snap := filepath.Join(t.TempDir(), "snap.img")
	froze, err := s.Snapshot(ctx, "w-src", snap)
	if err != nil {
		t.Fatal(err)
	}
	if froze <= 0 || froze > maxFreeze {
		t.Fatalf("frozen for %s", froze)
	}
	// Writes go on once it is thawed.
	if err := os.WriteFile(filepath.Join(src.MountPoint, "f"), []byte("after"), 0o644); err != nil {
		t.Fatalf("a write after the snapshot: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(snap, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 || st.Blocks*512 >= st.Size/2 {
		t.Fatalf("the snapshot is %d bytes and takes %d: not sparse", st.Size, st.Blocks*512)
	}
	cp, err := s.MakeFrom(ctx, "w-copy", snap, 96)
	if err == nil {
		// The source's files (uid 1000 of a range at 0) given to a range at 200000.
		err = s.Rebase(ctx, "w-copy", 0, 200000, 65536)
	}
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(cp.MountPoint, "f")); string(b) != "before" {
		t.Fatalf("the copy holds %q", b)
	}
	var own syscall.Stat_t
	if syscall.Stat(filepath.Join(cp.MountPoint, "f"), &own); own.Uid != 200000 { // written by root: uid 0 of the range
		t.Fatalf("rebased: the file's owner is %d", own.Uid)
	}
	if _, total, _ := s.Usage("w-copy"); total < 80<<20 {
		t.Fatalf("the copy was not grown: %d bytes", total)
	}
	os.WriteFile(filepath.Join(cp.MountPoint, "g"), []byte("mine"), 0o644)
	if _, err := os.Stat(filepath.Join(src.MountPoint, "g")); err == nil {
		t.Fatal("a write in the copy is seen in the source")
	}
}

// A disk that is not mounted (ended meanwhile) is never frozen: its empty mount point is on
// the state directory's file system.
func TestSnapshotOfAnUnmountedDisk(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	if _, err := s.Prepare("w-gone"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Remove("w-gone") })
	if _, err := s.Snapshot(context.Background(), "w-gone", filepath.Join(t.TempDir(), "x.img")); err == nil || !strings.Contains(err.Error(), "not mounted") {
		t.Fatalf("a snapshot of an unmounted disk: %v", err)
	}
	// The state directory's file system takes writes.
	if err := os.WriteFile(filepath.Join(t.TempDir(), "w"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Rebase stops at its bounds instead of walking whatever a tenant built.
func TestRebaseBounded(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	if _, err := s.Prepare("w-deep"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Remove("w-deep") })
	d, err := s.Make(context.Background(), "w-deep", 32, 1000)
	if err != nil {
		t.Fatal(err)
	}
	fd, _ := unix.Open(d.MountPoint, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	for range maxRebaseDepth + 5 { // nested by descriptors: no path is ever that long
		unix.Mkdirat(fd, "d", 0o755)
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
	if err := s.Rebase(context.Background(), "w-deep", 0, 200000, 65536); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("a tree deeper than the bound: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Rebase(ctx, "w-deep", 0, 300000, 65536); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled rebase: %v", err)
	}
}
