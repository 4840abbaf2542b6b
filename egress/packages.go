package egress

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// PackageHandler makes the package cache's handler; refused is told of each request it
// refuses (why, and the package), which becomes an event of the worker's session.
type PackageHandler func(refused func(r *http.Request, reason, pkg string)) http.Handler

// Bounds on the connections workers hold to the package cache.
const (
	maxPackageConnsPerWorker = 16
	maxPackageConnsTotal     = 512
)

// ReasonPackagesOff: the session's policy does not have the preset "packages".
const ReasonPackagesOff = "packages_not_enabled"

// packageServer serves the package cache on the connections the proxy hands it.
type packageServer struct {
	conns chan net.Conn
	total int // connections open, all workers (under Server.mu)
}

type workerKey struct{}

func (s *Server) servePackages(ctx context.Context) *packageServer {
	ps := &packageServer{conns: make(chan net.Conn, 64)}
	inner := s.cfg.Packages(func(r *http.Request, reason, pkg string) {
		s.packageEvent(r, DecisionDenied, reason, pkg)
	})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !s.packagesOn(r) {
				s.packageEvent(r, DecisionDenied, ReasonPackagesOff, "")
				http.Error(w, "codebox package cache: packages are not enabled for this session: its network policy needs the preset \"packages\"", http.StatusForbidden)
				return
			}
			inner.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 30 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, workerKey{}, addrOf(c.RemoteAddr()))
		},
	}
	l := &chanListener{conns: ps.conns, done: make(chan struct{})}
	go srv.Serve(l)
	go func() { <-ctx.Done(); srv.Close() }()
	return ps
}

// handOff gives the package cache a worker's connection, within the bounds. The worker
// keeps it among its connections, so that giving the worker up closes it.
func (ps *packageServer) handOff(s *Server, w *workerState, c *net.TCPConn) {
	s.mu.Lock()
	ok := ps.total < maxPackageConnsTotal && len(w.pkgConns) < maxPackageConnsPerWorker
	var pc *packageConn
	if ok {
		ps.total++
		pc = &packageConn{TCPConn: c}
		w.pkgConns[pc] = struct{}{}
		pc.release = func() {
			s.mu.Lock()
			ps.total--
			delete(w.pkgConns, pc)
			s.mu.Unlock()
		}
	}
	s.mu.Unlock()
	if ok {
		select {
		case ps.conns <- pc:
			return
		default:
			pc.Close()
		}
	}
	s.record(w, Event{Kind: "tcp", Name: "packages", IP: s.cfg.Gateway.String(), Port: s.cfg.PackagePort,
		Decision: DecisionDenied, Reason: ReasonConnLimit})
	c.SetLinger(0)
	c.Close()
}

func (s *Server) packagesOn(r *http.Request) bool {
	src, _ := r.Context().Value(workerKey{}).(netip.Addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[src]
	return w != nil && w.owner != "" && (s.cfg.PackagesDefault || (w.policy != nil && w.policy.Packages))
}

func (s *Server) packageEvent(r *http.Request, decision, reason, pkg string) {
	src, _ := r.Context().Value(workerKey{}).(netip.Addr)
	s.mu.Lock()
	w := s.workers[src]
	s.mu.Unlock()
	if w == nil {
		return
	}
	s.record(w, Event{Kind: "package", Name: pkg, IP: s.cfg.Gateway.String(), Port: s.cfg.PackagePort,
		Decision: decision, Reason: reason})
}

// packageConn counts itself out of its worker's package connections once closed. A
// worker that does not read what it asked for is cut after packageWriteStall: each write,
// and each part of a file sent, must go out within it.
type packageConn struct {
	*net.TCPConn
	once    sync.Once
	release func()
}

const packageWriteStall = 30 * time.Second

func (c *packageConn) Write(b []byte) (int, error) {
	c.SetWriteDeadline(time.Now().Add(packageWriteStall))
	return c.TCPConn.Write(b)
}

// ReadFrom sends a file (sendfile) a MiB at a time, each within the stall bound.
func (c *packageConn) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		c.SetWriteDeadline(time.Now().Add(packageWriteStall))
		n, err := c.TCPConn.ReadFrom(io.LimitReader(r, 1<<20))
		total += n
		if err != nil || n == 0 {
			return total, err
		}
	}
}

func (c *packageConn) Close() error {
	c.once.Do(c.release)
	return c.TCPConn.Close()
}

// chanListener is a net.Listener of the connections the proxy hands over.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
