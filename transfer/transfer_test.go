package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestGuardRanges(t *testing.T) {
	g, _ := NewGuard(nil)
	for _, s := range []string{"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
		"224.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
		"::7f00:1", "::a00:1", // IPv4-compatible
		"64:ff9b::7f00:1", "64:ff9b:1::a00:1", // NAT64, global and local-use
		"2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", // 6to4, Teredo
		"fec0::1"} {
		if g.Allowed(netip.MustParseAddr(s)) {
			t.Errorf("%s allowed", s)
		}
	}
	// Checked as values only; nothing is sent to them.
	for _, s := range []string{"8.8.8.8", "2606:4700::1", "93.184.216.34"} {
		if !g.Allowed(netip.MustParseAddr(s)) {
			t.Errorf("%s refused", s)
		}
	}
	g2, err := NewGuard([]string{"10.9.0.0/16", "127.0.0.1", "store.internal"})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.Allowed(netip.MustParseAddr("10.9.1.1")) || !g2.Allowed(netip.MustParseAddr("127.0.0.1")) || g2.Allowed(netip.MustParseAddr("10.8.0.1")) {
		t.Error("allowlist CIDR/IP not applied")
	}
	if !g2.allowHosts["store.internal"] {
		t.Error("allowlist host not kept")
	}
	if _, err := NewGuard([]string{"10.0.0.0/99"}); err == nil {
		t.Error("bad CIDR accepted")
	}
}

// A public address of the host's own reaches its services like loopback does.
func TestGuardRefusesTheHostsOwnAddresses(t *testing.T) {
	g, _ := NewGuard(nil)
	own := netip.MustParseAddr("203.0.113.7") // documentation range, standing in for a public IP
	g.local = func() ([]net.Addr, error) {
		return []net.Addr{&net.IPNet{IP: net.ParseIP("203.0.113.7"), Mask: net.CIDRMask(24, 32)}}, nil
	}
	if g.Allowed(own) {
		t.Error("the host's own address is allowed")
	}
	if !g.Allowed(netip.MustParseAddr("203.0.113.8")) {
		t.Error("a neighbour of the host's address is refused")
	}
	g.local = func() ([]net.Addr, error) { return nil, errors.New("no netlink") }
	if g.Allowed(netip.MustParseAddr("8.8.8.8")) {
		t.Error("with the host's addresses unknown, an address was allowed")
	}
}

// objectStore is a loopback server with well-behaved and misbehaving modes.
func objectStore(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/", http.StatusFound)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write(bytes.Repeat([]byte("x"), 1000))
	})
	mux.HandleFunc("/big-chunked", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 10; i++ {
			w.Write(bytes.Repeat([]byte("x"), 100))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.Write([]byte("only this"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPut || string(b) != "payload" || r.ContentLength != 7 {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(201)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func store(buf *bytes.Buffer) func(io.Reader, int64) (int64, error) {
	return func(r io.Reader, limit int64) (int64, error) {
		n, err := io.Copy(buf, io.LimitReader(r, limit+1))
		if err == nil && n > limit {
			return n, ErrTooLarge
		}
		return n, err
	}
}

func TestDownloadRules(t *testing.T) {
	srv := objectStore(t)
	ctx := context.Background()

	closed, _ := NewGuard(nil)
	var buf bytes.Buffer
	if _, err := NewClient(closed, 5*time.Second).Download(ctx, srv.URL+"/ok", 100, store(&buf)); !errors.Is(err, ErrBlocked) {
		t.Fatalf("loopback without allowlist: %v", err)
	}
	localhostURL := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	_, err := NewClient(closed, 5*time.Second).Download(ctx, localhostURL+"/ok", 100, store(&buf))
	if !errors.Is(err, ErrBlocked) {
		t.Fatalf("a name resolving to loopback: %v", err)
	}
	if msg := err.Error(); strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "::1") || !strings.Contains(msg, "localhost") {
		t.Fatalf("the refusal %q must name the host, not what it resolves to", msg)
	}

	open, _ := NewGuard([]string{"127.0.0.0/8"})
	c := NewClient(open, 2*time.Second)
	buf.Reset()
	if n, err := c.Download(ctx, srv.URL+"/ok", 100, store(&buf)); err != nil || n != 5 || buf.String() != "hello" {
		t.Fatalf("allowed download: %d %v %q", n, err, buf.String())
	}
	cases := map[string]string{
		"/redirect":    "redirects are not followed",
		"/big":         "larger than the file size limit",
		"/big-chunked": "larger than the file size limit",
		"/short":       "fewer bytes than it announced",
		"/slow":        "longer than the file timeout",
		"/missing":     "HTTP 404",
	}
	for path, want := range cases {
		buf.Reset()
		_, err := c.Download(ctx, srv.URL+path, 500, store(&buf))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", path, err, want)
		}
	}
	for _, u := range []string{"file:///etc/passwd", "ftp://x/y", "http://user:pw@127.0.0.1/", "/relative"} {
		if _, err := c.Download(ctx, u, 100, store(&buf)); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
	if err := c.Upload(ctx, srv.URL+"/put", strings.NewReader("payload"), 7, "text/plain"); err != nil {
		t.Fatalf("upload: %v", err)
	}
	if err := c.Upload(ctx, srv.URL+"/missing", strings.NewReader("payload"), 7, "text/plain"); err == nil {
		t.Fatal("upload to a 404 succeeded")
	}
}

// A server that sends a byte and then nothing holds a transfer only for the stall timeout,
// not the whole file timeout.
func TestStalledTransferFails(t *testing.T) {
	quit := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Length", "100")
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
		} // a PUT: takes nothing of the body
		select {
		case <-r.Context().Done():
		case <-quit:
		}
	}))
	defer srv.Close()
	defer close(quit)
	g, _ := NewGuard([]string{"127.0.0.0/8"})
	c := NewClient(g, time.Minute)
	c.stall = 300 * time.Millisecond
	start := time.Now()
	var buf bytes.Buffer
	_, err := c.Download(context.Background(), srv.URL+"/x", 1000, store(&buf))
	if !errors.Is(err, errStalled) || time.Since(start) > 5*time.Second {
		t.Fatalf("download: %v after %s, want a stall", err, time.Since(start))
	}
	start = time.Now()
	big := bytes.Repeat([]byte("y"), 64<<20) // more than the socket buffers take
	err = c.Upload(context.Background(), srv.URL+"/x", bytes.NewReader(big), int64(len(big)), "text/plain")
	if !errors.Is(err, errStalled) || time.Since(start) > 5*time.Second {
		t.Fatalf("upload: %v after %s, want a stall", err, time.Since(start))
	}
}

// A host:port on the allowlist opens that service of the host, not its other ports.
func TestAllowHostPortIsOnePort(t *testing.T) {
	open := func() (string, func()) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return l.Addr().String(), func() { l.Close() }
	}
	allowed, stop1 := open()
	defer stop1()
	other, stop2 := open()
	defer stop2()
	g, _ := NewGuard(nil)
	if err := g.AllowHostPort(allowed); err != nil {
		t.Fatal(err)
	}
	c, err := g.DialContext(context.Background(), "tcp", allowed)
	if err != nil {
		t.Fatalf("the allowed host:port: %v", err)
	}
	c.Close()
	if _, err := g.DialContext(context.Background(), "tcp", other); !errors.Is(err, ErrBlocked) {
		t.Fatalf("another port of the same host: %v", err)
	}
}
