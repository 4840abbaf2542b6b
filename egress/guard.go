package egress

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// guard holds what no rule opens: loopback, link-local (the metadata address among them),
// unspecified, multicast and broadcast, the host's own addresses and the worker subnet; and
// the private ranges, which open only where the operator's allowlist holds them.
type guard struct {
	subnet       netip.Prefix
	privateAllow []netip.Prefix

	mu        sync.Mutex
	own       map[netip.Addr]bool
	refreshed time.Time
}

// privateRanges leave out the special-purpose ranges that are not private networks (the
// documentation and benchmarking ones, 198.18.0.0/15 where the tests put their hosts): a
// rule opens them like any public address.
var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT
	netip.MustParsePrefix("fc00::/7"),      // ULA
}

var neverRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments (DS-Lite, NAT64 discovery)
	netip.MustParsePrefix("168.63.129.16/32"),   // Azure's WireServer: a metadata endpoint outside link-local
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud's metadata, inside CGNAT
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS's IPv6 metadata, inside ULA
	netip.MustParsePrefix("224.0.0.0/3"),        // multicast, reserved, broadcast
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// ownRefresh is how often the host's own addresses are read again.
const ownRefresh = 10 * time.Second

// private reports whether ip is in a private range (reachable only through the operator's
// allowlist and an address rule, never through a name: a name can be made to resolve there).
func (g *guard) private(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range privateRanges {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// allowed reports whether ip may be reached at all.
func (g *guard) allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || g.subnet.Contains(ip) || g.isOwn(ip) {
		return false
	}
	for _, p := range neverRanges {
		if p.Contains(ip) {
			return false
		}
	}
	for _, p := range privateRanges {
		if p.Contains(ip) {
			for _, a := range g.privateAllow {
				if a.Contains(ip) {
					return true
				}
			}
			return false
		}
	}
	return true
}

func (g *guard) isOwn(ip netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.refreshed) > ownRefresh {
		own := map[netip.Addr]bool{}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if x, ok := netip.AddrFromSlice(n.IP); ok {
						own[x.Unmap()] = true
					}
				}
			}
			g.own, g.refreshed = own, time.Now()
		}
	}
	if g.own == nil {
		return true // the host's addresses could not be read: nothing counts as not its own
	}
	return g.own[ip]
}
