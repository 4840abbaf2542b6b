package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCLI drives the codebox command against a daemon.
func TestCLI(t *testing.T) {
	d := startDaemon(t)
	cli := filepath.Join(filepath.Dir(env.bin), "codebox")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(cli, append([]string{"--url", d.url}, args...)...)
		cmd.Env = append(os.Environ(), "AUTH_TOKEN="+d.token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	user := "e2e-cli-" + randomHex(3)
	if out, err := run("exec", "-u", user, "x = 6 * 7\nprint(x)"); err != nil || out != "42\n" {
		t.Fatalf("exec: %q %v", out, err)
	}
	if out, err := run("exec", "-u", user, "y"); err == nil || !strings.Contains(out, "NameError") {
		t.Fatalf("exec of failing code: %q %v", out, err)
	}
	// --stream prints as the code runs; the exit status says how it ended.
	if out, err := run("exec", "--stream", "-u", user, "import time\nprint('a', flush=True)\ntime.sleep(0.3)\nprint(x)"); err != nil || out != "a\n42\n" {
		t.Fatalf("exec --stream: %q %v", out, err)
	}
	out, err := run("exec", "--stream", "-u", user, "y")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "NameError") {
		t.Fatalf("exec --stream of failing code: %q %v", out, err)
	}
	if out, err := run("exec", "--stream", "--json", "-u", user, "print(1)"); err != nil ||
		!strings.Contains(out, `{"type":"stdout","text":"1\n"}`) || !strings.Contains(out, `"type":"done","status":"ok"`) {
		t.Fatalf("exec --stream --json: %q %v", out, err)
	}
	local := filepath.Join(t.TempDir(), "in.txt")
	os.WriteFile(local, []byte("from the cli\n"), 0o644)
	if out, err := run("files", "put", "-u", user, local, "/sandbox/in.txt"); err != nil || !strings.Contains(out, "/sandbox/in.txt") {
		t.Fatalf("files put: %q %v", out, err)
	}
	if out, err := run("files", "get", "-u", user, "/sandbox/in.txt"); err != nil || out != "from the cli\n" {
		t.Fatalf("files get: %q %v", out, err)
	}
	if out, err := run("files", "ls", "-u", user); err != nil || !strings.Contains(out, "in.txt") {
		t.Fatalf("files ls: %q %v", out, err)
	}
	if out, err := run("status"); err != nil || !strings.Contains(out, `"busy_workers": 1`) {
		t.Fatalf("status: %q %v", out, err)
	}
	if out, err := run("token"); err != nil || strings.TrimSpace(out) != d.token {
		t.Fatalf("token: %q %v", out, err)
	}
	if out, err := run("release", "-u", user); err != nil {
		t.Fatalf("release: %q %v", out, err)
	}
}

// TestCLISessions drives `codebox sessions` against a daemon.
func TestCLISessions(t *testing.T) {
	d := startDaemon(t, "--environments", writeEnvironments(t, map[string]any{"name": "seeded-cli", "image": env.image,
		"archive": env.archive, "min_idle": 0, "seed": map[string]string{"python": "import json as cli_seeded"}}))
	cli := filepath.Join(filepath.Dir(env.bin), "codebox")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(cli, append([]string{"--url", d.url}, args...)...)
		cmd.Env = append(os.Environ(), "AUTH_TOKEN="+d.token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("sessions", "create", "--id", "e2e-cli-s", "--memory-mb", "300", "--timeout", "10m", "-m", "team=cli", "-e", "GREETING=hi")
	if err != nil || !strings.Contains(out, `"session_id": "e2e-cli-s"`) || !strings.Contains(out, `"memory_mb": 300`) || !strings.Contains(out, `"access_token": "cbs_`) {
		t.Fatalf("sessions create: %q %v", out, err)
	}
	if out, err := run("exec", "-u", "e2e-cli-s", "import os; print(os.environ['GREETING'])"); err != nil || out != "hi\n" {
		t.Fatalf("exec in the session: %q %v", out, err)
	}
	run("sessions", "create", "--id", "e2e-cli-other")
	out, err = run("sessions", "ls", "-m", "team=cli")
	if err != nil || !strings.Contains(out, "e2e-cli-s") || strings.Contains(out, "e2e-cli-other") || !strings.Contains(out, "team=cli") {
		t.Fatalf("sessions ls -m: %q %v", out, err)
	}
	if out, err := run("sessions", "extend", "--timeout", "2h", "e2e-cli-s"); err != nil || !strings.Contains(out, `"expires_at"`) {
		t.Fatalf("sessions extend: %q %v", out, err)
	}
	if out, err := run("sessions", "get", "e2e-cli-s"); err != nil || !strings.Contains(out, `"usage"`) {
		t.Fatalf("sessions get: %q %v", out, err)
	}
	// Snapshots and forks.
	run("exec", "-u", "e2e-cli-s", "open('/sandbox/cli.txt', 'w').write('from the cli')")
	if out, err := run("snapshot", "create", "--id", "e2e-cli-snap", "e2e-cli-s"); err != nil || !strings.Contains(out, `"memory": false`) {
		t.Fatalf("snapshot create: %q %v", out, err)
	}
	if out, err := run("snapshot", "ls"); err != nil || !strings.Contains(out, "e2e-cli-snap") {
		t.Fatalf("snapshot ls: %q %v", out, err)
	}
	if out, err := run("fork", "e2e-cli-s", "e2e-cli-fork"); err != nil || !strings.Contains(out, `"e2e-cli-fork"`) {
		t.Fatalf("fork: %q %v", out, err)
	}
	if out, err := run("exec", "-u", "e2e-cli-fork", "print(open('/sandbox/cli.txt').read())"); err != nil || out != "from the cli\n" {
		t.Fatalf("the fork's file: %q %v", out, err)
	}
	run("sessions", "rm", "e2e-cli-fork")
	if out, err := run("snapshot", "rm", "e2e-cli-snap"); err != nil {
		t.Fatalf("snapshot rm: %q %v", out, err)
	}
	// Volumes.
	if out, err := run("volume", "create", "--size-mb", "32", "e2e-cli-vol"); err != nil || !strings.Contains(out, `"size_mb": 32`) {
		t.Fatalf("volume create: %q %v", out, err)
	}
	if out, err := run("sessions", "create", "--id", "e2e-cli-v", "--volume", "e2e-cli-vol:/sandbox/v"); err != nil {
		t.Fatalf("sessions create --volume: %q %v", out, err)
	}
	if out, err := run("volume", "ls"); err != nil || !strings.Contains(out, "e2e-cli-v:/sandbox/v:rw") {
		t.Fatalf("volume ls: %q %v", out, err)
	}
	run("sessions", "rm", "e2e-cli-v")
	if out, err := run("volume", "rm", "e2e-cli-vol"); err != nil {
		t.Fatalf("volume rm: %q %v", out, err)
	}
	if out, err := run("sessions", "rm", "e2e-cli-s"); err != nil {
		t.Fatalf("sessions rm: %q %v", out, err)
	}
	if out, err := run("sessions", "get", "e2e-cli-s"); err != nil || !strings.Contains(out, `"ended_reason": "released"`) {
		t.Fatalf("sessions get after rm: %q %v", out, err)
	}
	if out, err := run("sessions", "create", "--memory-mb", "999999"); err == nil || !strings.Contains(out, "limits.memory_mb") {
		t.Fatalf("a refused create: %q %v", out, err)
	}

	// Environments: listed, and a session made in one.
	out, err = run("environments")
	if err != nil || !regexp.MustCompile(`(?m)^default\s+python,javascript,typescript,bash\s.*\sno\s.*available$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^seeded-cli\s.*\syes\s.*available$`).MatchString(out) {
		t.Fatalf("environments: %q %v", out, err)
	}
	out, err = run("sessions", "create", "--id", "e2e-cli-env", "--environment", "seeded-cli")
	if err != nil || !strings.Contains(out, `"environment": "seeded-cli"`) {
		t.Fatalf("sessions create --environment: %q %v", out, err)
	}
	if out, err := run("exec", "-u", "e2e-cli-env", "print(cli_seeded.dumps([1]))"); err != nil || out != "[1]\n" {
		t.Fatalf("exec in the seeded session: %q %v", out, err)
	}
	if out, err := run("sessions", "create", "--environment", "nope"); err == nil || !strings.Contains(out, `unknown environment "nope" (known: default, seeded-cli)`) {
		t.Fatalf("an unknown environment: %q %v", out, err)
	}
}
