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
		if id, ok := shimFor(cmdline, namespace, address); ok && hostRoot(pid) {
			out = append(out, shim{id: id, pid: pid, cmdline: cmdline})
		}
	}
	return out
}

// hostRoot reports whether pid runs as root in codeboxd's own user and pid namespaces, as
// containerd's shims do. Anyone can name a process like a shim — a tenant's code too, and
// host /proc shows it — but a tenant's processes live in their worker's namespaces under
// unprivileged host uids.
func hostRoot(pid int) bool {
	for _, ns := range []string{"user", "pid"} {
		own, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil || own != its {
			return false
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if ids, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(ids)
			return len(f) == 4 && f[0] == "0" && f[1] == "0" && f[2] == "0" && f[3] == "0"
		}
	}
	return false
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

// stopShims ends the shims: SIGTERM, which a shim takes as the order to shut down, then
// SIGKILL to those still there after 5 s (one wait for all). A shim whose pid no longer
// names it (it ended, the pid was reused) is left alone. It returns those it signalled.
// stopShimOf stops the shim of container id, if one runs: for a container that was just
// deleted, whose shim nothing else will stop.
func (r *Runtime) stopShimOf(id string) error {
	var mine []shim
	for _, s := range shimsOf(r.namespace, r.address) {
		if s.id == id {
			mine = append(mine, s)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	stopped, err := stopShims(mine)
	for _, s := range stopped {
		r.log.Warn("stopped the shim a cut-short task creation left", "worker", id, "pid", s.pid)
	}
	return err
}

func stopShims(shims []shim) ([]shim, error) {
	var errs []error
	var stopped []shim
	var fds []unix.PollFd
	for _, s := range shims {
		fd, err := unix.PidfdOpen(s.pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pidfd of shim %d: %w", s.pid, err))
			continue
		}
		// The pidfd holds the process now: checked after it, the command line and owner
		// are those of the process the signal reaches.
		if !bytes.Equal(readCmdline(s.pid), s.cmdline) || !hostRoot(s.pid) {
			unix.Close(fd)
			continue
		}
		if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
			unix.Close(fd)
			if !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("stop shim %d: %w", s.pid, err))
			}
			continue
		}
		stopped = append(stopped, s)
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	defer func() {
		for _, p := range fds {
			unix.Close(int(p.Fd))
		}
	}()
	// A pidfd polls readable once its process has ended.
	deadline := time.Now().Add(5 * time.Second)
	for left := time.Until(deadline); left > 0; left = time.Until(deadline) {
		waiting := waitingOn(fds)
		if len(waiting) == 0 {
			break
		}
		if _, err := unix.Poll(waiting, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			errs = append(errs, fmt.Errorf("wait for shims: %w", err))
			break
		}
		for _, w := range waiting {
			if w.Revents != 0 {
				markDone(fds, w.Fd)
			}
		}
	}
	for _, p := range fds {
		if p.Events == 0 {
			continue // ended
		}
		if err := unix.PidfdSendSignal(int(p.Fd), unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill shim: %w", err))
		}
	}
	return stopped, errors.Join(errs...)
}

// waitingOn is the pidfds whose process has not ended yet (Events still set).
func waitingOn(fds []unix.PollFd) []unix.PollFd {
	var out []unix.PollFd
	for _, p := range fds {
		if p.Events != 0 {
			out = append(out, unix.PollFd{Fd: p.Fd, Events: unix.POLLIN})
		}
	}
	return out
}

func markDone(fds []unix.PollFd, fd int32) {
	for i := range fds {
		if fds[i].Fd == fd {
			fds[i].Events = 0
		}
	}
}
