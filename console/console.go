// Package console owns codeboxd's web console: a page and its assets, embedded in the
// binary (the host may be offline), served with the headers that keep a tenant's output
// away from the page and its token.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// pagePolicy lets the console load only its own script and style, show images from data:
// and blob: URLs, talk only to its own origin (REST and websocket) and frame only its own
// frame page.
const pagePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; " +
	"connect-src 'self'; frame-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

// The frame of an HTML result. `sandbox allow-scripts` gives it an opaque origin even
// when opened on its own, so user HTML never reaches the console's origin; it may not
// fetch anything. By default only the frame's own script (by its hash) runs: a tenant's
// script could still navigate the frame and carry data out through the viewer's browser,
// so it runs only when the viewer asks (?scripts=1).
const (
	frameSandbox = "sandbox allow-scripts; default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; " +
		"font-src data:; media-src data: blob:; frame-ancestors 'self'; "
	frameScripts = frameSandbox + "script-src 'unsafe-inline' 'unsafe-eval'"
)

// frameScript finds the frame's own inline script, for its hash.
var frameScript = regexp.MustCompile(`(?s)<script>(.*?)</script>`)

type asset struct {
	body        []byte
	contentType string
	etag        string
	policy      string
	// scriptsPolicy, when set, replaces policy for ?scripts=1.
	scriptsPolicy string
}

// Handler serves the console: GET / is the page, GET /console/NAME its assets.
type Handler struct {
	assets map[string]asset // by URL path
}

// New loads the embedded assets.
func New() (*Handler, error) {
	h := &Handler{assets: map[string]asset{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		a := asset{body: body, contentType: mime.TypeByExtension(path.Ext(p)),
			etag: `"` + hex.EncodeToString(sum[:8]) + `"`, policy: pagePolicy}
		if a.contentType == "" {
			return fmt.Errorf("console: no content type for %s", p)
		}
		name := strings.TrimPrefix(p, "static/")
		switch name {
		case "index.html":
			h.assets["/"] = a
		case "frame.html":
			m := frameScript.FindSubmatch(body)
			if m == nil {
				return fmt.Errorf("console: frame.html has no inline script")
			}
			hash := sha256.Sum256(m[1])
			a.policy = frameSandbox + "script-src 'sha256-" + base64.StdEncoding.EncodeToString(hash[:]) + "'"
			a.scriptsPolicy = frameScripts
			h.assets["/console/"+name] = a
		default:
			h.assets["/console/"+name] = a
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if _, ok := h.assets["/"]; !ok {
		return nil, fmt.Errorf("console: no index.html embedded")
	}
	return h, nil
}

// Paths lists the URL paths the handler serves.
func (h *Handler) Paths() []string {
	ps := make([]string, 0, len(h.assets))
	for p := range h.assets {
		ps = append(ps, p)
	}
	return ps
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := h.assets[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	policy := a.policy
	if a.scriptsPolicy != "" && r.URL.Query().Get("scripts") == "1" {
		policy = a.scriptsPolicy
	}
	hd.Set("Content-Security-Policy", policy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	// A tenant's links in an HTML output must not make the viewer's browser resolve names.
	hd.Set("X-DNS-Prefetch-Control", "off")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	// Revalidated every time: an upgraded daemon's page shows at once, unchanged assets
	// cost a 304.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
