package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A codeboxd killed while containerd creates a worker's task cancels the Create: containerd
// 1.6 has started the task's shim by then and, the Create failed, forgets it without
// stopping it (containerd/containerd#6860, #11392). Nothing in containerd lists such a
// shim any more, so they are found by their command line, which names the namespace,
// the container and containerd's socket.

// ShimsOf lists the shims running for containers of namespace on the containerd at
// address: container id → pid.
func ShimsOf(namespace, address string) map[string]int {
	out := map[string]int{}
	for _, s := range shimsOf(namespace, address) {
		out[s.id] = s.pid
	}
	return out
}

type shim struct {
	id      string
	pid     int
	cmdline []byte
}

func shimsOf(namespace, address string) []shim {
	var out []shim
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		cmdline := readCmdline(pid)
		if id, ok := shimFor(cmdline, namespace, address); ok {
			out = append(out, shim{id: id, pid: pid, cmdline: cmdline})
		}
	}
	return out
}

func readCmdline(pid int) []byte {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	b := make([]byte, 4096)
	n, _ := f.Read(b)
	return b[:n]
}

// shimFor reads a command line (NUL-separated): the container id, if it is a shim's of
// namespace on the containerd at address.
func shimFor(cmdline []byte, namespace, address string) (string, bool) {
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return "", false
	}
	flags := map[string]string{}
	for i := 1; i+1 < len(args); i++ {
		if name, ok := strings.CutPrefix(args[i], "-"); ok {
			flags[strings.TrimPrefix(name, "-")] = args[i+1]
		}
	}
	id := flags["id"]
	if id == "" || flags["namespace"] != namespace || flags["address"] != address {
		return "", false
	}
	return id, true
}

// stopShim ends the shim at pid, if its command line is still want's: SIGTERM, which a shim
// takes as the order to shut down, and SIGKILL if it is still there after a few seconds.
func stopShim(pid int, want []byte) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of shim %d: %w", pid, err)
	}
	defer unix.Close(fd)
	// The pid may have been reused between the listing and the pidfd: the pidfd holds the
	// process now, so this check is of the one the signal reaches.
	if !bytes.Equal(readCmdline(pid), want) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("stop shim %d: %w", pid, err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, int((5 * time.Second).Milliseconds())); err == nil && n > 0 {
		return nil // it exited
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill shim %d: %w", pid, err)
	}
	return nil
}
