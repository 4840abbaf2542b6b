package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Resources are a worker's cgroup limits.
type Resources struct {
	CPU      float64 // cores, as a CFS quota
	MemoryMB int     // memory, swap not allowed beyond it
	Pids     int
}

// linuxResources is r as the OCI spec says it.
func (r Resources) linuxResources() *specs.LinuxResources {
	quota, period := int64(r.CPU*cfsPeriod), uint64(cfsPeriod)
	memory := int64(r.MemoryMB) << 20
	pids := int64(r.Pids)
	return &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &memory, Swap: &memory},
		Pids:   &specs.LinuxPids{Limit: &pids},
	}
}

// Update changes the limits of worker id's running task, through containerd (its shim
// writes the cgroups). Memory the kernel cannot reclaim below the new limit makes it fail.
func (r *Runtime) Update(ctx context.Context, id string, res Resources) error {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("task of %s: %w", id, err)
	}
	if err := t.Update(ctx, client.WithResources(res.linuxResources())); err != nil {
		return fmt.Errorf("update the limits of %s: %w", id, err)
	}
	return nil
}

// Usage is what a worker uses now, as its cgroups count it.
type Usage struct {
	CPUSeconds float64
	// MemoryBytes is the working set: usage less the page cache the kernel can drop
	// (inactive file pages); MemoryPeakBytes the most used since the task started.
	MemoryBytes, MemoryPeakBytes int64
	Processes                    int
}

// Usage reads worker id's cgroups directly (cgroup v1 or v2), without a call to
// containerd: it answers while containerd restarts.
func (r *Runtime) Usage(id string) (Usage, error) {
	return cgroupUsage(cgroupRoot, r.namespace, id)
}

func cgroupUsage(root, namespace, id string) (Usage, error) {
	if strings.ContainsAny(namespace+id, "/\x00") || id == "" || namespace == "" {
		return Usage{}, fmt.Errorf("usage: bad worker %q", id)
	}
	rel := filepath.Join(namespace, id)
	var u Usage
	if _, err := os.Stat(filepath.Join(root, "memory", rel)); err == nil { // v1
		cpu, err := readInt(filepath.Join(root, "cpuacct", rel, "cpuacct.usage"))
		if err != nil {
			return u, err
		}
		u.CPUSeconds = float64(cpu) / 1e9
		mem := filepath.Join(root, "memory", rel)
		usage, err := readInt(filepath.Join(mem, "memory.usage_in_bytes"))
		if err != nil {
			return u, err
		}
		stat, err := readStat(filepath.Join(mem, "memory.stat"))
		if err != nil {
			return u, err
		}
		u.MemoryBytes = max(usage-stat["total_inactive_file"], 0)
		if u.MemoryPeakBytes, err = readInt(filepath.Join(mem, "memory.max_usage_in_bytes")); err != nil {
			return u, err
		}
		pids, err := readInt(filepath.Join(root, "pids", rel, "pids.current"))
		u.Processes = int(pids)
		return u, err
	}
	dir := filepath.Join(root, rel) // v2
	cpu, err := readStat(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return u, err
	}
	u.CPUSeconds = float64(cpu["usage_usec"]) / 1e6
	usage, err := readInt(filepath.Join(dir, "memory.current"))
	if err != nil {
		return u, err
	}
	stat, err := readStat(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return u, err
	}
	u.MemoryBytes = max(usage-stat["inactive_file"], 0)
	if peak, err := readInt(filepath.Join(dir, "memory.peak")); err == nil {
		u.MemoryPeakBytes = peak
	} else {
		u.MemoryPeakBytes = usage // kernels before 5.19 keep no peak
	}
	pids, err := readInt(filepath.Join(dir, "pids.current"))
	u.Processes = int(pids)
	return u, err
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// readStat reads a cgroup file of "name value" lines.
func readStat(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseInt(value, 10, 64); err == nil {
			m[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, errors.New(path + ": empty")
	}
	return m, nil
}
