package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debianPython is the host's Python from Debian, which the Python client's users have.
const debianPython = "/usr/bin/python3"

// TestPythonClient installs clients/python with pip into a fresh virtual environment
// (offline: its build needs only Debian's setuptools) and runs its live tests against a
// daemon of at most two workers.
func TestPythonClient(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Fatalf("Debian's python3 is not installed (make deps installs it): %v", err)
	}
	src, err := filepath.Abs("../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	venv := filepath.Join(tmp, "venv")
	// pip builds in the directory it installs from: a copy keeps the tree clean.
	pkg := filepath.Join(tmp, "src")
	if err := os.CopyFS(pkg, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "PIP_NO_CACHE_DIR=1", "PIP_DISABLE_PIP_VERSION_CHECK=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(debianPython, "-m", "venv", "--system-site-packages", venv)
	py := filepath.Join(venv, "bin", "python")
	run(py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps", pkg)
	// The tests import the installed package, not the source tree.
	if where := strings.TrimSpace(run(py, "-c", "import codebox; print(codebox.__file__)")); !strings.HasPrefix(where, venv) {
		t.Fatalf("codebox imported from %s, not the virtual environment", where)
	}

	d := startDaemon(t, "--min-idle-workers", "1", "--max-total-workers", "2")
	cmd := exec.Command(py, "-m", "unittest", "-v", "test_live")
	cmd.Dir = filepath.Join(src, "tests")
	cmd.Env = append(os.Environ(), "CODEBOX_URL="+d.url, "CODEBOX_TOKEN="+d.token, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("python -m unittest test_live:\n%s", out)
	if err != nil {
		t.Fatalf("the Python client's live tests failed: %v", err)
	}
	if s := string(out); !strings.Contains(s, "\nOK") || strings.Contains(s, "skipped") {
		t.Fatalf("the live tests did not all pass")
	}
}
