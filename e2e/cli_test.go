package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
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
