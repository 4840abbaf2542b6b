package pkgcache

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"

	xhtml "golang.org/x/net/html"
)

// The PyPI side: GET /pypi/simple/<project>/ is the upstream's PEP 503 page for the project,
// read and written again with only the files that carry a sha256 (and that the allowlist
// lets through), each pointing at /pypi/files/<sha256>/<filename> here; GET of that serves
// the file from the store or fetches it, checked, from where the page said.

var (
	pypiName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,198}[a-z0-9])?$`)
	sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)
	runs     = regexp.MustCompile(`[-_.]+`)
)

// normalizePyPI is PEP 503's normal form of a project name.
func normalizePyPI(name string) string {
	return runs.ReplaceAllString(strings.ToLower(name), "-")
}

func (c *Cache) servePyPI(w http.ResponseWriter, r *http.Request) *Refusal {
	rest := strings.TrimPrefix(r.URL.Path, "/pypi/")
	switch {
	case strings.HasPrefix(rest, "simple/"):
		name := normalizePyPI(strings.Trim(strings.TrimPrefix(rest, "simple/"), "/"))
		if name == "" {
			http.Error(w, "the package cache does not list every project: ask for one, /pypi/simple/<project>/", http.StatusNotFound)
			return nil
		}
		if !pypiName.MatchString(name) {
			return &Refusal{Reason: ReasonNotFound, Detail: fmt.Sprintf("%q is not a project name", echo(name))}
		}
		return c.pypiPage(w, r, name)
	case strings.HasPrefix(rest, "files/"):
		h, filename, _ := strings.Cut(strings.TrimPrefix(rest, "files/"), "/")
		if !sha256Re.MatchString(h) || filename == "" {
			return &Refusal{Reason: ReasonNotFound, Detail: "not a file of this cache"}
		}
		return c.serveFile(w, r, "pypi", "sha256", h, "application/octet-stream")
	}
	http.Error(w, "not a path of this package cache: /pypi/simple/<project>/", http.StatusNotFound)
	return nil
}

func (c *Cache) pypiPage(w http.ResponseWriter, r *http.Request, name string) *Refusal {
	if c.cfg.Allowlist != nil && !c.cfg.Allowlist.allowsName("pypi", name) {
		return &Refusal{Reason: ReasonNotAllowed, Package: name, Detail: fmt.Sprintf("%s is not in this host's package allowlist", name)}
	}
	base := c.cfg.BaseURL
	key := "pypi\x00" + name
	if p, ok := c.cachedIndex(key); ok {
		servePage(w, r, p)
		return nil
	}
	src := c.cfg.PyPI.ResolveReference(&url.URL{Path: name + "/"})
	body, _, err := c.getIndex(r.Context(), src.String(), "text/html")
	if errors.Is(err, errNotFound) {
		return &Refusal{Reason: ReasonNotFound, Package: name, Detail: fmt.Sprintf("no project %s at the upstream index", name)}
	}
	if err != nil {
		return c.upstreamFailed(name, "the index page", err)
	}
	done, err := c.rewriting(r.Context())
	if err != nil {
		return &Refusal{Reason: ReasonUpstream, Package: name, Detail: err.Error()}
	}
	defer done()
	links := parseLinks(body, src)
	files := map[string]origin{}
	var out bytes.Buffer
	fmt.Fprintf(&out, "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Links for %s</title></head><body><h1>Links for %s</h1>\n",
		html.EscapeString(name), html.EscapeString(name))
	for _, l := range links {
		o := origin{url: l.url, eco: "pypi", pkg: name, filename: l.filename}
		if c.cfg.Allowlist != nil && !c.cfg.Allowlist.allowsFile(o) {
			continue
		}
		files[l.sha256] = o
		fmt.Fprintf(&out, "<a href=\"%s/pypi/files/%s/%s#sha256=%s\"", base, l.sha256, url.PathEscape(l.filename), l.sha256)
		if l.requiresPython != "" {
			fmt.Fprintf(&out, " data-requires-python=\"%s\"", html.EscapeString(l.requiresPython))
		}
		if l.yanked != nil {
			fmt.Fprintf(&out, " data-yanked=\"%s\"", html.EscapeString(*l.yanked))
		}
		fmt.Fprintf(&out, ">%s</a><br/>\n", html.EscapeString(l.filename))
	}
	out.WriteString("</body></html>\n")
	done() // the place is given back before the page goes out to a reader who may be slow
	c.learn(files)
	p := page{body: out.Bytes(), contentType: "text/html; charset=utf-8"}
	c.keepIndex(key, p)
	servePage(w, r, p)
	return nil
}

func servePage(w http.ResponseWriter, r *http.Request, p page) {
	w.Header().Set("Content-Type", p.contentType)
	w.Header().Set("Content-Length", fmt.Sprint(len(p.body)))
	if r.Method != http.MethodHead {
		w.Write(p.body)
	}
}

// link is a file a PEP 503 page names.
type link struct {
	url, filename, sha256 string
	requiresPython        string
	yanked                *string
}

// parseLinks reads a PEP 503 page's anchors: those whose URL has a sha256 fragment, with
// an http(s) URL and a file name that is a wheel or an sdist.
func parseLinks(body []byte, page *url.URL) []link {
	var out []link
	z := xhtml.NewTokenizer(bytes.NewReader(body))
	var cur *link
	for {
		switch z.Next() {
		case xhtml.ErrorToken:
			return out
		case xhtml.StartTagToken:
			t := z.Token()
			if t.Data != "a" {
				continue
			}
			l := link{}
			ok := false
			for _, a := range t.Attr {
				switch a.Key {
				case "href":
					u, err := page.Parse(a.Val)
					if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
						continue
					}
					frag := u.Fragment
					u.Fragment = ""
					l.url, ok = u.String(), true
					if h, found := strings.CutPrefix(frag, "sha256="); found && sha256Re.MatchString(strings.ToLower(h)) {
						l.sha256 = strings.ToLower(h)
					}
					l.filename, _ = url.PathUnescape(path.Base(u.Path))
				case "data-requires-python":
					l.requiresPython = a.Val
				case "data-yanked":
					v := a.Val
					l.yanked = &v
				}
			}
			cur = nil
			if ok {
				cur = &l
			}
		case xhtml.EndTagToken:
			if t := z.Token(); t.Data == "a" && cur != nil {
				if cur.sha256 != "" && packageFile(cur.filename) {
					out = append(out, *cur)
				}
				cur = nil
			}
		}
	}
}

// packageFile reports whether name is a wheel or sdist file name pip installs.
func packageFile(name string) bool {
	if name == "" || len(name) > 255 || strings.ContainsAny(name, "/\\\x00") {
		return false
	}
	for _, ext := range []string{".whl", ".tar.gz", ".zip", ".tar.bz2"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// pypiVersion is the version a wheel's or sdist's file name carries.
func pypiVersion(filename string) string {
	if strings.HasSuffix(filename, ".whl") {
		parts := strings.Split(strings.TrimSuffix(filename, ".whl"), "-")
		if len(parts) >= 5 {
			return parts[1]
		}
		return ""
	}
	for _, ext := range []string{".tar.gz", ".zip", ".tar.bz2"} {
		if base, ok := strings.CutSuffix(filename, ext); ok {
			if i := strings.LastIndex(base, "-"); i > 0 {
				return base[i+1:]
			}
		}
	}
	return ""
}

// echo quotes at most 100 bytes of what a caller sent.
func echo(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}
