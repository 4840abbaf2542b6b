package volumes

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/codebox/codebox/blockdev"
	"golang.org/x/sys/unix"
)

// A process in a user namespace of its own whose uid 0 is host uid base: a worker stand-in.
func userns(t *testing.T, base int) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

func TestVolumes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for loop devices and mounts (make test runs as root)")
	}
	dir := t.TempDir()
	s, err := Open(dir, 2, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v, err := s.Create(ctx, "a", "data", 32)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blockdev.Unmount(s.Root("a", "data")) })
	if _, err := s.Create(ctx, "a", "data", 32); !errors.Is(err, ErrExists) {
		t.Fatalf("a taken name: %v", err)
	}
	if _, err := s.Create(ctx, "a", "big", 64); !errors.Is(err, ErrQuota) {
		t.Fatalf("past the bytes: %v", err)
	}
	if _, err := s.Create(ctx, "a", "../x", 8); !errors.Is(err, ErrBadName) {
		t.Fatalf("a bad name: %v", err)
	}
	os.WriteFile(filepath.Join(s.Root("a", "data"), "f"), []byte("shared"), 0o644)
	os.Chown(filepath.Join(s.Root("a", "data"), "f"), Owner, Owner)

	// Into a "worker" whose uid 0 is host 200000: the file is its user's (201000).
	pid := userns(t, 200000)
	target := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(target, 0o755)
	fd, err := os.OpenFile(target, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := s.Attach("a", "data", Use{Session: "a\x00s1", ID: "s1", Path: "/sandbox/data"}, fd, pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(target, "f"), &st); err != nil || st.Uid != 201000 {
		t.Fatalf("the file through the idmapped mount: uid %d, %v", st.Uid, err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "f")); string(b) != "shared" {
		t.Fatalf("read %q", b)
	}
	// Read-write in one session at a time.
	if err := s.Attach("a", "data", Use{Session: "a\x00s2", ID: "s2", Path: "/sandbox/data", ReadOnly: true}, fd, pid); !errors.Is(err, ErrInUse) {
		t.Fatalf("read-only beside read-write: %v", err)
	}
	if err := s.Delete("a", "data"); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete in use: %v", err)
	}
	s.Release("a\x00s1")
	again, err := Open(dir, 2, 64<<20)
	if err != nil || len(again.List("a")) != 1 || len(again.List("a")[0].Uses) != 0 || again.List("b") != nil {
		t.Fatalf("reopened: %v %+v", err, again.List("a"))
	}
	_ = v
}
