package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestChurnLeavesNothing creates and destroys 50 workers (5 sessions at a time, 10 rounds)
// and checks that no loop device, mount, netns, iptables rule, CNI allocation, snapshot,
// container or disk file is left.
func TestChurnLeavesNothing(t *testing.T) {
	// A pool that keeps no idle worker (max_idle 0): every worker made is one the test
	// used, and none may be left.
	d := startDaemon(t, "--worker-disk-mb", "32", "--environments",
		writeEnvironments(t, map[string]any{"name": "default", "min_idle": 0, "max_idle": 0}))
	rulesBefore := firewallRules(t)
	start := time.Now()
	for round := 0; round < 10; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 5)
		for i := 0; i < 5; i++ {
			user := fmt.Sprintf("e2e-churn-%d-%d", round, i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				r, err := d.client.Execute(ctx, user, "open('/sandbox/f', 'w').write('x' * 1000)", 0)
				if err == nil && r.Error != nil {
					err = fmt.Errorf("%s: %s", r.Error.Ename, r.Error.Evalue)
				}
				if err == nil {
					err = d.client.Release(ctx, user)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", user, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	t.Logf("50 workers created, used and destroyed in %s", time.Since(start).Round(time.Millisecond))

	st, err := d.client.Status(context.Background())
	if err != nil || st.TotalWorkers != 0 {
		t.Fatalf("status after churn: %+v %v", st, err)
	}
	if err := checkNoLeftovers(); err != nil {
		t.Fatal(err)
	}
	if left := diskLeftovers(d.stateDir, true); left != "" {
		t.Fatal(left)
	}
	if after := firewallRules(t); after != rulesBefore {
		t.Fatalf("firewall rules changed with churn:\nbefore:\n%s\nafter:\n%s", rulesBefore, after)
	}
}

// diskLeftovers reports disk files, mounts and loop devices of the state dir. A running
// daemon (running) keeps one mount of its own: <state-dir>/mounts, bound on itself and
// shared, through which disks reach its workers' containers.
func diskLeftovers(stateDir string, running bool) string {
	var problems []string
	for _, sub := range []string{"disks", "mounts"} {
		entries, _ := os.ReadDir(filepath.Join(stateDir, sub))
		for _, e := range entries {
			problems = append(problems, sub+"/"+e.Name())
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], stateDir) &&
			!(running && f[4] == filepath.Join(stateDir, "mounts")) {
			problems = append(problems, "mount "+f[4])
		}
	}
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, b := range backing {
		if data, _ := os.ReadFile(b); strings.HasPrefix(string(data), stateDir) {
			problems = append(problems, "loop device of "+strings.TrimSpace(string(data)))
		}
	}
	if len(problems) > 0 {
		return "left behind: " + strings.Join(problems, ", ")
	}
	return ""
}

// firewallRules is the tests' bridge's part of the IPv4 and IPv6 rule sets.
func firewallRules(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(tool, "-S").Output()
		if err != nil {
			t.Fatalf("%s -S: %v", tool, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, bridge) {
				b.WriteString(tool + " " + line + "\n")
			}
		}
	}
	return b.String()
}
