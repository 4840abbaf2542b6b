// Package firewall owns the iptables and ip6tables rules that fence the workers' bridge
// (its own chains, hooked first into INPUT and FORWARD): no egress, no worker-to-worker
// traffic, no host port. The chains are rewritten in one iptables-restore transaction, so
// running workers are never unfenced; go-iptables and the restore command sit behind a
// small interface with a fake for tests.
package firewall

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Chains returns the names of the firewall's own chains for bridge, in the filter table of
// both iptables and ip6tables. Each bridge has its own, so two daemons (a test's and the
// operator's) never touch each other's rules.
func Chains(bridge string) (input, forward string) {
	return "CODEBOX-IN-" + bridge, "CODEBOX-FWD-" + bridge
}

// iptablesAPI is the part of go-iptables the firewall uses, and iptables-restore; tests
// substitute a fake.
type iptablesAPI interface {
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	DeleteIfExists(table, chain string, rulespec ...string) error
	// Restore applies rules (iptables-restore's format, one table) in one transaction,
	// leaving chains it does not name alone.
	Restore(rules string) error
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

// Firewall isolates the workers' bridge: nothing is forwarded from or to it (no
// egress, no worker-to-worker traffic, which crosses FORWARD because
// bridge-nf-call-iptables is on), and the host accepts from it only replies to connections
// the host opened (the daemon talking to agents), so a worker reaches no host port. The same
// rules apply to IPv6, since veths get link-local IPv6 addresses.
type Firewall struct {
	bridge    string
	tables    []iptablesAPI // IPv4 and IPv6
	netfilter func() error  // makes bridged traffic pass iptables
}

// New returns the firewall of bridge, backed by iptables and ip6tables.
func New(bridge string) (*Firewall, error) {
	v4, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	v6, err := iptables.NewWithProtocol(iptables.ProtocolIPv6)
	if err != nil {
		return nil, fmt.Errorf("ip6tables: %w", err)
	}
	return &Firewall{bridge: bridge, netfilter: enableBridgeNetfilter,
		tables: []iptablesAPI{table{v4, "iptables-restore"}, table{v6, "ip6tables-restore"}}}, nil
}

// hooks jump from the built-in chains to ours, first in each, ahead of rules other software
// (Docker, a host firewall) may have that accept forwarded traffic.
func (f *Firewall) hooks() [][]string {
	in, fwd := Chains(f.bridge)
	return [][]string{
		{"INPUT", "-i", f.bridge, "-j", in},
		{"FORWARD", "-i", f.bridge, "-j", fwd},
		{"FORWARD", "-o", f.bridge, "-j", fwd},
	}
}

// Install (re)writes the chains and hooks them in. It is idempotent: run at every start,
// while workers of an earlier codeboxd may be running. So the rules change in one
// iptables-restore transaction per address family: each chain is emptied and filled again
// (a rule set changed between versions is replaced, never appended to) and missing hooks
// are added, all at once, and no packet ever meets an empty chain.
func (f *Firewall) Install() error {
	if err := f.netfilter(); err != nil {
		return err
	}
	in, fwd := Chains(f.bridge)
	for _, t := range f.tables {
		var b strings.Builder
		b.WriteString("*filter\n")
		for _, c := range []string{in, fwd} {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c) // created, or emptied if it exists
		}
		fmt.Fprintf(&b, "-A %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n", in)
		fmt.Fprintf(&b, "-A %s -j REJECT\n", in)
		fmt.Fprintf(&b, "-A %s -j DROP\n", fwd)
		for _, h := range f.hooks() {
			ok, err := f.hooked(t, h)
			if err != nil {
				return fmt.Errorf("hook in %s: %w", h[0], err)
			}
			if !ok {
				fmt.Fprintf(&b, "-I %s 1 %s\n", h[0], strings.Join(h[1:], " "))
			}
		}
		b.WriteString("COMMIT\n")
		if err := t.Restore(b.String()); err != nil {
			return fmt.Errorf("install chains: %w", err)
		}
	}
	return nil
}

// hooked reports whether hook h is in place. A rule that jumps to a missing chain cannot
// be, and iptables fails the check of one rather than saying it is absent.
func (f *Firewall) hooked(t iptablesAPI, h []string) (bool, error) {
	ok, err := t.ChainExists("filter", jumpTarget(h))
	if err != nil || !ok {
		return false, err
	}
	return t.Exists("filter", h[0], h[1:]...)
}

// Remove unhooks and deletes the chains, tolerating their absence: a second Remove, or one
// after a half-done Install, succeeds.
func (f *Firewall) Remove() error {
	var errs []error
	in, fwd := Chains(f.bridge)
	for _, t := range f.tables {
		present := map[string]bool{}
		for _, c := range []string{in, fwd} {
			ok, err := t.ChainExists("filter", c)
			if err != nil {
				errs = append(errs, err)
			}
			present[c] = ok
		}
		for _, h := range f.hooks() {
			// No rule can jump to a chain that does not exist, and iptables fails the
			// check of such a rule rather than saying it is absent.
			if !present[jumpTarget(h)] {
				continue
			}
			if err := t.DeleteIfExists("filter", h[0], h[1:]...); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s: %w", h[0], err))
			}
		}
		for _, c := range []string{in, fwd} {
			if !present[c] {
				continue
			}
			if err := t.ClearChain("filter", c); err != nil {
				errs = append(errs, err)
			} else if err := t.DeleteChain("filter", c); err != nil {
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
// without it the FORWARD rules never see it.
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
