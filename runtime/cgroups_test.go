package runtime

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestRemoveCgroupParentsRefusesPatterns(t *testing.T) {
	for _, ns := range []string{"", "a/b", "*", "codebox-?", "x[1]"} {
		if err := RemoveCgroupParents(ns); err == nil {
			t.Errorf("namespace %q accepted", ns)
		}
	}
	// A namespace that never ran a container has nothing to remove.
	if err := RemoveCgroupParents("codebox-test-never-used"); err != nil {
		t.Errorf("absent cgroups: %v", err)
	}
}

// A runc create cut short leaves a worker's cgroup in some hierarchies: the sweep removes
// those of workers without a container, and never a cgroup that holds anything.
func TestRemoveOrphanCgroups(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("cpuset/ns/w-orphan")
	mk("memory/ns/w-live")
	mk("ns/w-orphan2")             // v2
	mk("pids/ns/w-busy/held")      // stands for a cgroup with a process: not empty
	mk("cpuset/other/w-elsewhere") // another namespace
	removed, err := removeOrphanCgroups(root, "ns", map[string]bool{"w-live": true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cgroup " + filepath.Join(root, "cpuset/ns/w-orphan"), "cgroup " + filepath.Join(root, "ns/w-orphan2")}
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, kept := range []string{"memory/ns/w-live", "pids/ns/w-busy", "cpuset/other/w-elsewhere"} {
		if _, err := os.Stat(filepath.Join(root, kept)); err != nil {
			t.Errorf("%s: %v", kept, err)
		}
	}
}
