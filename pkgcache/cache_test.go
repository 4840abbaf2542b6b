package pkgcache

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/codebox/codebox/transfer"
)

// upstream is an index and a registry that count what they were asked.
type upstream struct {
	*httptest.Server
	mu     sync.Mutex
	asked  map[string]int
	files  map[string][]byte // path → bytes
	tamper bool              // serve other bytes than the index's hash
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{asked: map[string]int{}, files: map[string][]byte{}}
	wheel1, wheel2 := []byte("wheel one"), []byte("wheel two")
	tgz := []byte("npm tarball")
	u.files["/files/demo-1.0-py3-none-any.whl"] = wheel1
	u.files["/files/demo-2.0-py3-none-any.whl"] = wheel2
	u.files["/files/nohash-1.0.tar.gz"] = []byte("x")
	u.files["/tarballs/leftish-1.0.0.tgz"] = tgz
	sha := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	s512 := sha512.Sum512(tgz)
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.asked[r.URL.Path]++
		tamper := u.tamper
		u.mu.Unlock()
		switch r.URL.Path {
		case "/simple/demo/":
			fmt.Fprintf(w, `<html><body><a href="../../files/demo-1.0-py3-none-any.whl#sha256=%s">demo-1.0-py3-none-any.whl</a>
<a href="/files/demo-2.0-py3-none-any.whl#sha256=%s" data-requires-python="&gt;=3.8">demo-2.0-py3-none-any.whl</a>
<a href="/files/nohash-1.0.tar.gz">nohash-1.0.tar.gz</a>
<a href="javascript:alert(1)#sha256=%s">x.whl</a></body></html>`, sha(wheel1), sha(wheel2), sha(wheel1))
		case "/npm/leftish":
			fmt.Fprintf(w, `{"name":"leftish","dist-tags":{"latest":"1.0.0","old":"0.9.0"},"versions":{
"1.0.0":{"name":"leftish","version":"1.0.0","dist":{"tarball":"%s/tarballs/leftish-1.0.0.tgz","integrity":"sha512-%s"}},
"0.9.0":{"name":"leftish","version":"0.9.0","dist":{"tarball":"%s/tarballs/leftish-0.9.0.tgz","shasum":"abc"}}}}`,
				"http://"+r.Host, base64.StdEncoding.EncodeToString(s512[:]), "http://"+r.Host)
		default:
			b, ok := u.files[r.URL.Path]
			if !ok {
				http.NotFound(w, r)
				return
			}
			if tamper {
				b = append([]byte("evil "), b...)
			}
			w.Write(b)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) count(p string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.asked[p]
}

func newCache(t *testing.T, u *upstream, allow string, max int64) (*Cache, *httptest.Server, *[]Refusal) {
	t.Helper()
	pypi, _ := url.Parse(u.URL + "/simple/")
	npm, _ := url.Parse(u.URL + "/npm/")
	cfg := Config{PyPI: pypi, NPM: npm, Dir: t.TempDir(), MaxBytes: max, Dial: (&net.Dialer{}).DialContext, BaseURL: base}
	if allow != "" {
		a, err := ParseAllowlist(strings.NewReader(allow))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Allowlist = a
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []Refusal
	srv := httptest.NewServer(c.Handler(func(_ *http.Request, r Refusal) { mu.Lock(); refused = append(refused, r); mu.Unlock() }))
	t.Cleanup(srv.Close)
	served = srv.URL
	return c, srv, &refused
}

// base is where the tests' caches say they are; served is where the newest one is.
const base = "http://pkgcache.test"

var served string

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(strings.Replace(u, base, served, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var hrefs = regexp.MustCompile(`href="([^"]+)"`)

func TestPyPIPullThrough(t *testing.T) {
	u := newUpstream(t)
	_, srv, _ := newCache(t, u, "", 1<<20)
	code, body := get(t, srv.URL+"/pypi/simple/Demo/")
	links := hrefs.FindAllStringSubmatch(body, -1)
	if code != 200 || len(links) != 2 || !strings.Contains(body, `data-requires-python="&gt;=3.8"`) {
		t.Fatalf("the page: %d %s", code, body)
	}
	for _, l := range links {
		if !strings.HasPrefix(l[1], base+"/pypi/files/") {
			t.Fatalf("a link not to the cache: %s", l[1])
		}
	}
	file := strings.Split(links[0][1], "#")[0]
	for range 3 {
		if code, b := get(t, file); code != 200 || b != "wheel one" {
			t.Fatalf("the file: %d %q", code, b)
		}
	}
	if n := u.count("/files/demo-1.0-py3-none-any.whl"); n != 1 {
		t.Fatalf("the upstream was asked for the file %d times", n)
	}
	// A hash no page named: nothing is fetched.
	if code, _ := get(t, srv.URL+"/pypi/files/"+strings.Repeat("a", 64)+"/x.whl"); code != 404 {
		t.Fatalf("an unknown file: %d", code)
	}
}

func TestTamperedFileRefusedNotKept(t *testing.T) {
	u := newUpstream(t)
	c, srv, refused := newCache(t, u, "", 1<<20)
	_, body := get(t, srv.URL+"/pypi/simple/demo/")
	file := strings.Split(hrefs.FindAllStringSubmatch(body, -1)[1][1], "#")[0]
	u.mu.Lock()
	u.tamper = true
	u.mu.Unlock()
	if code, b := get(t, file); code != 502 || !strings.Contains(b, "does not have the hash") {
		t.Fatalf("a tampered file: %d %q", code, b)
	}
	if len(*refused) != 1 || (*refused)[0].Reason != ReasonHashMismatch || (*refused)[0].Package != "demo" {
		t.Fatalf("refusals: %+v", *refused)
	}
	if c.store.total != 0 || len(c.store.files) != 0 {
		t.Fatal("the tampered file was kept")
	}
	u.mu.Lock()
	u.tamper = false
	u.mu.Unlock()
	if code, b := get(t, file); code != 200 || b != "wheel two" {
		t.Fatalf("once the upstream is right again: %d %q", code, b)
	}
}

func TestAllowlist(t *testing.T) {
	u := newUpstream(t)
	_, srv, refused := newCache(t, u, "pypi demo <2  # the old one only\nnpm leftish ^1\n", 1<<20)
	_, body := get(t, srv.URL+"/pypi/simple/demo/")
	if strings.Contains(body, "demo-2.0") || !strings.Contains(body, "demo-1.0") {
		t.Fatalf("versions the allowlist keeps out are listed: %s", body)
	}
	if code, b := get(t, srv.URL+"/pypi/simple/other/"); code != 403 || !strings.Contains(b, "other is not in this host's package allowlist") {
		t.Fatalf("a package not listed: %d %q", code, b)
	}
	if code, _ := get(t, srv.URL+"/npm/other"); code != 403 {
		t.Fatalf("an npm package not listed: %d", code)
	}
	if len(*refused) != 2 || (*refused)[0].Package != "other" || (*refused)[0].Reason != ReasonNotAllowed {
		t.Fatalf("refusals: %+v", *refused)
	}
	if u.count("/simple/other/") != 0 {
		t.Fatal("a package not listed was asked of the upstream")
	}
	if _, err := ParseAllowlist(strings.NewReader("cargo serde\n")); err == nil {
		t.Fatal("an unknown ecosystem was accepted")
	}
	if _, err := ParseAllowlist(strings.NewReader("pypi demo >>2\n")); err == nil {
		t.Fatal("a bad specifier was accepted")
	}
}

func TestNPMPullThrough(t *testing.T) {
	u := newUpstream(t)
	_, srv, _ := newCache(t, u, "", 1<<20)
	code, body := get(t, srv.URL+"/npm/leftish")
	if code != 200 || strings.Contains(body, "0.9.0") || !strings.Contains(body, `"latest":"1.0.0"`) {
		t.Fatalf("the document (the version without sha512 dropped, with its tag): %d %s", code, body)
	}
	tarball := regexp.MustCompile(`"tarball":"([^"]+)"`).FindStringSubmatch(body)[1]
	if !strings.HasPrefix(tarball, base+"/npm/-/files/") {
		t.Fatalf("the tarball is not the cache's: %s", tarball)
	}
	for range 2 {
		if code, b := get(t, tarball); code != 200 || b != "npm tarball" {
			t.Fatalf("the tarball: %d %q", code, b)
		}
	}
	if n := u.count("/tarballs/leftish-1.0.0.tgz"); n != 1 {
		t.Fatalf("the upstream was asked for the tarball %d times", n)
	}
	if code, _ := get(t, srv.URL+"/npm/-/v1/security/audits"); code != 404 {
		t.Fatalf("another registry path: %d", code)
	}
}

func TestLeastRecentlyUsedOut(t *testing.T) {
	u := newUpstream(t)
	c, srv, _ := newCache(t, u, "", 12) // room for one wheel of 9 bytes
	_, body := get(t, srv.URL+"/pypi/simple/demo/")
	links := hrefs.FindAllStringSubmatch(body, -1)
	one, two := strings.Split(links[0][1], "#")[0], strings.Split(links[1][1], "#")[0]
	get(t, one)
	get(t, two)
	if len(c.store.files) != 1 || c.store.total != 9 {
		t.Fatalf("the store holds %d files, %d bytes", len(c.store.files), c.store.total)
	}
	get(t, one)
	if n := u.count("/files/demo-1.0-py3-none-any.whl"); n != 2 {
		t.Fatalf("the evicted file was fetched %d times", n)
	}
	// A restart finds what is on disk.
	st, err := openStore(c.cfg.Dir, 12)
	if err != nil || len(st.files) != 1 {
		t.Fatalf("reopened: %v %d", err, len(st.files))
	}
}

// An index page may name any URL: what codeboxd's dialer refuses (a metadata address) is
// never fetched, and the worker is told why.
func TestPageCannotPointInside(t *testing.T) {
	var asked sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Store(r.URL.Path, true)
		fmt.Fprintf(w, `<a href="http://169.254.169.254/latest/meta-data/x-1.0-py3-none-any.whl#sha256=%s">x-1.0-py3-none-any.whl</a>`, strings.Repeat("b", 64))
	}))
	defer up.Close()
	pypi, _ := url.Parse(up.URL + "/simple/")
	guard, err := transfer.NewGuard([]string{pypi.Hostname()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{PyPI: pypi, Dir: t.TempDir(), MaxBytes: 1 << 20, Dial: guard.DialContext, BaseURL: base})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler(nil))
	defer srv.Close()
	served = srv.URL
	_, body := get(t, srv.URL+"/pypi/simple/x/")
	link := strings.Split(hrefs.FindStringSubmatch(body)[1], "#")[0]
	if code, b := get(t, link); code != 502 || !strings.Contains(b, "the upstream failed") || strings.Contains(b, "169.254") {
		t.Fatalf("a file at the metadata address: %d %q", code, b)
	}
}

// A file in the store is served only once a page named it: after a restart, the allowlist
// is checked again before anything goes out.
func TestStoredFileNeedsItsPage(t *testing.T) {
	u := newUpstream(t)
	c, srv, _ := newCache(t, u, "", 1<<20)
	_, body := get(t, srv.URL+"/pypi/simple/demo/")
	file := strings.Split(hrefs.FindAllStringSubmatch(body, -1)[0][1], "#")[0]
	get(t, file)
	pypi, _ := url.Parse(u.URL + "/simple/")
	allow, _ := ParseAllowlist(strings.NewReader("pypi other\n"))
	again, err := New(Config{PyPI: pypi, Dir: c.cfg.Dir, MaxBytes: 1 << 20, Dial: (&net.Dialer{}).DialContext, BaseURL: base, Allowlist: allow})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(again.Handler(nil))
	defer srv2.Close()
	served = srv2.URL
	if code, _ := get(t, file); code != 404 {
		t.Fatalf("a stored file no page named since the restart: %d", code)
	}
	if code, _ := get(t, srv2.URL+"/pypi/simple/demo/"); code != 403 {
		t.Fatalf("the page of a package the new allowlist leaves out: %d", code)
	}
}

// A scoped npm name goes to the registry with its slash escaped once.
func TestScopedNPMName(t *testing.T) {
	u := newUpstream(t)
	_, srv, _ := newCache(t, u, "", 1<<20)
	if code, _ := get(t, srv.URL+"/npm/@scope%2fpkg"); code != 404 {
		t.Fatalf("a scoped package the registry does not have: %d", code)
	}
	if n := u.count("/npm/@scope/pkg"); n != 1 {
		t.Fatalf("the registry was asked %d times for /npm/@scope%%2fpkg (%v)", n, u.asked)
	}
}

// One worker asking for more files at once than it may download waits its turn: every
// request is answered.
func TestManyFilesAtOnceWait(t *testing.T) {
	u := newUpstream(t)
	_, srv, refused := newCache(t, u, "", 1<<20)
	_, page := get(t, srv.URL+"/pypi/simple/demo/")
	_, doc := get(t, srv.URL+"/npm/leftish")
	var links []string
	for _, l := range hrefs.FindAllStringSubmatch(page, -1) {
		links = append(links, strings.Split(l[1], "#")[0])
	}
	links = append(links, regexp.MustCompile(`"tarball":"([^"]+)"`).FindStringSubmatch(doc)[1])
	var wg sync.WaitGroup
	codes := make([]int, len(links))
	for i, l := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := http.Get(strings.Replace(l, base, served, 1)); err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	for i, code := range codes {
		if code != 200 {
			t.Fatalf("file %d of %d at once: %d (%+v)", i, len(links), code, *refused)
		}
	}
}
