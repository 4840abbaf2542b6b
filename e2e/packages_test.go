package e2e

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/internal/pkgfixture"
)

// packageHost is a PEP 503 index and an npm registry in a network namespace of the test's,
// serving packages the test built, counting what it was asked.
type packageHost struct {
	url   string // http://<address>
	mu    sync.Mutex
	asked map[string]int
}

func (p *packageHost) count(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.asked[path]
}

// startPackageHost serves, at 198.18.N.2:80: /simple/<project>/ and /files/ for cbxdemo 1.0
// and 2.0, cbxbad (whose file is not what its page's hash says) and cbxother; /npm/<name>
// and /tarballs/ for cbx-leftpad 1.0.0.
func startPackageHost(t *testing.T, n int) *packageHost {
	t.Helper()
	host, addr := net.IPv4(198, 18, byte(n), 1), net.IPv4(198, 18, byte(n), 2)
	netnsHost(t, fmt.Sprintf("cbxt-pkg-%d", n), fmt.Sprintf("cbxtp%d", n), host, addr)
	p := &packageHost{url: "http://" + addr.String(), asked: map[string]int{}}
	files := map[string][]byte{}
	pages := map[string]string{}
	for _, project := range []string{"cbxdemo", "cbxbad", "cbxother"} {
		var page strings.Builder
		versions := []string{"1.0"}
		if project == "cbxdemo" {
			versions = append(versions, "2.0")
		}
		for _, v := range versions {
			whl := wheel(t, project, project, v, v)
			file := fmt.Sprintf("%s-%s-py3-none-any.whl", project, v)
			sum := sha256.Sum256(whl)
			if project == "cbxbad" {
				whl = append(whl, "tampered"...)
			}
			files["/files/"+file] = whl
			fmt.Fprintf(&page, "<a href=\"/files/%s#sha256=%s\">%s</a><br/>\n", file, hex.EncodeToString(sum[:]), file)
		}
		pages["/simple/"+project+"/"] = "<!DOCTYPE html><html><body>\n" + page.String() + "</body></html>\n"
	}
	tgz := pkgfixture.NPMTarball("cbx-leftpad", "1.0.0")
	files["/tarballs/cbx-leftpad-1.0.0.tgz"] = tgz
	s512, s1 := sha512.Sum512(tgz), sha1.Sum(tgz)
	pages["/npm/cbx-leftpad"] = fmt.Sprintf(`{"name": "cbx-leftpad", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": {
"name": "cbx-leftpad", "version": "1.0.0", "main": "index.js",
"dist": {"tarball": "%s/tarballs/cbx-leftpad-1.0.0.tgz", "integrity": "sha512-%s", "shasum": "%s"}}}}`,
		p.url, base64.StdEncoding.EncodeToString(s512[:]), hex.EncodeToString(s1[:]))

	var l net.Listener
	inNetNS(t, fmt.Sprintf("cbxt-pkg-%d", n), func() error {
		var err error
		l, err = net.Listen("tcp4", net.JoinHostPort(addr.String(), "80"))
		return err
	})
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.asked[r.URL.Path]++
		p.mu.Unlock()
		if body, ok := pages[r.URL.Path]; ok {
			if strings.HasPrefix(r.URL.Path, "/npm/") {
				w.Header().Set("Content-Type", "application/json")
			}
			w.Write([]byte(body))
			return
		}
		if b, ok := files[r.URL.Path]; ok {
			w.Write(b)
			return
		}
		http.NotFound(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p
}

func denied(r *api.ExecuteResponse, reason, name string) bool {
	for _, e := range r.NetworkDenials {
		if e.Reason == reason && (name == "" || e.Name == name) {
			return true
		}
	}
	return false
}

// TestPackages: workers install from codeboxd's package cache, never the index itself;
// installs land on the session's disk and import at once, survive a kernel's death and a
// codeboxd restart; a second session's install comes from the cache; a tampered file, a
// package off the allowlist and a session without the preset are refused, saying why.
func TestPackages(t *testing.T) {
	up := startPackageHost(t, 40)
	allow := filepath.Join(t.TempDir(), "allow")
	os.WriteFile(allow, []byte("pypi cbxdemo\npypi cbxbad\nnpm cbx-leftpad ^1\n"), 0o600)
	stateDir := t.TempDir()
	t.Cleanup(func() { cleanupAll(t, stateDir) })
	flags := []string{"--pypi-upstream", up.url + "/simple/", "--npm-upstream", up.url + "/npm/", "--package-allowlist", allow,
		"--packages-default=false", "--destroy-on-stop=false", "--state-dir", stateDir, "--min-idle-workers", "1"}
	d := startDaemon(t, flags...)
	ctx := context.Background()
	long := 120.0
	run := func(id, code string) *api.ExecuteResponse {
		t.Helper()
		r, err := d.client.Run(ctx, id, api.ExecuteRequest{Code: code, Timeout: &long})
		if err != nil {
			t.Fatalf("%s: %v", code, err)
		}
		return r
	}
	text := func(r *api.ExecuteResponse) string {
		if r.ResultText != nil {
			return *r.ResultText
		}
		return ""
	}

	s := createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-pkg", Network: &api.NetworkPolicy{Presets: []string{"packages"}}})
	if strings.Join(s.Network.Presets, ",") != "packages" {
		t.Fatalf("the session's presets: %+v", s.Network)
	}
	// The index's host is not reachable from the worker: the cache is the only way.
	if r := run("e2e-pkg", reachPy+fmt.Sprintf("reach(%q, 80)", strings.TrimPrefix(up.url, "http://"))); !strings.Contains(text(r), "BLOCKED") {
		t.Fatalf("the worker reached the index's host: %+v", r)
	}
	start := time.Now()
	r := run("e2e-pkg", "%pip install cbxdemo==1.0")
	t.Logf("pip install from the upstream through the cache: %s", time.Since(start).Round(time.Millisecond))
	if r.Error != nil || !strings.Contains(r.Stdout, "Successfully installed cbxdemo-1.0") {
		t.Fatalf("%%pip install: %s %+v", r.Stdout, r.Error)
	}
	if r := run("e2e-pkg", "import cbxdemo\ncbxdemo.VALUE"); text(r) != "'1.0'" {
		t.Fatalf("import in the same kernel: %+v", r)
	}
	sub := "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import cbxdemo; print(cbxdemo.VALUE)'], capture_output=True, text=True).stdout.strip())"
	if r := run("e2e-pkg", sub); strings.TrimSpace(r.Stdout) != "1.0" {
		t.Fatalf("import in a process: %+v", r)
	}
	if r := run("e2e-pkg", "%pip install --upgrade cbxdemo"); !strings.Contains(r.Stdout, "Successfully installed cbxdemo-2.0") {
		t.Fatalf("%%pip upgrade: %s", r.Stdout)
	}
	if r := run("e2e-pkg", sub+"\nimport importlib.metadata\nprint(importlib.metadata.version('cbxdemo'))"); strings.Fields(r.Stdout)[0] != "2.0" || strings.Fields(r.Stdout)[1] != "2.0" {
		t.Fatalf("after the upgrade: %q", r.Stdout)
	}
	if r := run("e2e-pkg", "open('/sandbox/.local/lib/python3.13/site-packages/cbxdemo/__init__.py').read()"); !strings.Contains(text(r), "2.0") {
		t.Fatalf("the install is not on the session's disk: %+v", r)
	}
	// npm, in /sandbox, required from a JavaScript cell.
	r, err := d.client.Run(ctx, "e2e-pkg", api.ExecuteRequest{Code: "cd /sandbox && npm install cbx-leftpad 2>&1 | tail -3", Language: "bash", Timeout: &long})
	if err != nil || r.Error != nil || !strings.Contains(r.Stdout, "added 1 package") {
		t.Fatalf("npm install: %v %+v %q", err, r, r.Stdout)
	}
	if r, err := d.client.Run(ctx, "e2e-pkg", api.ExecuteRequest{Code: "require('cbx-leftpad')('x', 3)", Language: "javascript"}); err != nil || text(r) != "'**x'" {
		t.Fatalf("require from JavaScript: %v %+v", err, r)
	}

	// The kernel dies: the installs are on the disk.
	if _, err := d.client.Execute(ctx, "e2e-pkg", "import os\nos._exit(1)", 0); err == nil {
		t.Fatal("os._exit answered")
	}
	if r := run("e2e-pkg", "import cbxdemo\ncbxdemo.VALUE"); text(r) != "'2.0'" {
		t.Fatalf("after the kernel's death: %+v", r)
	}
	// codeboxd restarts: the session, its disk and its preset come back.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d = startDaemonAs(t, d.token, flags...)
	if r := run("e2e-pkg", "import cbxdemo\ncbxdemo.VALUE"); text(r) != "'2.0'" {
		t.Fatalf("after a codeboxd restart: %+v", r)
	}
	if r, err := d.client.Run(ctx, "e2e-pkg", api.ExecuteRequest{Code: "require('cbx-leftpad')('y', 2)", Language: "javascript"}); err != nil || text(r) != "'*y'" {
		t.Fatalf("require after a restart: %v %+v", err, r)
	}

	// A second session installs from the cache: the index is asked for the page, never the file.
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-pkg-2", Network: &api.NetworkPolicy{Presets: []string{"packages"}}})
	before := up.count("/files/cbxdemo-2.0-py3-none-any.whl")
	start = time.Now()
	if r := run("e2e-pkg-2", "%pip install cbxdemo==2.0"); !strings.Contains(r.Stdout, "Successfully installed cbxdemo-2.0") {
		t.Fatalf("the second session's install: %s", r.Stdout)
	}
	t.Logf("pip install from the cache: %s", time.Since(start).Round(time.Millisecond))
	if n := up.count("/files/cbxdemo-2.0-py3-none-any.whl"); n != before || n != 1 {
		t.Fatalf("the upstream was asked for the file %d times (before the second install: %d)", n, before)
	}
	// pip from a shell escape and from a process of the session's, the same way.
	if r := run("e2e-pkg-2", "!pip install cbxdemo==1.0"); !strings.Contains(r.Stdout, "Successfully installed cbxdemo-1.0") {
		t.Fatalf("!pip install: %s", r.Stdout)
	}
	if r := run("e2e-pkg-2", "import subprocess, sys\nprint(subprocess.run([sys.executable, '-m', 'pip', 'install', 'cbxdemo==2.0'], capture_output=True, text=True).stdout)"); !strings.Contains(r.Stdout, "Successfully installed cbxdemo-2.0") {
		t.Fatalf("pip in a process: %s", r.Stdout)
	}

	// Refusals, each with its reason in the call's answer.
	if r := run("e2e-pkg-2", "%pip install cbxbad"); strings.Contains(r.Stdout, "Successfully") || !denied(r, "hash_mismatch", "cbxbad") {
		t.Fatalf("a tampered file: %q %+v", r.Stdout, r.NetworkDenials)
	}
	if r := run("e2e-pkg-2", "%pip install cbxother"); !strings.Contains(r.Stdout, "cbxother") || !denied(r, "package_not_allowed", "cbxother") {
		t.Fatalf("a package off the allowlist: %q %+v", r.Stdout, r.NetworkDenials)
	}
	if n := up.count("/simple/cbxother/"); n != 0 {
		t.Fatalf("the upstream was asked for a package off the allowlist")
	}
	createSession(t, d, api.CreateSessionRequest{SessionID: "e2e-pkg-off"})
	if r := run("e2e-pkg-off", "%pip install cbxdemo"); strings.Contains(r.Stdout, "Successfully") || !denied(r, "packages_not_enabled", "") {
		t.Fatalf("a session without the preset: %q %+v", r.Stdout, r.NetworkDenials)
	}
	// The tampered file was not kept: the cache holds the three good files alone.
	kept, _ := filepath.Glob(filepath.Join(stateDir, "package-cache", "*"))
	if len(kept) != 4 { // cbxdemo 1.0 and 2.0, cbx-leftpad, and tmp/
		t.Fatalf("the cache holds %v", kept)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	cleanupAll(t, stateDir) // before the daemons' own checks of what they left
}
