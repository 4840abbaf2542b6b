package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// hashesPy prints the sha256 of every file under /sandbox (but .local) as JSON, sorted.
const hashesPy = `
import hashlib, json, os
out = {}
for root, dirs, files in os.walk('/sandbox'):
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p):  # /sandbox is mounted nosymfollow: a link is its target's name
            out[p] = 'link:' + os.readlink(p)
            continue
        h = hashlib.sha256()
        with open(p, 'rb') as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b''):
                h.update(chunk)
        out[p] = h.hexdigest()
print(json.dumps(out, sort_keys=True))
`

// TestSnapshots: a snapshot is the disk at one instant while a streaming call writes on in
// the source; sessions made from it and forks hold the same files, each its own copy owned
// by its own user; snapshots survive a restart; the quotas and bad input are refused.
func TestSnapshots(t *testing.T) {
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	flags := []string{"--max-snapshots", "3", "--destroy-on-stop=false", "--state-dir", stateDir, "--min-idle-workers", "2", "--max-total-workers", "10"}
	d := startDaemon(t, flags...)
	ctx := context.Background()
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-snap", Limits: &api.Limits{DiskMB: 500}, Metadata: map[string]string{"k": "v"},
		Env: map[string]string{"SECRET_NAME": "value"}})
	r := d.exec(t, "e2e-snap", `
import os
with open('/sandbox/big.bin', 'wb') as f:
    for _ in range(100):
        f.write(os.urandom(1 << 20))
os.makedirs('/sandbox/dir/sub', exist_ok=True)
open('/sandbox/dir/sub/small.txt', 'w').write('hello')
os.symlink('/etc/passwd', '/sandbox/link')
'done'`)
	if r.Error != nil {
		t.Fatalf("writing the files: %+v", r.Error)
	}
	hashes := func(id, extra string) string {
		t.Helper()
		r := d.exec(t, id, hashesPy+extra)
		if r.Error != nil {
			t.Fatalf("hashes in %s: %s: %s", id, r.Error.Ename, r.Error.Evalue)
		}
		return strings.TrimSpace(r.Stdout)
	}
	want := hashes("e2e-snap", "")

	// A streaming call writes (and flushes) in the source the whole time, timing each write.
	streamDone := make(chan string, 1)
	go func() {
		var out strings.Builder
		for e, err := range d.client.Stream(ctx, "e2e-snap", api.ExecuteRequest{Code: `
import os, time
worst, n = 0.0, 0
end = time.time() + 4
with open('/sandbox/writes.log', 'a') as f:
    while time.time() < end:
        t = time.perf_counter()
        f.write('x' * 4096); f.flush(); os.fsync(f.fileno())
        worst = max(worst, time.perf_counter() - t); n += 1
        if n % 50 == 0:
            print(n, flush=True)
print('worst_ms', round(worst * 1000, 1), 'writes', n)`}) {
			if err != nil {
				streamDone <- "error: " + err.Error()
				return
			}
			if e.Type == api.EventStdout {
				out.WriteString(e.Text)
			}
			if e.Type == api.EventDone {
				out.WriteString("done " + e.Status)
			}
		}
		streamDone <- out.String()
	}()
	time.Sleep(time.Second)
	start := time.Now()
	snap, err := d.client.CreateSnapshot(ctx, "e2e-snap", api.CreateSnapshotRequest{SnapshotID: "e2e-base"})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	stream := <-streamDone
	t.Logf("snapshot of a 500 MB disk holding 100 MB: %s (frozen %.1f ms, stored %.1f MB); the streaming source: %s",
		took.Round(time.Millisecond), snap.FreezeMS, snap.StoredMB, stream[strings.LastIndex(stream, "worst_ms"):])
	if !strings.HasSuffix(stream, "done ok") || !strings.Contains(stream, "worst_ms") {
		t.Fatalf("the streaming call across the snapshot: %q", stream)
	}
	if snap.Memory || snap.FreezeMS <= 0 || snap.StoredMB < 100 || snap.StoredMB > 200 || snap.Limits.DiskMB != 500 ||
		snap.Metadata["k"] != "v" || strings.Join(snap.EnvNames, ",") != "SECRET_NAME" {
		t.Fatalf("the snapshot: %+v", snap)
	}

	// A session from it, and two forks of the source: the same files, each its own.
	start = time.Now()
	a := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-snap-a", FromSnapshot: "e2e-base"})
	t.Logf("a session from the snapshot: %s", time.Since(start).Round(time.Millisecond))
	if a.Limits.DiskMB != 500 || a.Metadata["k"] != "v" {
		t.Fatalf("the session from the snapshot: %+v", a)
	}
	start = time.Now()
	f, err := d.client.Fork(ctx, "e2e-snap", "e2e-snap-b", "e2e-snap-c")
	if err != nil || len(f.Sessions) != 2 {
		t.Fatalf("fork: %v %+v", err, f)
	}
	t.Logf("a fork into 2 sessions: %s (frozen %.1f ms)", time.Since(start).Round(time.Millisecond), f.FreezeMS)
	for _, id := range []string{"e2e-snap-a", "e2e-snap-b", "e2e-snap-c"} {
		got := hashes(id, "\nimport os\nprint(os.environ.get('SECRET_NAME'), os.readlink('/sandbox/link'))")
		lines := strings.Split(strings.TrimSpace(got), "\n")
		var have, had map[string]string
		json.Unmarshal([]byte(lines[0]), &have)
		json.Unmarshal([]byte(want), &had)
		delete(have, "/sandbox/writes.log") // the streaming call's, part way or whole
		if len(had) != 3 || !maps.Equal(have, had) || len(lines) != 2 || lines[1] != "value /etc/passwd" {
			t.Fatalf("%s holds %q, want %s", id, got, want)
		}
		// Its files are its own user's: it can change what the snapshot held.
		if r := d.exec(t, id, "open('/sandbox/dir/sub/small.txt', 'a').write(' from "+id+"')\nopen('/sandbox/dir/sub/small.txt').read()"); r.ResultText == nil || *r.ResultText != "'hello from "+id+"'" {
			t.Fatalf("%s changing a file of the snapshot: %+v", id, r)
		}
	}
	if r := d.exec(t, "e2e-snap", "open('/sandbox/dir/sub/small.txt').read()"); r.ResultText == nil || *r.ResultText != "'hello'" {
		t.Fatalf("a fork's write reached the source: %+v", r)
	}

	// Bad input and quotas.
	var ae *api.Error
	if _, err := d.client.CreateSnapshot(ctx, "e2e-snap", api.CreateSnapshotRequest{SnapshotID: "e2e-base"}); !errors.As(err, &ae) || ae.Status != 409 {
		t.Fatalf("a taken id: %v", err)
	}
	if _, err := d.client.CreateSnapshot(ctx, "e2e-snap", api.CreateSnapshotRequest{SnapshotID: "../x"}); !errors.As(err, &ae) || ae.Status != 422 {
		t.Fatalf("a bad id: %v", err)
	}
	if _, err := d.client.Snapshot(ctx, "nope"); !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("an unknown snapshot: %v", err)
	}
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "e2e-snap-x", FromSnapshot: "nope"}); !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("from an unknown snapshot: %v", err)
	}
	if _, err := d.client.Fork(ctx, "e2e-snap", "e2e-snap-a"); !errors.As(err, &ae) || ae.Status != 409 {
		t.Fatalf("a fork onto a running session: %v", err)
	}
	for i := range 2 {
		if _, err := d.client.CreateSnapshot(ctx, "e2e-snap-a", api.CreateSnapshotRequest{SnapshotID: fmt.Sprintf("e2e-more-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.client.CreateSnapshot(ctx, "e2e-snap-a", api.CreateSnapshotRequest{}); !errors.As(err, &ae) || ae.Status != 409 || !strings.Contains(ae.Detail, "--max-snapshots") {
		t.Fatalf("past --max-snapshots: %v", err)
	}

	// A restart: the snapshots are there and serve.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d = startDaemonAs(t, d.token, flags...)
	l, err := d.client.Snapshots(ctx)
	if err != nil || len(l.Snapshots) != 3 || l.Snapshots[0].SnapshotID != "e2e-base" {
		t.Fatalf("after a restart: %v %+v", err, l)
	}
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-snap-d", FromSnapshot: "e2e-base"})
	if r := d.exec(t, "e2e-snap-d", "open('/sandbox/dir/sub/small.txt').read()"); r.ResultText == nil || *r.ResultText != "'hello'" {
		t.Fatalf("a session from the snapshot after a restart: %+v", r)
	}
	if err := d.client.DeleteSnapshot(ctx, "e2e-base"); err != nil {
		t.Fatal(err)
	}
	if r := d.exec(t, "e2e-snap-d", "len(open('/sandbox/big.bin','rb').read())"); r.ResultText == nil || *r.ResultText != "104857600" {
		t.Fatalf("a session from a deleted snapshot: %+v", r)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	cleanupAll(t, stateDir)
}
