package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestShimFor(t *testing.T) {
	const ns, addr = "codebox", "/run/codebox/containerd/containerd.sock"
	line := func(args ...string) []byte { return []byte(strings.Join(args, "\x00") + "\x00") }
	for _, c := range []struct {
		cmdline []byte
		id      string
	}{
		{line("/usr/bin/containerd-shim-runc-v2", "-namespace", ns, "-id", "w-1", "-address", addr), "w-1"},
		{line("containerd-shim-runc-v2", "--namespace", ns, "--address", addr, "--id", "w-2"), "w-2"},
		{line("/usr/bin/containerd-shim-runc-v2", "-namespace", "other", "-id", "w-3", "-address", addr), ""},
		{line("/usr/bin/containerd-shim-runc-v2", "-namespace", ns, "-id", "w-4", "-address", "/run/containerd/containerd.sock"), ""},
		{line("/usr/bin/containerd-shim-runc-v2", "-namespace", ns, "-address", addr), ""},
		{line("/usr/bin/sleep", "-namespace", ns, "-id", "w-5", "-address", addr), ""},
		{nil, ""},
	} {
		id, ok := shimFor(c.cmdline, ns, addr)
		if id != c.id || ok != (c.id != "") {
			t.Errorf("%q: %q %v, want %q", c.cmdline, id, ok, c.id)
		}
	}
}

// stopShim ends a process that matches, and leaves one whose command line changed.
func TestStopShim(t *testing.T) {
	start := func() *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	other := start()
	if err := stopShim(other.Process.Pid, []byte("containerd-shim-runc-v2\x00")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a signal sent would have ended it by now
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", other.Process.Pid)); err != nil || strings.Contains(string(stat), ") Z ") {
		t.Fatal("a process whose command line is not the one listed was signalled")
	}
	victim := start()
	done := make(chan struct{})
	go func() { victim.Wait(); close(done) }()
	if err := stopShim(victim.Process.Pid, readCmdline(victim.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the matching process is still running")
	}
}
