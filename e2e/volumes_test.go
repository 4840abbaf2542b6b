package e2e

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/codebox/codebox/api"
)

// TestVolumes: a named volume outlives its sessions and a restart; read-write in one session
// at a time, read-only in many; its files are the user's of whichever session has it; the
// file routes reach it; snapshots leave it out; bad input and quotas are refused.
func TestVolumes(t *testing.T) {
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	flags := []string{"--max-volumes", "2", "--destroy-on-stop=false", "--state-dir", stateDir, "--min-idle-workers", "1"}
	d := startDaemon(t, flags...)
	ctx := context.Background()
	status := func(err error) int {
		var ae *api.Error
		if errors.As(err, &ae) {
			return ae.Status
		}
		return 0
	}
	if _, err := d.client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "e2e-data", SizeMB: 64}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "e2e-data", SizeMB: 64}); status(err) != 409 {
		t.Fatalf("a taken name: %v", err)
	}
	if _, err := d.client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "../x", SizeMB: 64}); status(err) != 422 {
		t.Fatalf("a bad name: %v", err)
	}
	if _, err := d.client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "e2e-two", SizeMB: 32}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "e2e-three", SizeMB: 32}); status(err) != 409 || !strings.Contains(err.Error(), "--max-volumes") {
		t.Fatalf("past --max-volumes: %v", err)
	}
	for what, mounts := range map[string][]api.VolumeMount{
		"outside /sandbox": {{Name: "e2e-data", Path: "/etc"}},
		"/sandbox itself":  {{Name: "e2e-data", Path: "/sandbox"}},
		"one over another": {{Name: "e2e-data", Path: "/sandbox/a"}, {Name: "e2e-two", Path: "/sandbox/a/b"}},
		"a dot-dot":        {{Name: "e2e-data", Path: "/sandbox/../etc"}},
	} {
		if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{Volumes: mounts}); status(err) != 422 {
			t.Errorf("%s: %v", what, err)
		}
	}
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{Volumes: []api.VolumeMount{{Name: "nope", Path: "/sandbox/x"}}}); status(err) != 404 {
		t.Fatalf("an unknown volume: %v", err)
	}

	// Read-write in A: its files are A's user's; the file routes reach them.
	a := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-vol-a", Volumes: []api.VolumeMount{{Name: "e2e-data", Path: "/sandbox/data"}}})
	if len(a.Volumes) != 1 || a.Volumes[0].Path != "/sandbox/data" {
		t.Fatalf("the session's volumes: %+v", a.Volumes)
	}
	r := d.exec(t, "e2e-vol-a", "import os\nopen('/sandbox/data/kept.txt', 'w').write('on the volume')\nst = os.stat('/sandbox/data/kept.txt')\n(st.st_uid == os.getuid(), os.stat('/sandbox/data').st_uid == os.getuid())")
	if r.ResultText == nil || *r.ResultText != "(True, True)" {
		t.Fatalf("writing on the volume in A: %+v %+v", r, r.Error)
	}
	if _, err := d.client.PutFile(ctx, "e2e-vol-a", "/sandbox/data/put.txt", strings.NewReader("through the API")); err != nil {
		t.Fatalf("the file route onto the volume: %v", err)
	}
	if r := d.exec(t, "e2e-vol-a", "open('/sandbox/data/put.txt').read()"); r.ResultText == nil || *r.ResultText != "'through the API'" {
		t.Fatalf("the put file in the worker: %+v", r)
	}
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "e2e-vol-x", Volumes: []api.VolumeMount{{Name: "e2e-data", Path: "/sandbox/data", ReadOnly: true}}}); status(err) != 409 || !strings.Contains(err.Error(), "e2e-vol-a") {
		t.Fatalf("read-only while A has it read-write: %v", err)
	}
	if err := d.client.DeleteVolume(ctx, "e2e-data"); status(err) != 409 {
		t.Fatalf("delete in use: %v", err)
	}
	// Not in snapshots: a session from A's snapshot has an empty directory there.
	if _, err := d.client.CreateSnapshot(ctx, "e2e-vol-a", api.CreateSnapshotRequest{SnapshotID: "e2e-vol-snap"}); err != nil {
		t.Fatal(err)
	}
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-vol-s", FromSnapshot: "e2e-vol-snap"})
	if r := d.exec(t, "e2e-vol-s", "import os\nos.listdir('/sandbox/data')"); r.ResultText == nil || *r.ResultText != "[]" {
		t.Fatalf("the volume in A's snapshot: %+v", r)
	}
	if err := d.client.DeleteSession(ctx, "e2e-vol-a"); err != nil {
		t.Fatal(err)
	}

	// Read-only in B and C at once; writes refused, in the worker and through the API.
	for _, id := range []string{"e2e-vol-b", "e2e-vol-c"} {
		createSession(t, d, api.CreateSessionRequest{SessionID: id, Volumes: []api.VolumeMount{{Name: "e2e-data", Path: "/sandbox/ro", ReadOnly: true}}})
		r := d.exec(t, id, "import os\ntry:\n    open('/sandbox/ro/new.txt', 'w')\n    w = 'written'\nexcept OSError as e:\n    w = e.errno\n(open('/sandbox/ro/kept.txt').read(), w)")
		if r.ResultText == nil || *r.ResultText != "('on the volume', 30)" { // EROFS
			t.Fatalf("%s, read-only: %+v %+v", id, r, r.Error)
		}
	}
	if _, err := d.client.PutFile(ctx, "e2e-vol-b", "/sandbox/ro/x.txt", strings.NewReader("x")); status(err) != 409 {
		t.Fatalf("the file route onto a read-only volume: %v", err)
	}
	if v, err := d.client.Volume(ctx, "e2e-data"); err != nil || len(v.MountedBy) != 2 {
		t.Fatalf("the volume's sessions: %+v %v", v, err)
	}

	// A restart: the volume and its sessions' mounts are there.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d = startDaemonAs(t, d.token, flags...)
	if v, err := d.client.Volume(ctx, "e2e-data"); err != nil || len(v.MountedBy) != 2 {
		t.Fatalf("after a restart: %+v %v", v, err)
	}
	if r := d.exec(t, "e2e-vol-b", "open('/sandbox/ro/kept.txt').read()"); r.ResultText == nil || *r.ResultText != "'on the volume'" {
		t.Fatalf("B after a restart: %+v", r)
	}
	for _, id := range []string{"e2e-vol-b", "e2e-vol-c", "e2e-vol-s"} {
		d.client.DeleteSession(ctx, id)
	}
	// Read-write again, in a new session: what A wrote is there.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-vol-d", Volumes: []api.VolumeMount{{Name: "e2e-data", Path: "/sandbox/d"}}})
	if r := d.exec(t, "e2e-vol-d", "open('/sandbox/d/kept.txt', 'a').write(' and more')\nopen('/sandbox/d/kept.txt').read()"); r.ResultText == nil || *r.ResultText != "'on the volume and more'" {
		t.Fatalf("D read-write: %+v %+v", r, r.Error)
	}
	d.client.DeleteSession(ctx, "e2e-vol-d")
	if err := d.client.DeleteVolume(ctx, "e2e-data"); err != nil {
		t.Fatalf("delete once free: %v", err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	cleanupAll(t, stateDir)
}
