package egress

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// MaxRules bounds a session's allowlist.
const MaxRules = 64

// Rule is one entry of a session's allowlist: a host name (exact, or "*.suffix": any name
// below suffix), or an address or CIDR, with an optional port (0: any).
type Rule struct {
	Text   string // as the caller wrote it, for events and answers
	Host   string // lower case, without a trailing dot; "" for an address rule
	Suffix bool   // Host is "*.Host"
	dotted string // "." + Host, for Suffix rules: decisions compare many names
	Prefix netip.Prefix
	Port   uint16
}

// Policy is what a session may reach: nothing when it has no rule.
type Policy struct {
	Rules []Rule
	// Packages opens the host's package cache (the preset "packages", SPEC 3.13).
	Packages bool
}

var hostName = regexp.MustCompile(`^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Parse checks a session's allow list: at most MaxRules, each a host name, "*.suffix",
// address or CIDR with an optional ":port". The error names the entry.
func Parse(allow []string) (*Policy, error) {
	if len(allow) > MaxRules {
		return nil, fmt.Errorf("network.allow has %d rules; at most %d", len(allow), MaxRules)
	}
	p := &Policy{}
	for i, text := range allow {
		r, err := parseRule(text)
		if err != nil {
			return nil, fmt.Errorf("network.allow[%d] %q: %w", i, echo(text), err)
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

func parseRule(text string) (Rule, error) {
	r := Rule{Text: text}
	s := strings.TrimSpace(text)
	if s == "" || len(s) > 300 {
		return r, fmt.Errorf("empty or longer than 300 characters")
	}
	// An address or CIDR, with a port: "198.51.100.7:5432", "[2001:db8::1]:443",
	// "203.0.113.0/24:443".
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return r, fmt.Errorf("an unclosed [")
		}
		host, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return r, fmt.Errorf("text after ]")
		}
	} else if strings.Count(s, ":") == 1 {
		host, port, _ = strings.Cut(s, ":")
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return r, fmt.Errorf("port %q is not 1..65535", port)
		}
		r.Port = uint16(n)
	}
	if pfx, err := netip.ParsePrefix(host); err == nil {
		r.Prefix = pfx.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
		return r, nil
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if rest, ok := strings.CutPrefix(h, "*."); ok {
		r.Suffix, h = true, rest
	}
	if strings.Contains(h, "*") {
		return r, fmt.Errorf("a * only as a whole first label (\"*.example.com\")")
	}
	if len(h) > 253 || !hostName.MatchString(h) {
		return r, fmt.Errorf("not a host name, \"*.suffix\", address or CIDR")
	}
	r.Host = h
	if r.Suffix {
		r.dotted = "." + h
	}
	return r, nil
}

// matchName is the rule of p that allows name (lower case, no trailing dot) on any port,
// and whether one does; port 0 asks about the name alone (a DNS question).
func (p *Policy) matchName(name string, port uint16) (Rule, bool) {
	if p == nil {
		return Rule{}, false
	}
	for _, r := range p.Rules {
		if r.Host == "" || (port != 0 && r.Port != 0 && r.Port != port) {
			continue
		}
		if name == r.Host && !r.Suffix || r.Suffix && strings.HasSuffix(name, r.dotted) {
			return r, true
		}
	}
	return Rule{}, false
}

// nameListed reports whether a rule names name on some port (so a connection to another
// port is port_not_allowed, not not_in_allowlist).
func (p *Policy) nameListed(name string) bool {
	_, ok := p.matchName(name, 0)
	return ok
}

// matchAddr is the address rule of p that allows ip:port.
func (p *Policy) matchAddr(ip netip.Addr, port uint16) (Rule, bool) {
	if p == nil {
		return Rule{}, false
	}
	for _, r := range p.Rules {
		if r.Host == "" && r.Prefix.Contains(ip) && (r.Port == 0 || r.Port == port) {
			return r, true
		}
	}
	return Rule{}, false
}

// addrListed reports whether an address rule covers ip on some port.
func (p *Policy) addrListed(ip netip.Addr) bool {
	if p == nil {
		return false
	}
	for _, r := range p.Rules {
		if r.Host == "" && r.Prefix.Contains(ip) {
			return true
		}
	}
	return false
}

// Texts are the rules as written.
func (p *Policy) Texts() []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.Rules))
	for i, r := range p.Rules {
		out[i] = r.Text
	}
	return out
}

// echo bounds what of a caller's text goes back in an error.
func echo(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
