package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/bench"
)

// startPathRun profiles the start path: a codeboxd pre-warms n workers from nothing while
// the machine's CPU is counted, split into the workers' own (their cgroups: the agent's
// imports and warm-up), codeboxd's and the rest (containerd, its shims, runc, the CNI
// plugins, the kernel's work for them); then n sessions take them, and each part's wall
// time comes from codeboxd's codebox_worker_phase_duration_seconds.
func startPathRun(ctx context.Context, o options, state string, rep *bench.Report, n int) error {
	before := snapCPU(0)
	began := time.Now()
	d, err := start(ctx, o, state, []string{"--min-idle-workers", strconv.Itoa(n), "--max-total-workers", strconv.Itoa(2 * n),
		"--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64), "--worker-ram-mb", "1024", "--worker-disk-mb", "500"})
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := bench.WaitIdle(ctx, d.client, n); err != nil {
		return err
	}
	took := time.Since(began)
	after := snapCPU(d.cmd.Process.Pid)
	per := func(v time.Duration) float64 { return float64(v.Microseconds()) / 1000 / float64(n) }
	machine := after.machine - before.machine
	daemonCPU := after.daemon // it started after the first snapshot
	workers := after.workers - before.workers
	rep.Figures[fmt.Sprintf("start path: %d workers pre-warmed from nothing (s)", n)] = took.Seconds()
	rep.Figures["start path: CPU per worker start, whole machine (ms)"] = per(machine)
	rep.Figures["start path: … in the worker (agent imports, warm-up) (ms)"] = per(workers)
	rep.Figures["start path: … codeboxd (ms)"] = per(daemonCPU)
	rep.Figures["start path: … containerd, shims, runc, CNI, kernel (ms)"] = per(machine - workers - daemonCPU)

	// The fitting parts: sessions take the idle workers (disk, limits, variables).
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("startpath-%d", i)
		if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: id, Limits: &api.Limits{MemoryMB: 2048},
			Env: map[string]string{"BENCH": "1"}}); err == nil {
			d.client.DeleteSession(ctx, id)
		}
	}
	phases, err := scrapePhases(ctx)
	if err != nil {
		return err
	}
	for _, p := range []string{"network", "container", "kernel", "seed", "disk", "limits", "agent"} {
		if v, ok := phases[p]; ok {
			rep.Figures["start path: "+p+", mean wall time (ms)"] = v
		}
	}
	return nil
}

// scrapePhases reads the mean of each phase of codebox_worker_phase_duration_seconds, in ms.
func scrapePhases(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+metricsPort+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sums, counts := map[string]float64{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for suffix, into := range map[string]map[string]float64{"_sum": sums, "_count": counts} {
			prefix := "codebox_worker_phase_duration_seconds" + suffix + `{phase="`
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				phase, value, _ := strings.Cut(rest, `"} `)
				into[phase], _ = strconv.ParseFloat(value, 64)
			}
		}
	}
	out := map[string]float64{}
	for p, c := range counts {
		if c > 0 {
			out[p] = 1000 * sums[p] / c
		}
	}
	return out, sc.Err()
}
