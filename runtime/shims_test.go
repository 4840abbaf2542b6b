package runtime

import (
	"os"
	"os/exec"
	"path/filepath"
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

// stopShims ends a process that is still the one listed — SIGTERM, or SIGKILL when it
// ignores that — and leaves one whose command line is not the listed one.
func TestStopShims(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("shims are root's processes: run as root (make test does)")
	}
	start := func(args ...string) (shim, chan struct{}) {
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		execd(t, cmd.Process.Pid, args[0])
		return shim{id: "w-test", pid: cmd.Process.Pid, cmdline: readCmdline(cmd.Process.Pid)}, done
	}
	other, otherDone := start("sleep", "60")
	other.cmdline = []byte("containerd-shim-runc-v2\x00")
	polite, politeDone := start("sleep", "61")
	// The trap is set once it says so: a SIGTERM before would end it.
	stubborn, stubbornDone := start("sh", "-c", `trap "" TERM; echo ready > "$0"; while :; do sleep 0.1; done`, filepath.Join(t.TempDir(), "ready"))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(strings.Split(string(stubborn.cmdline), "\x00")[3]); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell never set its trap")
		}
	}

	began := time.Now()
	stopped, err := stopShims([]shim{other, polite, stubborn})
	if err != nil {
		t.Fatal(err)
	}
	if len(stopped) != 2 || stopped[0].pid != polite.pid || stopped[1].pid != stubborn.pid {
		t.Fatalf("stopped %+v, want the two whose command line matched", stopped)
	}
	for name, done := range map[string]chan struct{}{"the one that takes SIGTERM": politeDone, "the one that ignores it": stubbornDone} {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s is still running", name)
		}
	}
	if took := time.Since(began); took < 4*time.Second {
		t.Errorf("stopShims returned after %s: it did not wait for the one ignoring SIGTERM", took)
	}
	select {
	case <-otherDone:
		t.Fatal("a process whose command line is not the one listed was signalled")
	default:
	}
}

func TestHostRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("run as root (make test does)")
	}
	if !hostRoot(os.Getpid()) {
		t.Fatal("this test, root in the host's namespaces, is not hostRoot")
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	execd(t, cmd.Process.Pid, "sleep")
	if hostRoot(cmd.Process.Pid) {
		t.Fatal("a process of uid 65534 is hostRoot")
	}
}

// execd waits until pid runs name: before its exec it is a copy of the test.
func execd(t *testing.T, pid int, name string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if strings.HasPrefix(string(readCmdline(pid)), name+"\x00") {
			return
		}
	}
	t.Fatalf("pid %d never ran %s", pid, name)
}
