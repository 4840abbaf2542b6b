package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/codebox/codebox/bench"
	"github.com/codebox/codebox/daemon"
)

// seedImports is the seed of the bench's seeded environment.
const seedImports = "import pandas as pd, numpy as np\nimport matplotlib.pyplot as plt"

// environmentsRun is the environments phase: two environments of the same image, seeded
// and not, with their idle workers' memory and start CPU and a session's first useful
// cell; then a burst of 25 sessions on a third environment, and another once its pool has
// learned from the first.
func environmentsRun(ctx context.Context, o options, state string, rep *bench.Report) error {
	entry := func(name string, minIdle, maxTotal int, seed string) map[string]any {
		e := map[string]any{"name": name, "image": o.image, "archive": o.archive, "min_idle": minIdle, "max_total": maxTotal}
		if seed != "" {
			e["seed"] = map[string]string{"python": seed}
		}
		return e
	}
	b, err := json.Marshal(map[string]any{"environments": []any{
		entry("seeded", 2, 10, seedImports), entry("unseeded", 2, 10, ""), entry("burst", 1, 30, "")}})
	if err != nil {
		return err
	}
	file := filepath.Join(state, "environments.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return err
	}
	d, err := start(ctx, o, state, []string{"--environments", file, "--min-idle-workers", "0", "--max-total-workers", "60",
		"--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64), "--worker-ram-mb", "1024", "--worker-disk-mb", "500"})
	if err != nil {
		return err
	}
	defer d.stop()
	for _, env := range []string{"seeded", "unseeded"} {
		if err := bench.WaitPool(ctx, d.client, env, func(p bench.PoolState) bool { return p.Idle >= 2 && p.Creating == 0 }); err != nil {
			return err
		}
	}
	if err := idleByEnvironment(ctx, o, rep); err != nil {
		return err
	}
	for _, env := range []string{"seeded", "unseeded"} {
		whole, cell := bench.FirstUsefulCell(ctx, d.client, env, "useful-"+env, o.firstCell, 2)
		rep.Results = append(rep.Results, whole, cell)
	}

	// A burst the pool has not seen, then one after it learned (its target rises to the
	// first burst's size, within its max_total).
	if err := bench.WaitPool(ctx, d.client, "burst", func(p bench.PoolState) bool { return p.Idle >= 1 && p.Creating == 0 }); err != nil {
		return err
	}
	first := bench.Burst(ctx, d.client, fmt.Sprintf("burst of %d, pool of 1 that has seen none", o.users), "burst", "burst1", o.users)
	rep.Results = append(rep.Results, first)
	// Its target decays from the burst's size (rounded, it is one less 10 s after): the pool
	// is ready when it holds its target, most of the burst.
	if err := bench.WaitPool(ctx, d.client, "burst", func(p bench.PoolState) bool {
		return p.Idle >= p.TargetIdle && p.TargetIdle >= o.users*4/5 && p.Creating == 0
	}); err != nil {
		return err
	}
	p, err := bench.Pool(ctx, d.client, "burst")
	if err != nil {
		return err
	}
	rep.Figures["burst: idle target learned from the first burst"] = float64(p.TargetIdle)
	second := bench.Burst(ctx, d.client, fmt.Sprintf("burst of %d, after the pool learned", o.users), "burst", "burst2", o.users)
	rep.Results = append(rep.Results, second)
	rep.Figures[fmt.Sprintf("burst: %d new sessions, pool that has seen none (s)", o.users)] = first.Seconds
	rep.Figures[fmt.Sprintf("burst: %d new sessions, pool that learned (s)", o.users)] = second.Seconds
	return nil
}

// idleByEnvironment reads the idle workers' memory and the CPU their start took (all the
// CPU they used: nothing else ran in them), per environment, from their cgroups.
func idleByEnvironment(ctx context.Context, o options, rep *bench.Report) error {
	managed, err := managedWorkers(ctx, o)
	if err != nil {
		return err
	}
	type sums struct{ rss, cpu float64 }
	by := map[string]*sums{}
	count := map[string]int{}
	for id, labels := range managed {
		env := daemon.ParseLabels(labels).Environment
		if env != "seeded" && env != "unseeded" || !strings.HasPrefix(id, "w-") {
			continue
		}
		rss, _, ok := workerMemory(id)
		if !ok {
			continue // cgroup v2 hosts: not read here
		}
		s := by[env]
		if s == nil {
			s = &sums{}
			by[env] = s
		}
		s.rss += rss
		if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuacct", namespace, id, "cpuacct.usage")); err == nil {
			n, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			s.cpu += n / 1e9
		}
		count[env]++
	}
	for env, s := range by {
		n := float64(count[env])
		rep.Figures["idle worker RSS, "+env+" (MB)"] = s.rss / n
		rep.Figures["worker start CPU, "+env+" (s)"] = s.cpu / n
	}
	return nil
}
