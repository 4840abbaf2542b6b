// Package transfer moves files between worker disks and HTTP object storage (presigned
// URLs) without becoming a way into the host's network: only http and https, no proxies,
// no redirects, and every connection's address is checked when it is dialled, so a name
// that resolves (or re-resolves, DNS rebinding) to a loopback, private, link-local, CGNAT,
// multicast or metadata address is refused. An allowlist opens chosen CIDRs or host names
// (a private object store; the tests' loopback server).
package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrBlocked is wrapped by refusals of the address guard.
var ErrBlocked = errors.New("address not allowed")

// blocked are ranges a download must never reach unless allowlisted.
var blocked = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // "this network"
		"10.0.0.0/8",     // private
		"100.64.0.0/10",  // CGNAT
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
		"172.16.0.0/12",  // private
		"192.0.0.0/24",   // IETF protocol assignments
		"192.168.0.0/16", // private
		"198.18.0.0/15",  // benchmarking
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, broadcast
		"::/96",          // unspecified, loopback, IPv4-compatible (::a.b.c.d)
		"64:ff9b::/96",   // NAT64: would reach IPv4 behind it
		"64:ff9b:1::/48", // local-use NAT64
		"2001::/32",      // Teredo: carries an IPv4 address
		"2002::/16",      // 6to4: likewise
		"fc00::/7",       // unique local, AWS metadata fd00:ec2::254
		"fec0::/10",      // site-local (deprecated, still routed by some)
		"fe80::/10",      // link-local
		"ff00::/8",       // multicast
		"2001:db8::/32",  // documentation
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// Guard decides which addresses transfers may connect to.
type Guard struct {
	allowNets  []netip.Prefix
	allowHosts map[string]bool
	// allowHostPorts are host:port pairs dialled whatever their address: one service of a
	// host, not all of them.
	allowHostPorts map[string]bool
	// local lists the host's own addresses: a public address of the host reaches its
	// services as surely as loopback does.
	local func() ([]net.Addr, error)
}

// NewGuard builds a guard with an allowlist of CIDRs, IPs or host names.
func NewGuard(allow []string) (*Guard, error) {
	g := &Guard{allowHosts: map[string]bool{}, allowHostPorts: map[string]bool{}, local: net.InterfaceAddrs}
	for _, a := range allow {
		a = strings.TrimSpace(a)
		switch {
		case a == "":
		case strings.Contains(a, "/"):
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("allowlist entry %q: %w", a, err)
			}
			g.allowNets = append(g.allowNets, p.Masked())
		default:
			if ip, err := netip.ParseAddr(a); err == nil {
				g.allowNets = append(g.allowNets, netip.PrefixFrom(ip, ip.BitLen()))
			} else {
				g.allowHosts[strings.ToLower(a)] = true
			}
		}
	}
	return g, nil
}

// AllowHostPort lets host:port (a name or an address, and a port) be dialled wherever it
// resolves: the one service an operator named, such as a package index on loopback.
func (g *Guard) AllowHostPort(hostport string) error {
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return err
	}
	g.allowHostPorts[strings.ToLower(hostport)] = true
	return nil
}

// Allowed reports whether ip may be dialled.
func (g *Guard) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.allowNets {
		if p.Contains(ip) {
			return true
		}
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() ||
		ip.IsLinkLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range blocked {
		if p.Contains(ip) {
			return false
		}
	}
	return !g.isLocal(ip)
}

// isLocal reports whether ip is one of the host's own addresses. They are listed at each
// check (interfaces come and go); when they cannot be listed, every address counts as local.
func (g *Guard) isLocal(ip netip.Addr) bool {
	addrs, err := g.local()
	if err != nil {
		return true
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if own, ok := netip.AddrFromSlice(n.IP); ok && own.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// Client is an HTTP client for transfers.
type Client struct {
	guard   *Guard
	http    *http.Client
	timeout time.Duration
	stall   time.Duration // see stallTimeout
}

// NewClient returns a client whose connections pass g; each transfer is bounded by
// timeout.
func NewClient(g *Guard, timeout time.Duration) *Client {
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would dial on our behalf, past the guard
		DialContext:           g.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	return &Client{guard: g, timeout: timeout, stall: stallTimeout, http: &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect could point anywhere
		},
	}}
}

// DialContext connects after checking the address actually dialled: the check runs in the
// dialer's Control hook, after resolution, so no DNS answer can slip past it.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	hostAllowed := g.allowHosts[strings.ToLower(host)] || g.allowHostPorts[strings.ToLower(addr)]
	d := net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil || !hostAllowed && !g.Allowed(ap.Addr()) {
				return blockedError{host}
			}
			return nil
		},
	}
	return d.DialContext(ctx, network, addr)
}

// CheckURL refuses what is not an absolute http or https URL.
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("bad URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("URL scheme %q is not http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("URL has no host")
	}
	if u.User != nil {
		return nil, errors.New("URL must not carry credentials")
	}
	return u, nil
}

// ErrTooLarge is returned when a download is larger than its limit.
var ErrTooLarge = errors.New("larger than the file size limit")

// Download GETs rawURL and hands the body to store, which must not read more than the
// limit it is given; the Content-Length, when sent, is checked first.
func (c *Client) Download(ctx context.Context, rawURL string, limit int64, store func(io.Reader, int64) (int64, error)) (int64, error) {
	u, err := CheckURL(rawURL)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ctx, touch, stop := c.watchdog(ctx)
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, describe(ctx, err)
	}
	defer resp.Body.Close()
	resp.Body = progress{resp.Body, touch}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return 0, fmt.Errorf("the server redirected (HTTP %d); redirects are not followed", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("the server answered HTTP %d", resp.StatusCode)
	}
	if resp.ContentLength > limit {
		return 0, fmt.Errorf("%w (%d bytes announced, limit %d)", ErrTooLarge, resp.ContentLength, limit)
	}
	n, err := store(resp.Body, limit)
	if err != nil {
		return n, describe(ctx, err)
	}
	return n, nil
}

// Upload PUTs size bytes of body to rawURL.
func (c *Client) Upload(ctx context.Context, rawURL string, body io.Reader, size int64, contentType string) error {
	u, err := CheckURL(rawURL)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ctx, touch, stop := c.watchdog(ctx)
	defer stop()
	// The transport reads the body as the server takes it: no read for a while is a stall.
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), io.NopCloser(progress{body, touch}))
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", contentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return describe(ctx, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return fmt.Errorf("the server answered HTTP %d", resp.StatusCode)
	}
	return nil
}

// stallTimeout is how long a transfer may move no byte before it fails: a server sending or
// taking a byte a second would otherwise hold a transfer slot for the whole file timeout.
const stallTimeout = 30 * time.Second

// errStalled is the cause of a transfer cut for moving nothing.
var errStalled = errors.New("the transfer stalled: no data moved for a while")

// watchdog returns ctx, ended with errStalled once touch has not been called for the stall
// timeout, when that is shorter than the transfer's; stop ends the watch.
func (c *Client) watchdog(ctx context.Context) (context.Context, func(), func()) {
	if c.stall >= c.timeout {
		return ctx, func() {}, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	idle := c.stall
	timer := time.AfterFunc(idle, func() { cancel(errStalled) })
	return ctx, func() { timer.Reset(idle) }, func() { timer.Stop(); cancel(nil) }
}

// progress calls touch for every read that moved bytes.
type progress struct {
	io.Reader
	touch func()
}

func (p progress) Read(b []byte) (int, error) {
	n, err := p.Reader.Read(b)
	if n > 0 {
		p.touch()
	}
	return n, err
}

func (p progress) Close() error {
	if c, ok := p.Reader.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// blockedError refuses a connection. It names the host as the caller gave it and never
// the address it resolved to: that would map the host's network for the caller.
type blockedError struct{ host string }

func (e blockedError) Error() string {
	return fmt.Sprintf("%v: %s is, or resolves to, an address of this host or of a loopback, private, link-local, CGNAT, multicast or metadata range", ErrBlocked, e.host)
}

func (e blockedError) Is(target error) bool { return target == ErrBlocked }

// describe makes transport errors readable without internals: no addresses (the dialler's
// errors carry the resolved one).
func describe(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return errStalled
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var blocked blockedError
	var op *net.OpError
	switch {
	case errors.As(err, &blocked):
		return blocked
	case errors.Is(err, context.DeadlineExceeded):
		return errors.New("the transfer took longer than the file timeout")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the server sent fewer bytes than it announced")
	case errors.As(err, &op):
		return fmt.Errorf("connection failed (%s): %v", op.Op, op.Err)
	}
	return err
}
