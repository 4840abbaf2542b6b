package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/bench"
)

// snapshotsRun times snapshots and forks of a 500 MB disk holding 100 MB of random data,
// taken while a streaming call in the session writes and fsyncs 4 KB at a time (its
// longest write is the stall a snapshot causes), then a session from the snapshot and
// forks of 1 and 3 sessions.
func snapshotsRun(ctx context.Context, o options, state string, rep *bench.Report) error {
	d, err := start(ctx, o, state, []string{"--min-idle-workers", "4", "--max-total-workers", "12",
		"--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64), "--worker-ram-mb", "1024", "--worker-disk-mb", "500"})
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := bench.WaitIdle(ctx, d.client, 4); err != nil {
		return err
	}
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "snap", Limits: &api.Limits{DiskMB: 500}}); err != nil {
		return fmt.Errorf("snapshots: %w", err)
	}
	if r, err := d.client.Execute(ctx, "snap", "import os\nwith open('/sandbox/data.bin', 'wb') as f:\n    for _ in range(100):\n        f.write(os.urandom(1 << 20))", time.Minute); err != nil || r.Error != nil {
		return fmt.Errorf("snapshots: the data: %v", err)
	}
	var took, froze []float64
	stall := 0.0
	for i := range 3 {
		done := make(chan string, 1)
		go func() {
			var out strings.Builder
			for e, err := range d.client.Stream(ctx, "snap", api.ExecuteRequest{Code: `
import os, time
worst = 0.0
end = time.time() + 2
with open('/sandbox/writes.log', 'a') as f:
    while time.time() < end:
        t = time.perf_counter()
        f.write('x' * 4096); f.flush(); os.fsync(f.fileno())
        worst = max(worst, time.perf_counter() - t)
print(worst * 1000)`}) {
				if err != nil {
					break
				}
				if e.Type == api.EventStdout {
					out.WriteString(e.Text)
				}
			}
			done <- strings.TrimSpace(out.String())
		}()
		time.Sleep(500 * time.Millisecond)
		begin := time.Now()
		s, err := d.client.CreateSnapshot(ctx, "snap", api.CreateSnapshotRequest{SnapshotID: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			return fmt.Errorf("snapshots: %w", err)
		}
		took = append(took, ms(time.Since(begin)))
		froze = append(froze, s.FreezeMS)
		worst, _ := strconv.ParseFloat(<-done, 64)
		stall = max(stall, worst)
	}
	rep.Figures["snapshots: snapshot of a 500 MB disk holding 100 MB, p50 of 3 (ms)"] = median(took)
	rep.Figures["snapshots: the disk frozen for it, p50 of 3 (ms)"] = median(froze)
	rep.Figures["snapshots: the longest write in the session meanwhile (ms)"] = stall
	begin := time.Now()
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "snap-from", FromSnapshot: "bench-0"}); err != nil {
		return fmt.Errorf("snapshots: from a snapshot: %w", err)
	}
	rep.Figures["snapshots: a session from the snapshot, warm pool (ms)"] = ms(time.Since(begin))
	for _, n := range []int{1, 3} {
		if _, err := bench.WaitIdle(ctx, d.client, 4); err != nil {
			return err
		}
		var ids []string
		for i := range n {
			ids = append(ids, fmt.Sprintf("fork-%d-%d", n, i))
		}
		begin := time.Now()
		if _, err := d.client.Fork(ctx, "snap", ids...); err != nil {
			return fmt.Errorf("snapshots: fork: %w", err)
		}
		rep.Figures[fmt.Sprintf("snapshots: a fork into %d sessions (ms)", n)] = ms(time.Since(begin))
		for _, id := range ids {
			d.client.DeleteSession(ctx, id)
		}
	}
	return d.stop()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
