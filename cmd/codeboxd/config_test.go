package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codebox/codebox/api"
)

func noEnv(string) string { return "" }

func TestDefaultsMatchSpec(t *testing.T) {
	c, err := parseFlags(nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":3874" || c.MinIdleWorkers != 10 || c.MaxTotalWorkers != 50 || c.WorkerCPU != 1.5 ||
		c.WorkerRAMMB != 1536 || c.WorkerDiskMB != 500 || c.WorkerPids != 512 || c.ExecTimeout != 30*time.Second ||
		c.IdleTimeout != time.Hour || c.RecycleInterval != 5*time.Minute ||
		c.ContainerdAddress != "/run/containerd/containerd.sock" || c.StateDir != "/var/lib/codeboxd" || c.Namespace != "codebox" {
		t.Fatalf("defaults = %+v", c)
	}
}

func TestFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{"CODEBOX_MIN_IDLE_WORKERS": "3", "CODEBOX_WORKER_CPU": "0.5", "CODEBOX_MAX_TOTAL_WORKERS": "7"}
	c, err := parseFlags([]string{"--max-total-workers", "9", "--exec-timeout=5s"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	// A flag on the command line wins over the environment.
	if c.MinIdleWorkers != 3 || c.WorkerCPU != 0.5 || c.MaxTotalWorkers != 9 || c.ExecTimeout != 5*time.Second {
		t.Fatalf("config = %+v", c)
	}
}

func TestBadValuesNameTheFlag(t *testing.T) {
	cases := map[string][]string{
		"--min-idle-workers":   {"--min-idle-workers", "-1"},
		"--max-total-workers":  {"--max-total-workers", "0"},
		"must not exceed":      {"--min-idle-workers", "20", "--max-total-workers", "10"},
		"--worker-cpu":         {"--worker-cpu", "0"},
		"--worker-ram-mb":      {"--worker-ram-mb", "64"},
		"--worker-disk-mb":     {"--worker-disk-mb", "1"},
		"--worker-pids":        {"--worker-pids", "2"},
		"--exec-timeout":       {"--exec-timeout", "0s"},
		"--max-exec-timeout":   {"--exec-timeout", "10s", "--max-exec-timeout", "5s"},
		"--idle-timeout":       {"--idle-timeout", "-1s"},
		"--recycle-interval":   {"--recycle-interval", "0s"},
		"--state-dir":          {"--state-dir", "relative"},
		"--listen":             {"--listen", "nonsense"},
		"--worker-subnet":      {"--worker-subnet", "10.0.0.0/30"},
		"--log-level":          {"--log-level", "loud"},
		"--worker-bridge":      {"--worker-bridge", "Bad_Name"},
		"--max-file-mb":        {"--max-file-mb", "0"},
		"--file-timeout":       {"--file-timeout", "0s"},
		"--file-allowlist":     {"--file-allowlist", "10.0.0.0/99"},
		"unknown flag --bogus": {"--bogus"},
		"-worker-cpu":          {"--worker-cpu", "lots"},
	}
	envFile := func(body string) string {
		p := filepath.Join(t.TempDir(), "environments.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for want, body := range map[string]string{
		`--environments: environments file`:                                  `{"environments": [{"name": "x", "image": "i", "min_idel": 1}]}`,
		`--environments: environment "big": max_total 99`:                    `{"environments": [{"name": "big", "image": "i", "max_total": 99}]}`,
		`--environments: the environments' min_idle add up to 11, more than`: `{"environments": [{"name": "a", "image": "i", "min_idle": 10}, {"name": "b", "image": "i", "min_idle": 1}]}`,
	} {
		cases[want] = []string{"--environments", envFile(body), "--min-idle-workers", "0", "--max-total-workers", "10"}
	}
	for want, args := range cases {
		_, err := parseFlags(args, noEnv)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: err = %v, want one line containing %q", args, err, want)
		}
	}
	_, err := parseFlags(nil, func(k string) string {
		if k == "CODEBOX_WORKER_PIDS" {
			return "many"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "CODEBOX_WORKER_PIDS") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestTokenGeneratedOnceWithMode0600(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	log := slog.New(slog.DiscardHandler)
	t1, err := loadToken(dir, "", log)
	if err != nil || len(t1) != 64 {
		t.Fatalf("token %q, %v", t1, err)
	}
	st, err := os.Stat(filepath.Join(dir, api.TokenFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", st.Mode(), err)
	}
	if t2, _ := loadToken(dir, "", log); t2 != t1 {
		t.Fatalf("second load gave a new token")
	}
	env := " 0123456789abcdef0123456789abcdef "
	if t3, _ := loadToken(dir, env, log); t3 != strings.TrimSpace(env) {
		t.Fatalf("AUTH_TOKEN not preferred: %q", t3)
	}
}

// TestWeakTokensRefused: any non-empty token was accepted, the shipped placeholder too.
func TestWeakTokensRefused(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	for _, weak := range []string{"x", "from-env", "REPLACE-WITH-A-RANDOM-TOKEN", "changeme", strings.Repeat("a", 64),
		"0123456789abcdef0123456789abcde"} {
		if _, err := loadToken(dir, weak, log); err == nil || !strings.Contains(err.Error(), "AUTH_TOKEN refused") {
			t.Errorf("AUTH_TOKEN %q: %v", weak, err)
		}
	}
	os.WriteFile(filepath.Join(dir, api.TokenFile), []byte("changeme\n"), 0o600)
	if _, err := loadToken(dir, "", log); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("a weak token file: %v", err)
	}
	var logged strings.Builder
	good := "0123456789abcdef0123456789abcdef"
	os.WriteFile(filepath.Join(dir, api.TokenFile), []byte(good+"\n"), 0o644)
	os.Chmod(filepath.Join(dir, api.TokenFile), 0o644)
	if tok, err := loadToken(dir, "", slog.New(slog.NewTextHandler(&logged, nil))); err != nil || tok != good {
		t.Fatalf("a good token file: %q, %v", tok, err)
	}
	if !strings.Contains(logged.String(), "chmod 0600") {
		t.Errorf("no warning for a token file others may read: %q", logged.String())
	}
}

// TestProfilesOptInAndLoopbackOnly: pprof was on by default on the metrics listener, for
// any Host (a page that rebinds its own name to 127.0.0.1 could read heap profiles).
func TestProfilesOptInAndLoopbackOnly(t *testing.T) {
	reg := prometheus.NewRegistry()
	get := func(h http.Handler, host string) int {
		r := httptest.NewRequest("GET", "/debug/pprof/", nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if code := get(metricsHandler(reg, false), "127.0.0.1:9474"); code != http.StatusNotFound {
		t.Errorf("profiles without --pprof: %d", code)
	}
	on := metricsHandler(reg, true)
	for host, want := range map[string]int{"127.0.0.1:9474": 200, "localhost:9474": 200, "[::1]:9474": 200,
		"evil.example:9474": 403, "10.0.0.5:9474": 403, "127.0.0.1.evil.example": 403} {
		if code := get(on, host); code != want {
			t.Errorf("profiles for Host %s: %d, want %d", host, code, want)
		}
	}
}
