package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/containerd/containerd/v2/client"
)

// requireEnv is a variable make test-e2e sets; missing, the test fails (never skips).
func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the end-to-end tests with make test-e2e (scripts/test-images.sh makes it)", name)
	}
	return v
}

// testImageRef is the reference scripts/test-images.sh gives the archive at path
// (<cache>/e2e-NAME-HASH.oci.tar is codebox.local/e2e-NAME:HASH).
func testImageRef(t *testing.T, path string) string {
	t.Helper()
	base := strings.TrimSuffix(filepath.Base(path), ".oci.tar")
	i := strings.LastIndex(base, "-")
	if i < 0 {
		t.Fatalf("test image %s: no hash in its name", path)
	}
	return "codebox.local/" + base[:i] + ":" + base[i+1:]
}

// writeEnvironments writes an --environments file.
func writeEnvironments(t *testing.T, envs ...map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"environments": envs})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "environments.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func environmentsOf(t *testing.T, d *daemon) map[string]api.Environment {
	t.Helper()
	envs, err := d.client.Environments(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]api.Environment{}
	for _, e := range envs {
		out[e.Name] = e
	}
	return out
}

// containersOf lists the ids of the tests' worker containers of an environment.
func containersOf(t *testing.T, environment string) []string {
	t.Helper()
	c, err := client.New(env.containerd, client.WithDefaultNamespace(namespace))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs, err := c.Containers(context.Background(), fmt.Sprintf(`labels."io.codebox.environment"==%s`, environment))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ctr := range cs {
		if strings.HasPrefix(ctr.ID(), "w-") { // not a probe's
			ids = append(ids, ctr.ID())
		}
	}
	slices.Sort(ids)
	return ids
}

// TestEnvironments: environments of their own images and pools, seeded, in one daemon,
// with the images that cannot serve refused; across a restart.
func TestEnvironments(t *testing.T) {
	byo := requireEnv(t, "CODEBOX_E2E_BYO_ARCHIVE")
	noIPython := requireEnv(t, "CODEBOX_E2E_NOIPYTHON_ARCHIVE")
	noPython := requireEnv(t, "CODEBOX_E2E_NOPYTHON_ARCHIVE")
	file := writeEnvironments(t,
		// An image with nothing of codebox's: Debian, python3 and IPython.
		map[string]any{"name": "byo", "image": testImageRef(t, byo), "archive": byo, "min_idle": 1, "max_total": 3},
		map[string]any{"name": "seeded", "image": env.image, "archive": env.archive, "min_idle": 1,
			"limits": map[string]any{"memory_mb": 768}, "env": map[string]string{"FROM_ENV": "seeded"},
			"seed": map[string]string{"python": "import pandas as pd, numpy as np\nimport matplotlib.pyplot as plt"}},
		map[string]any{"name": "noipython", "image": testImageRef(t, noIPython), "archive": noIPython, "min_idle": 0},
		map[string]any{"name": "nopython", "image": testImageRef(t, noPython), "archive": noPython, "min_idle": 0},
		map[string]any{"name": "badseed", "image": env.image, "archive": env.archive, "min_idle": 1,
			"seed": map[string]string{"python": "import codebox_no_such_module"}},
	)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	flags := []string{"--environments", file, "--min-idle-workers", "1", "--max-total-workers", "8", "--metrics-listen", metrics}
	// The first daemon leaves its workers for the second; should the test end before that
	// one ran (and destroyed them on its stop), they go after the daemons' own clean-up.
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	d := startDaemon(t, append(flags, "--destroy-on-stop=false", "--state-dir", stateDir)...)
	ctx := context.Background()

	// Refused at start, naming what is missing; the seed that raises, at its first worker.
	eventually(t, 2*time.Minute, "the pools to settle", func() bool {
		envs := environmentsOf(t, d)
		return envs["byo"].Pool.Idle == 1 && envs["seeded"].Pool.Idle == 1 && !envs["badseed"].Available
	})
	envs := environmentsOf(t, d)
	for name, want := range map[string]string{
		"noipython": "its image cannot run the agent: IPython does not import with its python3",
		"nopython":  "its image cannot run the agent: no python3 on its PATH",
		"badseed":   "its python seed raised ModuleNotFoundError",
	} {
		if e := envs[name]; e.Available || !strings.Contains(e.UnavailableReason, want) {
			t.Errorf("%s: %+v, want unavailable: %s", name, e, want)
		}
		_, err := d.client.CreateSession(ctx, api.CreateSessionRequest{Environment: name})
		if statusOf(err) != 503 || !strings.Contains(err.Error(), want) {
			t.Errorf("a session of %s: %v, want a 503 saying %q", name, err, want)
		}
	}
	for _, line := range []string{`environment=noipython`, `environment=nopython`} {
		if !strings.Contains(grepLines(d.logs.String(), "environment unavailable"), line) {
			t.Errorf("no log line says %s is unavailable:\n%s", line, grepLines(d.logs.String(), "environment"))
		}
	}
	if e := envs["byo"]; !e.Available || !slices.Equal(e.Languages, []string{"python", "bash"}) || e.Seed {
		t.Errorf("byo: %+v, want available, python and bash (no node in it)", e)
	}
	if e := envs["seeded"]; !e.Available || len(e.Languages) != 4 || !e.Seed || e.Limits.MemoryMB != 768 {
		t.Errorf("seeded: %+v", e)
	}

	// Bring your own image: the agent runs in it from codeboxd's read-only mount.
	s := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-byo", Environment: "byo"})
	r := d.exec(t, s.SessionID, "import os, sys, IPython\n"+
		"(sys.version_info[:2] >= (3, 9), sorted(os.listdir('/opt/codebox')), os.access('/opt/codebox/agent', os.W_OK), open('/etc/os-release').read().count('trixie') > 0, os.getcwd())")
	if r.ResultText == nil || *r.ResultText != "(True, ['agent'], False, True, '/sandbox')" {
		t.Fatalf("in the bring-your-own image: %+v", r)
	}
	if r := d.exec(t, s.SessionID, "open('/sandbox/kept.txt', 'w').write('byo'); x = 41"); r.Error != nil {
		t.Fatalf("%+v", r.Error)
	}
	_, err := d.client.Run(ctx, s.SessionID, api.ExecuteRequest{Code: "1", Language: "javascript"})
	if statusOf(err) != 400 || !strings.Contains(err.Error(), `environment "byo" does not run javascript`) {
		t.Fatalf("javascript in byo: %v", err)
	}
	if r, err := d.client.Run(ctx, s.SessionID, api.ExecuteRequest{Code: "echo $((6 * 7))", Language: "bash"}); err != nil || r.Stdout != "42\n" {
		t.Fatalf("bash in byo: %+v %v", r, err)
	}

	// Seeded: the first cell finds pandas imported, and the environment's variables.
	seeded := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-seeded", Environment: "seeded"})
	if seeded.Limits.MemoryMB != 768 {
		t.Fatalf("seeded's default limits: %+v", seeded.Limits)
	}
	r = d.exec(t, seeded.SessionID, "import os\n(float(pd.DataFrame({'a': [1, 2, 3]}).describe().loc['mean', 'a']), os.environ['FROM_ENV'])")
	if r.ResultText == nil || *r.ResultText != "(2.0, 'seeded')" || r.ExecutionCount != 1 {
		t.Fatalf("the first cell of a seeded session: %+v", r)
	}

	// Metrics per environment.
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`codebox_environment_available{environment="nopython"} 0`,
		`codebox_environment_available{environment="byo"} 1`, `codebox_environment_workers{environment="byo",state="busy"} 1`,
		`codebox_environment_target_idle{environment="seeded"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A restart: the idle workers rejoin their own pools, the sessions keep their state.
	eventually(t, time.Minute, "byo's pool to refill", func() bool { return environmentsOf(t, d)["byo"].Pool.Idle == 1 })
	before := containersOf(t, "byo")
	d.stop()
	d2 := startDaemonAs(t, d.token, append(flags, "--state-dir", stateDir)...)
	envs = environmentsOf(t, d2)
	if p := envs["byo"].Pool; p.Idle != 1 || p.Busy != 1 {
		t.Fatalf("byo after the restart: %+v, want its idle and its busy worker adopted", p)
	}
	if after := containersOf(t, "byo"); !slices.Equal(before, after) {
		t.Fatalf("byo's containers %v before the restart, %v after: want the same, adopted", before, after)
	}
	if r := d2.exec(t, "e2e-byo", "x + 1"); r.ResultText == nil || *r.ResultText != "42" {
		t.Fatalf("the byo session after the restart: %+v", r)
	}
	if r := d2.exec(t, "e2e-seeded", "type(pd).__name__"); r.ResultText == nil || *r.ResultText != "'module'" {
		t.Fatalf("the seeded session after the restart: %+v", r)
	}
	if s, err := d2.client.Session(ctx, "e2e-byo"); err != nil || s.Environment != "byo" {
		t.Fatalf("the byo session's environment after the restart: %+v %v", s, err)
	}
}

// TestEnvironmentWithoutImage: an environment whose image is neither in containerd nor
// importable stops codeboxd at start, with a message naming the environment.
func TestEnvironmentWithoutImage(t *testing.T) {
	file := writeEnvironments(t, map[string]any{"name": "ghost", "image": "codebox.local/e2e-ghost:1",
		"archive": filepath.Join(t.TempDir(), "absent.oci.tar")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.bin, "--environments", file, "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--state-dir", t.TempDir(), "--containerd-address", env.containerd, "--containerd-namespace", namespace,
		"--worker-bridge", bridge, "--worker-subnet", subnet, "--worker-image", env.image, "--worker-image-archive", env.archive,
		"--metrics-listen", "")
	cmd.Env = append(os.Environ(), "AUTH_TOKEN="+randomHex(16))
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), `environment "ghost"`) || !strings.Contains(string(out), "absent.oci.tar") {
		t.Fatalf("codeboxd with an environment whose image cannot be had: %v\n%s", err, out)
	}
}
