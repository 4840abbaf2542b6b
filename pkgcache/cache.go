// Package pkgcache owns the package cache workers install from (SPEC 3.13): a read-only,
// pull-through cache of a PEP 503 simple index (pypi.go) and of an npm registry (npm.go),
// files kept on the host under a size bound, least recently used out (store.go), each file
// checked against the hash its index gives before it is served or kept, and an operator's
// allowlist of packages and versions (allow.go). It trusts neither side: what a worker asks
// and what an upstream answers are both bounded in size, time and count. The egress
// package hands it the connections workers make to it and says whose they are.
package pkgcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is what the cache serves and where it keeps files.
type Config struct {
	PyPI *url.URL // a PEP 503 simple index ("…/simple/"); nil: none
	NPM  *url.URL // an npm registry; nil: none
	Dir  string   // <state-dir>/package-cache
	// BaseURL is where workers reach the cache ("http://10.213.0.1:15080"): its pages point
	// there (never at what a request's Host says).
	BaseURL   string
	MaxBytes  int64 // the files kept, at most
	Allowlist *Allowlist
	Log       *slog.Logger
	// Dial makes the connections to upstreams. codeboxd's checks every address it dials
	// (transfer.Guard): an index page may name any URL, so only the upstreams' own hosts
	// and public addresses are reached, never the host's services or a metadata address.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Bounds on what the cache asks of an upstream and holds for it.
const (
	maxIndexBytes     = 32 << 20 // an index page or a packument
	maxFileBytes      = 1 << 30  // one file
	indexTimeout      = 30 * time.Second
	fileTimeout       = 10 * time.Minute
	stallTimeout      = 30 * time.Second // no byte from an upstream for this long
	maxFetchesAtOnce  = 8                // index pages from the upstreams at once
	maxFilesAtOnce    = 4                // files downloading at once (each up to maxFileBytes of temporary disk)
	maxFillsPerSource = 2                // downloads one worker set going
	tooLargeFor       = 10 * time.Minute
	maxKnownTooLarge  = 1024
	indexTTL          = time.Minute // index pages are kept this long
	maxIndexesKept    = 256
	maxIndexKeptBytes = 4 << 20  // a larger page is not kept
	maxIndexesBytes   = 64 << 20 // the pages kept, in all
	maxRewritesAtOnce = 2        // pages parsed and written again at once (each holds its page several times over)
	maxKnownFiles     = 200_000  // files the cache learned from index pages (hash → where)
	maxRequestPathLen = 1024
)

// Refusal reasons, in the network events of the session that asked.
const (
	ReasonNotAllowed   = "package_not_allowed"
	ReasonHashMismatch = "hash_mismatch"
	ReasonUpstream     = "upstream_failed"
	ReasonNotFound     = "not_found"
)

// Refusal is why the cache did not serve a request.
type Refusal struct {
	Reason  string
	Package string
	Detail  string
}

// Cache serves the workers' package requests.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	client  *http.Client
	store   *store
	fetch   chan struct{} // places for index pages from upstreams
	files   chan struct{} // places for file downloads
	rewrite chan struct{} // places for pages being parsed and written again

	mu       sync.Mutex
	known    map[string]origin // a file's hash → where the upstream has it
	indexes  map[string]page   // a rewritten index page by ecosystem, name and form
	kept     int               // bytes of indexes
	flights  map[string]*flight
	filling  map[string]int       // downloads each worker set going, by address
	tooLarge map[string]time.Time // hashes of files the store cannot keep, until when

	hits, misses, bytes *prometheus.CounterVec
	refusals            *prometheus.CounterVec
}

// origin is a file an index page named: where, and its hash.
type origin struct {
	url      string
	eco      string // "pypi", "npm"
	pkg      string
	filename string
	version  string // npm's (a PyPI file's is in its name)
}

type page struct {
	body        []byte
	contentType string
	until       time.Time
}

// flight is one upstream fetch of a file, which others asking for it wait for.
type flight struct {
	done    chan struct{}
	err     error
	cancel  func()
	waiting int // askers waiting for it (under Cache.mu)
}

// New opens the cache's directory (made if missing).
func New(cfg Config) (*Cache, error) {
	if cfg.PyPI == nil && cfg.NPM == nil {
		return nil, errors.New("pkgcache: no upstream")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	st, err := openStore(cfg.Dir, cfg.MaxBytes)
	if err != nil {
		return nil, err
	}
	if cfg.Dial == nil || cfg.BaseURL == "" {
		return nil, errors.New("pkgcache: no dialer or no base URL")
	}
	client := &http.Client{
		// Redirects are followed (an index may send its files elsewhere), each hop dialled
		// through the same checks and within the same deadline.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			return nil
		},
		Transport: &http.Transport{Proxy: nil, DialContext: cfg.Dial, MaxIdleConnsPerHost: 8, ResponseHeaderTimeout: indexTimeout,
			TLSHandshakeTimeout: 10 * time.Second, IdleConnTimeout: time.Minute},
	}
	c := &Cache{cfg: cfg, log: cfg.Log, client: client, store: st, fetch: make(chan struct{}, maxFetchesAtOnce), files: make(chan struct{}, maxFilesAtOnce),
		filling: map[string]int{}, tooLarge: map[string]time.Time{},
		rewrite: make(chan struct{}, maxRewritesAtOnce),
		known:   map[string]origin{}, indexes: map[string]page{}, flights: map[string]*flight{},
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "codebox_package_cache_hits_total",
			Help: "Package files served from the cache, by ecosystem."}, []string{"ecosystem"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "codebox_package_cache_misses_total",
			Help: "Package files fetched from the upstream, by ecosystem."}, []string{"ecosystem"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "codebox_package_cache_bytes_total",
			Help: "Bytes of package files served to workers, by ecosystem and source (cache, upstream)."}, []string{"ecosystem", "source"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "codebox_package_cache_refusals_total",
			Help: "Package requests refused, by ecosystem and reason."}, []string{"ecosystem", "reason"}),
	}
	return c, nil
}

// Collectors are the cache's metrics.
func (c *Cache) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.hits, c.misses, c.bytes, c.refusals, c.store.sizeGauge}
}

// Serves reports what the cache serves: "pypi", "npm".
func (c *Cache) Serves() []string {
	var out []string
	if c.cfg.PyPI != nil {
		out = append(out, "pypi")
	}
	if c.cfg.NPM != nil {
		out = append(out, "npm")
	}
	return out
}

// Handler serves the workers' requests; refused is told of each refusal (the session's
// events), the refusal's text goes to the worker (pip and npm print it).
func (c *Cache) Handler(refused func(*http.Request, Refusal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "the package cache is read-only", http.StatusMethodNotAllowed)
			return
		}
		if len(r.URL.EscapedPath()) > maxRequestPathLen {
			http.Error(w, "path too long", http.StatusRequestURITooLong)
			return
		}
		var ref *Refusal
		switch {
		case c.cfg.PyPI != nil && strings.HasPrefix(r.URL.Path, "/pypi/"):
			ref = c.servePyPI(w, r)
		case c.cfg.NPM != nil && strings.HasPrefix(r.URL.Path, "/npm/"):
			ref = c.serveNPM(w, r)
		default:
			http.Error(w, "not a path of this package cache: /pypi/simple/ and /npm/", http.StatusNotFound)
			return
		}
		if ref != nil {
			eco := "pypi"
			if strings.HasPrefix(r.URL.Path, "/npm/") {
				eco = "npm"
			}
			c.refusals.WithLabelValues(eco, ref.Reason).Inc()
			status := map[string]int{ReasonNotAllowed: http.StatusForbidden, ReasonNotFound: http.StatusNotFound}[ref.Reason]
			if status == 0 {
				status = http.StatusBadGateway
			}
			http.Error(w, "codebox package cache: "+ref.Detail, status)
			if refused != nil {
				refused(r, *ref)
			}
		}
	})
}

// getIndex fetches an index page or packument from the upstream, bounded.
func (c *Cache) getIndex(ctx context.Context, u, accept string) ([]byte, string, error) {
	select {
	case c.fetch <- struct{}{}:
		defer func() { <-c.fetch }()
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, indexTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", accept)
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, "", errNotFound
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("the upstream answered %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxIndexBytes+1))
	if err != nil {
		return nil, "", err
	}
	if len(b) > maxIndexBytes {
		return nil, "", fmt.Errorf("the upstream's index is over %d MiB", maxIndexBytes>>20)
	}
	return b, resp.Header.Get("Content-Type"), nil
}

var errNotFound = errors.New("not found upstream")

// cachedIndex returns a rewritten page kept less than indexTTL ago.
func (c *Cache) cachedIndex(key string) (page, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.indexes[key]
	if !ok || time.Now().After(p.until) {
		return page{}, false
	}
	return p, true
}

func (c *Cache) keepIndex(key string, p page) {
	if len(p.body) > maxIndexKeptBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if old, ok := c.indexes[key]; ok {
		c.kept -= len(old.body)
		delete(c.indexes, key)
	}
	// Out go the pages past their time, and any others while the new one does not fit.
	for k, old := range c.indexes {
		full := len(c.indexes) >= maxIndexesKept || c.kept+len(p.body) > maxIndexesBytes
		if full || now.After(old.until) {
			c.kept -= len(old.body)
			delete(c.indexes, k)
		}
	}
	p.until = now.Add(indexTTL)
	c.indexes[key] = p
	c.kept += len(p.body)
}

// rewriting takes a place to parse and write a page again; the returned func gives it back.
func (c *Cache) rewriting(ctx context.Context) (func(), error) {
	t := time.NewTimer(indexTimeout)
	defer t.Stop()
	select {
	case c.rewrite <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-c.rewrite }) }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errors.New("too many index pages being read at once; try again")
	}
}

// learn notes the files an index page names, so a worker can ask for them by hash only.
func (c *Cache) learn(files map[string]origin) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, o := range files {
		if _, ok := c.known[h]; !ok && len(c.known) >= maxKnownFiles {
			for k := range c.known { // any one out: they are learned again from their pages
				delete(c.known, k)
				break
			}
		}
		c.known[h] = o
	}
}

func (c *Cache) origin(hash string) (origin, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.known[hash]
	return o, ok
}

// serveFile answers a file by its hash (algorithm "sha256" or "sha512", hex): from the
// store, or fetched from where an index page said it is, checked, kept, then served. Only
// a hash an index page named is served, stored or not: the page is where the allowlist
// and the file's package are known (after a restart, pip and npm read the page first).
func (c *Cache) serveFile(w http.ResponseWriter, r *http.Request, eco, algo, hash, contentType string) *Refusal {
	o, known := c.origin(hash)
	if !known {
		return &Refusal{Reason: ReasonNotFound, Detail: "this file is not in any index page the cache has read; ask for the package's page first"}
	}
	if ref := c.allowedFile(o); ref != nil {
		return ref
	}
	fromUpstream := !c.store.has(hash)
	if fromUpstream {
		if r.Method == http.MethodHead {
			return &Refusal{Reason: ReasonNotFound, Detail: "not cached yet: a GET fetches it"}
		}
		c.misses.WithLabelValues(eco).Inc()
		if err := c.fill(r.Context(), sourceOf(r), o, algo, hash); err != nil {
			switch {
			case errors.Is(err, errHashMismatch):
				c.log.Warn("package file refused: its hash is not the index's", "ecosystem", eco, "package", o.pkg, "file", o.filename)
				return &Refusal{Reason: ReasonHashMismatch, Package: o.pkg,
					Detail: fmt.Sprintf("%s of %s: the upstream's file does not have the hash its index gives; refused, not kept", o.filename, o.pkg)}
			case errors.Is(err, errTooLarge):
				return &Refusal{Reason: ReasonUpstream, Package: o.pkg, Detail: fmt.Sprintf("%s of %s: %v", o.filename, o.pkg, err)}
			case r.Context().Err() != nil:
				return &Refusal{Reason: ReasonUpstream, Package: o.pkg, Detail: "the request ended"}
			}
			// What the upstream answered stays in the log: a worker learns nothing of the
			// hosts and ports behind it.
			c.log.Warn("package file download failed", "ecosystem", eco, "package", o.pkg, "file", o.filename, "err", err)
			return &Refusal{Reason: ReasonUpstream, Package: o.pkg, Detail: fmt.Sprintf("%s of %s: the upstream failed (codeboxd's log says how)", o.filename, o.pkg)}
		}
	} else {
		c.hits.WithLabelValues(eco).Inc()
	}
	f, size, err := c.store.open(hash)
	if err != nil {
		return &Refusal{Reason: ReasonUpstream, Detail: "the cached file went away: ask again"}
	}
	defer f.Close()
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", fmt.Sprint(size))
	w.Header().Set("Cache-Control", "max-age=31536000, immutable")
	if r.Method == http.MethodHead {
		return nil
	}
	n, _ := io.Copy(w, f)
	src := "cache"
	if fromUpstream {
		src = "upstream"
	}
	c.bytes.WithLabelValues(eco, src).Add(float64(n))
	return nil
}

// sourceOf is who asked: the worker's address.
func sourceOf(r *http.Request) string {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	return host
}

// upstreamFailed is the refusal when the upstream did not give a package's page: why goes
// to the log, not to the worker (it could name hosts and ports behind the upstream).
func (c *Cache) upstreamFailed(pkg, what string, err error) *Refusal {
	c.log.Warn("package index page failed", "package", pkg, "page", what, "err", err)
	return &Refusal{Reason: ReasonUpstream, Package: pkg, Detail: fmt.Sprintf("%s of %s: the upstream failed (codeboxd's log says how)", what, pkg)}
}

// allowedFile checks a known file against the allowlist (a file learned before the
// allowlist changed, or from another page's form, is checked again).
func (c *Cache) allowedFile(o origin) *Refusal {
	if c.cfg.Allowlist == nil {
		return nil
	}
	if !c.cfg.Allowlist.allowsFile(o) {
		return &Refusal{Reason: ReasonNotAllowed, Package: o.pkg,
			Detail: fmt.Sprintf("%s: %s is not in this host's package allowlist", o.filename, o.pkg)}
	}
	return nil
}

var (
	errHashMismatch = errors.New("hash mismatch")
	errTooLarge     = errors.New("larger than the cache keeps")
)

// fill fetches o into the store under hash, once however many ask at once. The download
// lasts while someone waits for it: when the last asker goes, it is cancelled. A worker
// starts at most maxFillsPerSource downloads at once; its others wait their turn (npm asks
// for many tarballs at once), so one worker cannot hold every place.
func (c *Cache) fill(ctx context.Context, source string, o origin, algo, hash string) error {
	c.mu.Lock()
	if until, ok := c.tooLarge[hash]; ok && time.Now().Before(until) {
		c.mu.Unlock()
		return errTooLarge
	}
	f, ok := c.flights[hash]
	for !ok && c.filling[source] >= maxFillsPerSource {
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		c.mu.Lock()
		f, ok = c.flights[hash]
	}
	if !ok {
		c.filling[source]++
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[hash] = f
		go func() {
			f.err = c.download(fctx, o, algo, hash)
			cancel()
			c.mu.Lock()
			delete(c.flights, hash)
			if c.filling[source]--; c.filling[source] <= 0 {
				delete(c.filling, source)
			}
			if errors.Is(f.err, errTooLarge) {
				if len(c.tooLarge) >= maxKnownTooLarge {
					clear(c.tooLarge)
				}
				c.tooLarge[hash] = time.Now().Add(tooLargeFor)
			}
			c.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiting++
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		c.mu.Lock()
		if f.waiting--; f.waiting == 0 {
			f.cancel() // nobody waits for it any more
		}
		c.mu.Unlock()
		return ctx.Err()
	}
}

func (c *Cache) download(ctx context.Context, o origin, algo, hash string) error {
	select {
	case c.files <- struct{}{}:
		defer func() { <-c.files }()
	case <-ctx.Done():
		return ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, fileTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.url, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("the upstream: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the upstream answered %s", resp.Status)
	}
	if limit := min(maxFileBytes, c.store.max); resp.ContentLength > limit {
		return fmt.Errorf("%w (%d MiB; at most %d MiB)", errTooLarge, resp.ContentLength>>20, limit>>20)
	}
	// A stalled upstream is cut: each read must bring bytes within stallTimeout.
	body := &stallReader{r: resp.Body, cancel: cancel, timer: time.AfterFunc(stallTimeout, cancel)}
	defer body.timer.Stop()
	return c.store.put(hash, algo, io.LimitReader(body, maxFileBytes+1), maxFileBytes)
}

// stallReader cancels its download when no byte came for stallTimeout.
type stallReader struct {
	r      io.Reader
	cancel func()
	timer  *time.Timer
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(stallTimeout)
	}
	return n, err
}
