package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nodeDir holds the Node clients of the tests (playwright-core, the MCP SDK), pinned by its
// package-lock.json and installed by `make test` (scripts/install-node-deps.sh).
const nodeDir = "node"

// chromium is Debian's browser, which playwright-core drives (no browser download).
const chromium = "/usr/bin/chromium"

// artifactsDir is where tests leave what a person looks at afterwards (screenshots):
// $CODEBOX_E2E_ARTIFACTS, else a directory under the system's temporary one.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("CODEBOX_E2E_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "codebox-e2e-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runNode runs one of nodeDir's test scripts, which uses the npm package pkg, with node's
// own test runner and fails the test with its output when any of its tests fails. A
// missing prerequisite fails loudly.
func runNode(t *testing.T, script, pkg string, timeout time.Duration, env map[string]string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed (make deps installs it): %v", err)
	}
	for _, p := range []string{filepath.Join(nodeDir, "node_modules", pkg), filepath.Join(nodeDir, script)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%v (make test installs the Node clients: scripts/install-node-deps.sh)", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// One file: node runs its tests one after another (Debian 12's Node 18 has no
	// --test-concurrency).
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", script)
	cmd.Dir = nodeDir
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("node %s (%.1f s):\n%s", script, time.Since(start).Seconds(), out)
	if err != nil {
		t.Fatalf("node %s: %v", script, err)
	}
	// The spec reporter's summary: every test passed, and there were some.
	if !strings.Contains(string(out), "ℹ fail 0\n") || strings.Contains(string(out), "ℹ pass 0\n") ||
		!strings.Contains(string(out), "ℹ skipped 0\n") || !strings.Contains(string(out), "ℹ todo 0\n") {
		t.Fatalf("node %s: its summary is not all passed, none skipped", script)
	}
}

// TestConsole drives the web console in a real browser, Debian's chromium under
// playwright-core: streamed output, images, tracebacks, sandboxed HTML, interrupt, files,
// languages, release; and the seed's older API called from a page of another origin.
func TestConsole(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("chromium is not installed (make deps installs it): %v", err)
	}
	d := startDaemon(t, "--min-idle-workers", "1", "--environments", writeEnvironments(t, map[string]any{"name": "seeded-console",
		"image": env.image, "archive": env.archive, "min_idle": 0, "seed": map[string]string{"python": "import json as seeded_json"}}))
	art := artifactsDir(t)
	runNode(t, "console.test.mjs", "playwright-core", 5*time.Minute, map[string]string{
		"CODEBOX_URL":       d.url,
		"CODEBOX_TOKEN":     d.token,
		"CODEBOX_ARTIFACTS": art,
		"CODEBOX_SESSION":   "e2e-console-" + randomHex(4),
		"CHROMIUM":          chromium,
	})
	for _, shot := range []string{"console-first-load.png", "console.png"} {
		if fi, err := os.Stat(filepath.Join(art, shot)); err != nil || fi.Size() < 10_000 {
			t.Errorf("screenshot %s missing or too small: %v", shot, err)
		} else {
			t.Logf("screenshot: %s", filepath.Join(art, shot))
		}
	}
}
