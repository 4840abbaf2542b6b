package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuSnap is CPU time used so far by each party of a scenario. Process times come from
// schedstat (this kernel's utime/stime stay 0 under the VM's accounting), the workers' from
// their cgroup v1 cpuacct, the machine's from /proc/stat.
type cpuSnap struct {
	daemon, client, workers, machine time.Duration
}

func snapCPU(daemonPid int) cpuSnap {
	return cpuSnap{
		daemon:  procCPU(daemonPid),
		client:  procCPU(os.Getpid()),
		workers: workersCPU(),
		machine: machineBusy(),
	}
}

// procCPU sums the run time of every thread of pid.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return time.Duration(total)
}

// workersCPU sums cpuacct.usage of the bench namespace's containers.
func workersCPU() time.Duration {
	files, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/cpuacct", namespace, "*", "cpuacct.usage"))
	var total int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		total += n
	}
	return time.Duration(total)
}

// machineBusy is all CPUs' non-idle time (USER_HZ ticks, 10 ms each).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 || i == 7 { // idle, iowait, steal
			continue
		}
		if i >= 8 { // guest time is already in user
			break
		}
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// cpuFigures records CPU per request of each party between two snapshots.
func cpuFigures(figures map[string]float64, scenario string, before, after cpuSnap, requests int, withDaemon bool) {
	if requests <= 0 {
		return
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(requests) }
	if withDaemon {
		figures[scenario+": CPU per request, codeboxd (ms)"] = per(after.daemon - before.daemon)
	}
	figures[scenario+": CPU per request, agents (ms)"] = per(after.workers - before.workers)
	figures[scenario+": CPU per request, bench client (ms)"] = per(after.client - before.client)
	figures[scenario+": CPU per request, whole machine (ms)"] = per(after.machine - before.machine)
}
