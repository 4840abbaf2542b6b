package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// These tests use real loop devices and mounts, so they need root.
func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts (make test runs as root)")
	}
}

func TestCreateMountRemove(t *testing.T) {
	needRoot(t)
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Create(context.Background(), "w-test", 32, 1<<30+1000) // a uid of a user namespace's range
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
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "..", "a/b"} {
		if _, err := s.Create(context.Background(), id, 16, 1000); err == nil {
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
	s, err := NewStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if _, err := s.Create(context.Background(), "w-bench", 500, 1000); err != nil {
			b.Fatal(err)
		}
		if err := s.Remove("w-bench"); err != nil {
			b.Fatal(err)
		}
	}
}
