// Package firewall owns the iptables and ip6tables rules that fence the workers' bridge:
// nothing of a worker's reaches anything but codeboxd's egress resolver and proxy (package
// egress), which decide what goes further; no worker-to-worker traffic, no host port. It has
// three layers, each in chains of its own hooked first into the built-in chains:
//
//   - the fence, in the mangle table's PREROUTING: from the bridge pass only packets of
//     connections under way, DNS questions and the first packet of a TCP connection; UDP is
//     logged (NFLOG, for the egress's events) and dropped, the rest dropped. A DROP is final
//     in whatever table it happens, so no ACCEPT that other software puts into the filter
//     table (Docker, Calico, a host firewall) can open what the fence closes;
//   - the redirect, in the nat table's PREROUTING: DNS to the egress resolver, every other
//     TCP connection to the egress proxy, whatever its destination (another worker, a host
//     port, the internet);
//   - the filter chains (INPUT and FORWARD): only what was redirected reaches the host, a
//     refusal for anything else; nothing is forwarded.
//
// Every change is one iptables-restore transaction per address family, so running workers
// are never unfenced; Keep checks the hooks periodically and puts them back first when some
// other rule got above them. go-iptables and the restore command sit behind a small
// interface with a fake for tests.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Chains returns the names of the firewall's filter chains for bridge, in both iptables
// and ip6tables. Each bridge has its own, so two daemons (a test's and the operator's)
// never touch each other's rules.
func Chains(bridge string) (input, forward string) {
	return "CODEBOX-IN-" + bridge, "CODEBOX-FWD-" + bridge
}

// FenceChain is the name of the fence's chain in the mangle table for bridge.
func FenceChain(bridge string) string { return "CODEBOX-PRE-" + bridge }

// RedirectChain is the name of the redirect's chain in the nat table for bridge.
func RedirectChain(bridge string) string { return "CODEBOX-NAT-" + bridge }

// Egress is where the redirect sends the workers' traffic: the egress resolver's and
// proxy's ports on the bridge's address, and the NFLOG group dropped UDP is logged to.
type Egress struct {
	DNSPort, ProxyPort uint16
	NFLOGGroup         uint16
}

// NFLOGGroup is bridge's NFLOG group: each bridge its own, so that two daemons' logs do
// not mix.
func NFLOGGroup(bridge string) uint16 {
	return uint16(1000 + crc32.ChecksumIEEE([]byte(bridge))%30000)
}

// iptablesAPI is the part of go-iptables the firewall uses, and iptables-restore; tests
// substitute a fake.
type iptablesAPI interface {
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	// List returns a chain as `iptables -S` prints it: "-N CHAIN" for a chain of ours (or
	// "-P CHAIN POLICY" for a built-in one), then "-A CHAIN rule…" lines.
	List(table, chain string) ([]string, error)
	// Restore applies rules (iptables-restore's format) in one transaction per table,
	// leaving chains it does not name alone.
	Restore(rules string) error
	// Proto is iptables.ProtocolIPv4 or ProtocolIPv6.
	Proto() iptables.Protocol
}

// table is one address family's iptables: go-iptables for single rules, and its restore
// command for changes that must land at once.
type table struct {
	*iptables.IPTables
	restore string // iptables-restore or ip6tables-restore
}

func (t table) Restore(rules string) error {
	cmd := exec.Command(t.restore, "--wait", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", t.restore, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Firewall isolates the workers' bridge (see the package's doc). The same rules apply to
// IPv6, since veths get link-local IPv6 addresses.
type Firewall struct {
	bridge    string
	egress    Egress
	tables    []iptablesAPI // IPv4 and IPv6
	netfilter func() error  // makes bridged traffic pass iptables
}

// New returns the firewall of bridge, backed by iptables and ip6tables.
func New(bridge string, egress Egress) (*Firewall, error) {
	v4, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	v6, err := iptables.NewWithProtocol(iptables.ProtocolIPv6)
	if err != nil {
		return nil, fmt.Errorf("ip6tables: %w", err)
	}
	return &Firewall{bridge: bridge, egress: egress, netfilter: enableBridgeNetfilter,
		tables: []iptablesAPI{table{v4, "iptables-restore"}, table{v6, "ip6tables-restore"}}}, nil
}

// chain is one of our chains and the rules it holds, in `iptables -S` form (without the
// leading "-A NAME").
type chain struct {
	table, name string
	rules       []string
}

// hook is a jump from a built-in chain to ours. The hooks of one built-in chain must be
// its first rules, in the order listed.
type hook struct {
	table, builtin string
	rule           string // in `iptables -S` form, without the leading "-A BUILTIN"
}

// ruleset is what the firewall installs for one address family. Rules are written the way
// `iptables -S` prints them, so that Keep can compare what is there with what should be.
func (f *Firewall) ruleset(proto iptables.Protocol) ([]chain, []hook) {
	in, fwd := Chains(f.bridge)
	fence, redirect := FenceChain(f.bridge), RedirectChain(f.bridge)
	if proto == iptables.ProtocolIPv6 {
		// Workers have no IPv6 (netns turns it off): replies to the host's own
		// connections pass, nothing else.
		return []chain{
				{"mangle", fence, []string{"-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", "-j DROP"}},
				{"filter", in, []string{
					"-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
					"-p tcp -j REJECT --reject-with tcp-reset",
					"-j REJECT --reject-with icmp6-port-unreachable",
				}},
				{"filter", fwd, []string{"-j DROP"}},
			}, []hook{
				{"mangle", "PREROUTING", "-i " + f.bridge + " -j " + fence},
				{"filter", "INPUT", "-i " + f.bridge + " -j " + in},
				{"filter", "FORWARD", "-i " + f.bridge + " -j " + fwd},
				{"filter", "FORWARD", "-o " + f.bridge + " -j " + fwd},
			}
	}
	dns, proxy := strconv.Itoa(int(f.egress.DNSPort)), strconv.Itoa(int(f.egress.ProxyPort))
	chains := []chain{
		// Replies to connections under way (the host's to the agents, the proxy's to the
		// workers), DNS and new TCP connections (both redirected below) pass; UDP is logged
		// and dropped; anything else ends here, whatever the filter table says.
		{"mangle", fence, []string{
			"-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
			"-p udp -m udp --dport 53 -j RETURN",
			"-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN",
			fmt.Sprintf("-p udp -j NFLOG --nflog-group %d --nflog-size 28", f.egress.NFLOGGroup),
			"-j DROP",
		}},
		{"nat", redirect, []string{
			"-p udp -m udp --dport 53 -j REDIRECT --to-ports " + dns,
			"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports " + dns,
			"-p tcp -j REDIRECT --to-ports " + proxy,
		}},
		{"filter", in, []string{
			"-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-p udp -m udp --dport " + dns + " -m conntrack --ctstate DNAT -j ACCEPT",
			"-p tcp -m tcp --dport " + dns + " -m conntrack --ctstate DNAT -j ACCEPT",
			"-p tcp -m tcp --dport " + proxy + " -m conntrack --ctstate DNAT -j ACCEPT",
			"-p tcp -j REJECT --reject-with tcp-reset",
			"-j REJECT --reject-with icmp-port-unreachable",
		}},
		{"filter", fwd, []string{"-j DROP"}},
	}
	hooks := []hook{
		{"mangle", "PREROUTING", "-i " + f.bridge + " -j " + fence},
		{"nat", "PREROUTING", "-i " + f.bridge + " -j " + redirect},
		{"filter", "INPUT", "-i " + f.bridge + " -j " + in},
		{"filter", "FORWARD", "-i " + f.bridge + " -j " + fwd},
		{"filter", "FORWARD", "-o " + f.bridge + " -j " + fwd},
	}
	return chains, hooks
}

// Install (re)writes the chains and puts the hooks first. It is idempotent: run at every
// start, while workers of an earlier codeboxd may be running. So the rules change in one
// iptables-restore transaction per table and address family: each chain is emptied and
// filled again (a rule set changed between versions is replaced, never appended to), and
// the hooks are moved to the top, all at once; no packet ever meets an empty chain.
func (f *Firewall) Install() error {
	if err := f.netfilter(); err != nil {
		return err
	}
	for _, t := range f.tables {
		if err := f.rewrite(t); err != nil {
			return err
		}
	}
	return nil
}

// rewrite installs t's ruleset in one restore.
func (f *Firewall) rewrite(t iptablesAPI) error {
	chains, hooks := f.ruleset(t.Proto())
	var b strings.Builder
	for _, tbl := range tablesOf(chains, hooks) {
		fmt.Fprintf(&b, "*%s\n", tbl)
		for _, c := range chains {
			if c.table == tbl {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.name) // created, or emptied if it exists
			}
		}
		for _, c := range chains {
			if c.table != tbl {
				continue
			}
			for _, r := range c.rules {
				fmt.Fprintf(&b, "-A %s %s\n", c.name, r)
			}
		}
		for _, builtin := range builtinsOf(hooks, tbl) {
			current, err := t.List(tbl, builtin)
			if err != nil {
				return fmt.Errorf("list %s %s: %w", tbl, builtin, err)
			}
			var ours []string
			for _, h := range hooks {
				if h.table == tbl && h.builtin == builtin {
					ours = append(ours, h.rule)
				}
			}
			// Every copy of a hook goes (a rule other software put above it left it
			// further down), then the hooks go in first, in order.
			for _, line := range current {
				if r, ok := strings.CutPrefix(line, "-A "+builtin+" "); ok && slices.Contains(ours, r) {
					fmt.Fprintf(&b, "-D %s %s\n", builtin, r)
				}
			}
			for i := len(ours) - 1; i >= 0; i-- {
				fmt.Fprintf(&b, "-I %s 1 %s\n", builtin, ours[i])
			}
		}
		b.WriteString("COMMIT\n")
	}
	if err := t.Restore(b.String()); err != nil {
		return fmt.Errorf("install chains: %w", err)
	}
	return nil
}

// Verify says what is not as Install leaves it: a chain whose rules differ, a hook missing
// or below another rule. Empty when the fence is intact.
func (f *Firewall) Verify() ([]string, error) {
	var problems []string
	for _, t := range f.tables {
		p, err := f.verify(t)
		if err != nil {
			return nil, err
		}
		problems = append(problems, p...)
	}
	return problems, nil
}

func (f *Firewall) verify(t iptablesAPI) ([]string, error) {
	family := "IPv4"
	if t.Proto() == iptables.ProtocolIPv6 {
		family = "IPv6"
	}
	chains, hooks := f.ruleset(t.Proto())
	var problems []string
	for _, c := range chains {
		ok, err := t.ChainExists(c.table, c.name)
		if err != nil {
			return nil, err
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: chain %s/%s is missing", family, c.table, c.name))
			continue
		}
		lines, err := t.List(c.table, c.name)
		if err != nil {
			return nil, err
		}
		var got []string
		for _, l := range lines {
			if r, ok := strings.CutPrefix(l, "-A "+c.name+" "); ok {
				got = append(got, r)
			}
		}
		if !slices.Equal(got, c.rules) {
			problems = append(problems, fmt.Sprintf("%s: chain %s/%s holds %q", family, c.table, c.name, got))
		}
	}
	for _, tbl := range tablesOf(nil, hooks) {
		for _, builtin := range builtinsOf(hooks, tbl) {
			lines, err := t.List(tbl, builtin)
			if err != nil {
				return nil, err
			}
			var rules []string
			for _, l := range lines {
				if r, ok := strings.CutPrefix(l, "-A "+builtin+" "); ok {
					rules = append(rules, r)
				}
			}
			i := 0
			for _, h := range hooks {
				if h.table != tbl || h.builtin != builtin {
					continue
				}
				if i >= len(rules) || rules[i] != h.rule {
					problems = append(problems, fmt.Sprintf("%s: %s/%s does not start with %q (its rules: %q)",
						family, tbl, builtin, h.rule, head(rules, 4)))
					break
				}
				i++
			}
		}
	}
	return problems, nil
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

// Repair reinstalls the rules of each address family that is not as Install left it, and
// says what was wrong; nothing when all is in place.
func (f *Firewall) Repair() ([]string, error) {
	var repaired []string
	for _, t := range f.tables {
		problems, err := f.verify(t)
		if err != nil {
			return nil, err
		}
		if len(problems) == 0 {
			continue
		}
		if err := f.rewrite(t); err != nil {
			return nil, err
		}
		repaired = append(repaired, problems...)
	}
	return repaired, nil
}

// Keep repairs the firewall every interval until ctx ends: software that manages iptables
// (kube-proxy, Calico's Felix, dockerd) puts its own rules first from time to time.
func (f *Firewall) Keep(ctx context.Context, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		repaired, err := f.Repair()
		switch {
		case err != nil:
			log.Error("firewall check failed", "err", err)
		case len(repaired) > 0:
			log.Warn("firewall repaired: its hooks are first again", "found", strings.Join(repaired, "; "))
		}
	}
}

// tablesOf lists the tables the chains and hooks use, mangle (the fence) first.
func tablesOf(chains []chain, hooks []hook) []string {
	var out []string
	for _, c := range chains {
		if !slices.Contains(out, c.table) {
			out = append(out, c.table)
		}
	}
	for _, h := range hooks {
		if !slices.Contains(out, h.table) {
			out = append(out, h.table)
		}
	}
	return out
}

// builtinsOf lists the built-in chains of tbl that hooks jump from.
func builtinsOf(hooks []hook, tbl string) []string {
	var out []string
	for _, h := range hooks {
		if h.table == tbl && !slices.Contains(out, h.builtin) {
			out = append(out, h.builtin)
		}
	}
	return out
}

// Remove unhooks and deletes the chains, tolerating their absence: a second Remove, or one
// after a half-done Install, succeeds.
func (f *Firewall) Remove() error {
	var errs []error
	for _, t := range f.tables {
		chains, hooks := f.ruleset(t.Proto())
		present := map[string]bool{}
		for _, c := range chains {
			ok, err := t.ChainExists(c.table, c.name)
			if err != nil {
				errs = append(errs, err)
			}
			present[c.table+"/"+c.name] = ok
		}
		for _, h := range hooks {
			// No rule can jump to a chain that does not exist, and iptables fails the
			// check of such a rule rather than saying it is absent.
			spec := strings.Fields(h.rule)
			if !present[h.table+"/"+jumpTarget(spec)] {
				continue
			}
			if err := t.DeleteIfExists(h.table, h.builtin, spec...); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s/%s: %w", h.table, h.builtin, err))
			}
		}
		for _, c := range chains {
			if !present[c.table+"/"+c.name] {
				continue
			}
			if err := t.ClearChain(c.table, c.name); err != nil {
				errs = append(errs, err)
			} else if err := t.DeleteChain(c.table, c.name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// jumpTarget is the chain a rule jumps to ("-j CHAIN"), or "".
func jumpTarget(rule []string) string {
	for i := 0; i+1 < len(rule); i++ {
		if rule[i] == "-j" {
			return rule[i+1]
		}
	}
	return ""
}

// enableBridgeNetfilter makes bridged (worker-to-worker) traffic pass through iptables;
// without it neither the fence nor the FORWARD rules see it.
func enableBridgeNetfilter() error {
	for _, name := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		path := "/proc/sys/net/bridge/" + name
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			// The sysctl appears once br_netfilter is loaded.
			if out, merr := exec.Command("modprobe", "br_netfilter").CombinedOutput(); merr != nil {
				return fmt.Errorf("%s is missing and modprobe br_netfilter failed: %v: %s", path, merr, out)
			}
			b, err = os.ReadFile(path)
		}
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable %s: %w", name, err)
		}
	}
	return nil
}
