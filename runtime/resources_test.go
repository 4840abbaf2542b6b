package runtime

import (
	"os"
	"path/filepath"
	"testing"
)

// A worker's usage from its cgroups, in both layouts: v1 (a directory per controller) and
// v2 (one directory). The working set leaves out the page cache the kernel can drop.
func TestCgroupUsage(t *testing.T) {
	write := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v1 := t.TempDir()
	rel := filepath.Join("ns", "w-1")
	write(filepath.Join(v1, "cpuacct", rel, "cpuacct.usage"), "2500000000\n")
	write(filepath.Join(v1, "memory", rel, "memory.usage_in_bytes"), "300000000\n")
	write(filepath.Join(v1, "memory", rel, "memory.max_usage_in_bytes"), "400000000\n")
	write(filepath.Join(v1, "memory", rel, "memory.stat"), "cache 100\ntotal_inactive_file 100000000\n")
	write(filepath.Join(v1, "pids", rel, "pids.current"), "7\n")
	u, err := cgroupUsage(v1, "ns", "w-1")
	if err != nil || u.CPUSeconds != 2.5 || u.MemoryBytes != 200000000 || u.MemoryPeakBytes != 400000000 || u.Processes != 7 {
		t.Fatalf("v1: %+v %v", u, err)
	}
	v2 := t.TempDir()
	write(filepath.Join(v2, rel, "cpu.stat"), "usage_usec 1500000\nuser_usec 1\n")
	write(filepath.Join(v2, rel, "memory.current"), "5000\n")
	write(filepath.Join(v2, rel, "memory.peak"), "9000\n")
	write(filepath.Join(v2, rel, "memory.stat"), "anon 1\ninactive_file 6000\n")
	write(filepath.Join(v2, rel, "pids.current"), "3\n")
	u, err = cgroupUsage(v2, "ns", "w-1")
	if err != nil || u.CPUSeconds != 1.5 || u.MemoryBytes != 0 || u.MemoryPeakBytes != 9000 || u.Processes != 3 {
		t.Fatalf("v2: %+v %v", u, err)
	}
	if _, err := cgroupUsage(v1, "ns", "../w-1"); err == nil {
		t.Fatal("a worker id with a slash was read")
	}
	if _, err := cgroupUsage(v1, "ns", "w-2"); err == nil {
		t.Fatal("a worker with no cgroup has a usage")
	}
}
