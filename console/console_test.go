package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestAssets(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	resp, page := get(t, h, "/", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("/: %d %v", resp.StatusCode, resp.Header)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self';", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("page CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("page CSP allows unsafe sources: %q", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("no nosniff: %v", resp.Header)
	}
	// Every asset the page names is served, from this origin only, and the page has no
	// inline script or style (the CSP would refuse it).
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1) {
		if !strings.HasPrefix(m[1], "/console/") {
			t.Errorf("the page refers to %q, not one of its own assets", m[1])
			continue
		}
		if r, _ := get(t, h, m[1], nil); r.StatusCode != 200 {
			t.Errorf("%s: %d", m[1], r.StatusCode)
		}
	}
	if regexp.MustCompile(`<script>|<style|style="|\son[a-z]+="`).MatchString(page) {
		t.Errorf("the page has inline script or style")
	}

	for q, scripts := range map[string]string{"": "script-src 'sha256-", "?scripts=1": "script-src 'unsafe-inline'"} {
		resp, _ = get(t, h, "/console/frame.html"+q, nil)
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.HasPrefix(csp, "sandbox allow-scripts;") || strings.Contains(csp, "allow-same-origin") {
			t.Errorf("frame%s CSP %q: the frame must be sandboxed without allow-same-origin", q, csp)
		}
		if !strings.Contains(csp, scripts) || strings.Count(csp, "script-src") != 1 {
			t.Errorf("frame%s CSP %q: want %s", q, csp, scripts)
		}
	}

	resp, _ = get(t, h, "/console/console.js", nil)
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("console.js: no ETag or revalidation: %v", resp.Header)
	}
	if resp, _ = get(t, h, "/console/console.js", map[string]string{"If-None-Match": etag}); resp.StatusCode != 304 {
		t.Errorf("revalidation: %d, want 304", resp.StatusCode)
	}
	for _, p := range []string{"/console/", "/console/nope.js", "/console/../console.go", "/index.html"} {
		if resp, _ := get(t, h, p, nil); resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", p, resp.StatusCode)
		}
	}
}
