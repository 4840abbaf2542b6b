package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/internal/pkgfixture"
)

// wheel builds a pure-Python wheel of one module whose VALUE is value.
func wheel(t *testing.T, dist, module, version, value string) []byte {
	t.Helper()
	return pkgfixture.Wheel(dist, module, version, value)
}

// packageIndex serves a PEP 503 simple index of one wheel on loopback.
func packageIndex(t *testing.T, dist string, whl []byte, file string) string {
	t.Helper()
	sum := sha256.Sum256(whl)
	mux := http.NewServeMux()
	mux.HandleFunc("/simple/{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<html><body><a href="/simple/%s/">%s</a></body></html>`, dist, dist)
	})
	mux.HandleFunc("/simple/"+dist+"/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<html><body><a href="/files/%s#sha256=%x">%s</a></body></html>`, file, sum, file)
	})
	mux.HandleFunc("/files/"+file, func(w http.ResponseWriter, r *http.Request) { w.Write(whl) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/simple/"
}

// makeImage runs `make image RECIPE=dir` as a user does, with PIP_INDEX_URL index, and
// returns its output (the environment entry) and its error output.
func makeImage(t *testing.T, recipe, index string) (string, string, error) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-s", "--no-print-directory", "-C", root, "image", "RECIPE="+recipe, "CACHE_DIR="+requireEnv(t, "CODEBOX_E2E_CACHE"))
	cmd.Env = append(os.Environ(), "PIP_INDEX_URL="+index)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	go func() { <-ctx.Done(); cmd.Process.Kill() }()
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// recipe writes a recipe directory named name with its files.
func recipe(t *testing.T, name string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f, body := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRecipe builds a tiny recipe with `make image RECIPE=dir` (its Python package from a
// package index the test serves), serves the environment entry it prints, and runs the
// package in a session of it; a package the index lacks, or an index that does not answer,
// fails the build naming them.
func TestRecipe(t *testing.T) {
	cache := requireEnv(t, "CODEBOX_E2E_CACHE")
	nonce := randomHex(6)
	index := packageIndex(t, "codebox-e2e-pkg", wheel(t, "codebox-e2e-pkg", "codebox_e2e_pkg", "1.0", nonce),
		"codebox_e2e_pkg-1.0-py3-none-any.whl")
	debian := "python3\npython3-ipython\npython3-pip\n"
	// The nonce makes the Python layer new on every run (the root filesystem stays cached).
	good := recipe(t, "e2e-tiny", map[string]string{"debian-packages": debian,
		"python-packages": "codebox-e2e-pkg\n# run " + nonce + "\n"})
	t.Cleanup(func() {
		for _, pattern := range []string{"layer-e2e-tiny-python-*.tar", "worker-e2e-tiny-*.oci.tar"} {
			matches, _ := filepath.Glob(filepath.Join(cache, pattern))
			for _, m := range matches {
				os.Remove(m)
			}
		}
	})
	out, errOut, err := makeImage(t, good, index)
	if err != nil {
		t.Fatalf("make image RECIPE=%s: %v\n%s", good, err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var entry map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &entry); err != nil || entry["name"] != "e2e-tiny" ||
		!strings.HasPrefix(entry["image"].(string), "codebox.local/worker:e2e-tiny-") {
		t.Fatalf("the entry make image printed: %q (%v)", out, err)
	}
	if _, err := os.Stat(entry["archive"].(string)); err != nil {
		t.Fatalf("the archive of the entry: %v", err)
	}

	d := startDaemon(t, "--environments", writeEnvironments(t, map[string]any{"name": entry["name"], "image": entry["image"],
		"archive": entry["archive"], "min_idle": 0, "seed": map[string]string{"python": "import codebox_e2e_pkg"}}))
	s := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-recipe", Environment: "e2e-tiny"})
	if r := d.exec(t, s.SessionID, "codebox_e2e_pkg.VALUE"); r.ResultText == nil || *r.ResultText != "'"+nonce+"'" {
		t.Fatalf("the recipe's package in its environment: %+v", r)
	}

	// What the index does not have, and an index that does not answer: the build fails
	// naming them (the same name: its root filesystem is the cached one).
	bad := recipe(t, "e2e-tiny", map[string]string{"debian-packages": debian, "python-packages": "codebox-e2e-absent\n"})
	if _, errOut, err := makeImage(t, bad, index); err == nil || !strings.Contains(errOut, "python-packages: codebox-e2e-absent: pip could not install it") {
		t.Fatalf("a package the index lacks: %v\n%s", err, errOut)
	}
	closed := fmt.Sprintf("http://127.0.0.1:%d/simple/", freePort(t))
	unanswered := recipe(t, "e2e-tiny", map[string]string{"debian-packages": debian,
		"python-packages": "codebox-e2e-pkg\n# unanswered " + nonce + "\n"})
	if _, errOut, err := makeImage(t, unanswered, closed); err == nil || !strings.Contains(errOut, "the package index "+closed+" does not answer, so codebox-e2e-pkg") {
		t.Fatalf("an index that does not answer: %v\n%s", err, errOut)
	}
}
