package connguard

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serve runs an HTTP server on loopback with g's hooks: /open needs no key, /key marks
// its connection authenticated.
func serve(t *testing.T, g *Guard) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/open", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/key", func(w http.ResponseWriter, r *http.Request) {
		Authenticated(r.Context())
		io.WriteString(w, "ok")
	})
	srv := &http.Server{Handler: mux, ConnState: g.ConnState, ConnContext: g.ConnContext, IdleTimeout: time.Minute}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// client is one keep-alive connection from source (a loopback address).
type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr, source string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c: c, r: bufio.NewReader(c)}
}

// get sends one request on the connection; false when the connection was closed.
func (cl *client) get(path string) bool {
	cl.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(cl.c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return false
	}
	resp, err := http.ReadResponse(cl.r, nil)
	if err != nil {
		return false
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b) == "ok"
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleUnauthenticatedMakeRoom: a source at its bound of unauthenticated connections
// loses its oldest idle one to a new connection, which is served: holding connections does
// not lock out a /healthz from the same address, let alone another.
func TestIdleUnauthenticatedMakeRoom(t *testing.T) {
	g := New(Config{Max: 100, MaxUnauthenticated: 50, PerSource: 4, UnauthenticatedIdle: time.Minute})
	addr := serve(t, g)
	var held []*client
	for i := 0; i < 4; i++ {
		cl := dial(t, addr, "127.0.0.2")
		if !cl.get("/open") {
			t.Fatalf("connection %d refused", i)
		}
		held = append(held, cl)
	}
	waitFor(t, "4 idle", func() bool { s := g.Stats(); return s.Unauthenticated == 4 && s.IdleUnauthenticated == 4 })
	fresh := dial(t, addr, "127.0.0.2")
	if !fresh.get("/open") {
		t.Fatal("a fifth connection of the source was not served")
	}
	if held[0].get("/open") {
		t.Fatal("the oldest idle connection was kept")
	}
	if !held[1].get("/open") {
		t.Fatal("a younger connection was closed")
	}
	if s := g.Stats(); s.Evicted != 1 || s.Unauthenticated != 4 {
		t.Fatalf("stats %+v", s)
	}
	if other := dial(t, addr, "127.0.0.3"); !other.get("/open") {
		t.Fatal("another source was refused")
	}
}

// TestAuthenticatedAreKept: once a connection carried an authenticated request it counts
// against no unauthenticated bound and is never closed to make room or for idling.
func TestAuthenticatedAreKept(t *testing.T) {
	g := New(Config{Max: 100, MaxUnauthenticated: 2, PerSource: 2, UnauthenticatedIdle: 100 * time.Millisecond})
	addr := serve(t, g)
	keyed := dial(t, addr, "127.0.0.2")
	if !keyed.get("/key") {
		t.Fatal("keyed request")
	}
	var open []*client
	for i := 0; i < 2; i++ {
		cl := dial(t, addr, "127.0.0.2")
		if !cl.get("/open") {
			t.Fatal("open request")
		}
		open = append(open, cl)
	}
	waitFor(t, "the unauthenticated connections to expire", func() bool { return g.Stats().Expired == 2 })
	for _, cl := range open {
		if cl.get("/open") {
			t.Fatal("an idle unauthenticated connection outlived its deadline")
		}
	}
	if !keyed.get("/open") {
		t.Fatal("the authenticated connection was closed")
	}
	if s := g.Stats(); s.Open != 1 || s.Unauthenticated != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestBusyBoundRefusesNew: when no connection is idle to make room, the new one is closed
// and the ones in use stay.
func TestBusyBoundRefusesNew(t *testing.T) {
	g := New(Config{Max: 100, MaxUnauthenticated: 100, PerSource: 2, UnauthenticatedIdle: time.Minute})
	addr := serve(t, g)
	// Two connections in the middle of a request (headers not finished): active.
	var busy []net.Conn
	for i := 0; i < 2; i++ {
		cl := dial(t, addr, "127.0.0.2")
		io.WriteString(cl.c, "GET /open HTTP/1.1\r\n")
		busy = append(busy, cl.c)
	}
	waitFor(t, "2 connections", func() bool { return g.Stats().Open == 2 })
	third := dial(t, addr, "127.0.0.2")
	if third.get("/open") {
		t.Fatal("a third connection was served over the bound")
	}
	if s := g.Stats(); s.Refused != 1 || s.Open != 2 {
		t.Fatalf("stats %+v", s)
	}
	for _, c := range busy {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(c, "Host: x\r\n\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(line, "200") {
			t.Fatalf("a busy connection was cut: %q %v", line, err)
		}
	}
}

// TestTrustedSourceHasNoPerSourceBound: a load balancer carries many callers.
func TestTrustedSourceHasNoPerSourceBound(t *testing.T) {
	lb := net.ParseIP("127.0.0.2")
	g := New(Config{Max: 100, MaxUnauthenticated: 100, PerSource: 1, UnauthenticatedIdle: time.Minute,
		Trusted: func(ip net.IP) bool { return ip.Equal(lb) }})
	addr := serve(t, g)
	var cls []*client
	for i := 0; i < 5; i++ {
		cl := dial(t, addr, "127.0.0.2")
		if !cl.get("/open") {
			t.Fatalf("connection %d of the trusted source refused", i)
		}
		cls = append(cls, cl)
	}
	for i, cl := range cls {
		if !cl.get("/open") {
			t.Fatalf("connection %d closed", i)
		}
	}
}
