package runtime

import "testing"

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
