package firewall

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"
)

// fakeTables keeps chains as lists of rule strings (as `iptables -S` prints them, without
// "-A CHAIN"), and every state a packet could meet (one per operation: a restore is one
// transaction).
type fakeTables struct {
	proto   iptables.Protocol
	chains  map[string][]string
	history []map[string][]string
}

func (f *fakeTables) record() {
	snap := map[string][]string{}
	for k, v := range f.chains {
		snap[k] = slices.Clone(v)
	}
	f.history = append(f.history, snap)
}

func newFake(proto iptables.Protocol) *fakeTables {
	return &fakeTables{proto: proto, chains: map[string][]string{
		"filter/INPUT": {"-j ACCEPT-OTHER"}, "filter/FORWARD": {}, "mangle/PREROUTING": {}, "nat/PREROUTING": {}}}
}

func key(table, chain string) string { return table + "/" + chain }

func builtin(chain string) bool {
	return strings.ToUpper(chain) == chain && !strings.HasPrefix(chain, "CODEBOX-")
}

func (f *fakeTables) Proto() iptables.Protocol { return f.proto }

func (f *fakeTables) ChainExists(table, chain string) (bool, error) {
	_, ok := f.chains[key(table, chain)]
	return ok, nil
}
func (f *fakeTables) ClearChain(table, chain string) error {
	f.chains[key(table, chain)] = []string{}
	f.record()
	return nil
}
func (f *fakeTables) DeleteChain(table, chain string) error {
	if len(f.chains[key(table, chain)]) > 0 {
		return fmt.Errorf("chain %s not empty", chain)
	}
	delete(f.chains, key(table, chain))
	f.record()
	return nil
}

func (f *fakeTables) List(table, chain string) ([]string, error) {
	c, ok := f.chains[key(table, chain)]
	if !ok {
		return nil, fmt.Errorf("no chain %s/%s", table, chain)
	}
	out := []string{"-N " + chain}
	if builtin(chain) {
		out = []string{"-P " + chain + " ACCEPT"}
	}
	for _, r := range c {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

// checkTarget fails like iptables does when a rule jumps to a chain that does not exist.
func (f *fakeTables) checkTarget(table string, spec []string) error {
	if i := slices.Index(spec, "-j"); i >= 0 && i+1 < len(spec) && strings.HasPrefix(spec[i+1], "CODEBOX-") {
		if _, ok := f.chains[key(table, spec[i+1])]; !ok {
			return fmt.Errorf("chain '%s' does not exist", spec[i+1])
		}
	}
	return nil
}

// Restore applies iptables-restore --noflush input in one step (all tables at once: a
// state in between would be one per table, and every state is checked anyway).
func (f *fakeTables) Restore(rules string) error {
	next := map[string][]string{}
	for k, v := range f.chains {
		next[k] = slices.Clone(v)
	}
	tbl := ""
	for _, line := range strings.Split(strings.TrimSpace(rules), "\n") {
		fields := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "*"):
			tbl = line[1:]
		case line == "COMMIT":
			f.chains = next
			f.record()
			next = map[string][]string{}
			for k, v := range f.chains {
				next[k] = slices.Clone(v)
			}
		case strings.HasPrefix(line, ":"):
			next[key(tbl, strings.TrimPrefix(fields[0], ":"))] = []string{}
		case fields[0] == "-A":
			c, ok := next[key(tbl, fields[1])]
			if !ok {
				return fmt.Errorf("no chain %s", fields[1])
			}
			next[key(tbl, fields[1])] = append(c, strings.Join(fields[2:], " "))
		case fields[0] == "-D":
			c := next[key(tbl, fields[1])]
			i := slices.Index(c, strings.Join(fields[2:], " "))
			if i < 0 {
				return fmt.Errorf("-D %s: no such rule", fields[1])
			}
			next[key(tbl, fields[1])] = slices.Delete(c, i, i+1)
		case fields[0] == "-I" && fields[2] == "1":
			c, ok := next[key(tbl, fields[1])]
			if !ok {
				return fmt.Errorf("no chain %s", fields[1])
			}
			next[key(tbl, fields[1])] = slices.Insert(c, 0, strings.Join(fields[3:], " "))
		default:
			return fmt.Errorf("fake restore: cannot read %q", line)
		}
	}
	return nil
}

func (f *fakeTables) DeleteIfExists(table, chain string, spec ...string) error {
	if err := f.checkTarget(table, spec); err != nil {
		return err
	}
	c := f.chains[key(table, chain)]
	if i := slices.Index(c, strings.Join(spec, " ")); i >= 0 {
		f.chains[key(table, chain)] = slices.Delete(c, i, i+1)
	}
	f.record()
	return nil
}

func newTestFirewall() (*Firewall, []*fakeTables) {
	v4, v6 := newFake(iptables.ProtocolIPv4), newFake(iptables.ProtocolIPv6)
	return &Firewall{bridge: "codebox0", egress: Egress{DNSPort: 15353, ProxyPort: 15001, NFLOGGroup: 1234},
			tables: []iptablesAPI{v4, v6}, netfilter: func() error { return nil }},
		[]*fakeTables{v4, v6}
}

// closed reports whether a packet meeting state would be stopped: the fence drops, and the
// filter chains refuse, everything not a reply.
func closed(state map[string][]string) bool {
	fence := state["mangle/CODEBOX-PRE-codebox0"]
	in, fwd := state["filter/CODEBOX-IN-codebox0"], state["filter/CODEBOX-FWD-codebox0"]
	return len(fence) > 0 && fence[len(fence)-1] == "-j DROP" &&
		len(in) > 0 && strings.HasPrefix(in[len(in)-1], "-j REJECT") &&
		len(fwd) > 0 && fwd[len(fwd)-1] == "-j DROP" &&
		slices.Contains(state["mangle/PREROUTING"], "-i codebox0 -j CODEBOX-PRE-codebox0")
}

// TestReinstallNeverOpensTheFirewall: codeboxd installs the firewall at every start, with
// workers of the earlier codeboxd running. Before, it emptied the chains and then refilled
// them rule by rule: in between, a hooked chain was empty and the workers' packets fell
// through to the host's own rules.
func TestReinstallNeverOpensTheFirewall(t *testing.T) {
	fw, tbs := newTestFirewall()
	if err := fw.Install(); err != nil {
		t.Fatal(err)
	}
	for _, tb := range tbs {
		tb.history = nil
	}
	if err := fw.Install(); err != nil { // the restart
		t.Fatal(err)
	}
	for _, tb := range tbs {
		if len(tb.history) == 0 {
			t.Fatal("the reinstall changed nothing")
		}
		for i, state := range tb.history {
			if !closed(state) {
				t.Fatalf("state %d of the reinstall: %q: the firewall was open", i, state)
			}
		}
	}
}

func TestFirewallInstallIsIdempotentAndRemovable(t *testing.T) {
	fw, tbs := newTestFirewall()
	for i := 0; i < 2; i++ {
		if err := fw.Install(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range tbs {
		in := tb.chains["filter/INPUT"]
		if len(in) != 2 || in[0] != "-i codebox0 -j CODEBOX-IN-codebox0" {
			t.Fatalf("INPUT = %q (hook must come first, once)", in)
		}
		fwd := tb.chains["filter/FORWARD"]
		if !slices.Equal(fwd, []string{"-i codebox0 -j CODEBOX-FWD-codebox0", "-o codebox0 -j CODEBOX-FWD-codebox0"}) {
			t.Fatalf("FORWARD = %q", fwd)
		}
		if pre := tb.chains["mangle/PREROUTING"]; !slices.Equal(pre, []string{"-i codebox0 -j CODEBOX-PRE-codebox0"}) {
			t.Fatalf("mangle PREROUTING = %q", pre)
		}
		fence, input := tb.chains["mangle/CODEBOX-PRE-codebox0"], tb.chains["filter/CODEBOX-IN-codebox0"]
		if !strings.Contains(fence[0], "RELATED,ESTABLISHED -j RETURN") || fence[len(fence)-1] != "-j DROP" ||
			!strings.Contains(input[0], "RELATED,ESTABLISHED -j ACCEPT") || !strings.HasPrefix(input[len(input)-1], "-j REJECT") {
			t.Fatalf("fence = %q, input chain = %q", fence, input)
		}
		if tb.proto == iptables.ProtocolIPv6 {
			if len(fence) != 2 || len(input) != 3 || tb.chains["nat/CODEBOX-NAT-codebox0"] != nil {
				t.Fatalf("IPv6: fence = %q, input = %q, nat = %q: replies alone", fence, input, tb.chains["nat/CODEBOX-NAT-codebox0"])
			}
		} else {
			// DNS and new TCP connections pass the fence, UDP is logged; the redirect sends
			// them to the egress resolver and proxy, the only ports open to the bridge.
			if !slices.Contains(fence, "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j RETURN") ||
				!slices.Contains(fence, "-p udp -j NFLOG --nflog-group 1234 --nflog-size 28") {
				t.Fatalf("fence = %q", fence)
			}
			if got := tb.chains["nat/CODEBOX-NAT-codebox0"]; len(got) != 3 || got[2] != "-p tcp -j REDIRECT --to-ports 15001" {
				t.Fatalf("redirect = %q", got)
			}
			if pre := tb.chains["nat/PREROUTING"]; !slices.Equal(pre, []string{"-i codebox0 -j CODEBOX-NAT-codebox0"}) {
				t.Fatalf("nat PREROUTING = %q", pre)
			}
			if !slices.Contains(input, "-p tcp -m tcp --dport 15001 -m conntrack --ctstate DNAT -j ACCEPT") || len(input) != 6 {
				t.Fatalf("input chain = %q", input)
			}
		}
		if got := tb.chains["filter/CODEBOX-FWD-codebox0"]; len(got) != 1 || got[0] != "-j DROP" {
			t.Fatalf("forward chain = %q", got)
		}
	}
	if p, err := fw.Verify(); err != nil || len(p) != 0 {
		t.Fatalf("Verify after Install: %q, %v", p, err)
	}
	for i := 0; i < 2; i++ {
		if err := fw.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range tbs {
		if len(tb.chains) != 4 || len(tb.chains["filter/INPUT"]) != 1 || len(tb.chains["filter/FORWARD"]) != 0 ||
			len(tb.chains["mangle/PREROUTING"]) != 0 || len(tb.chains["nat/PREROUTING"]) != 0 {
			t.Fatalf("after Remove: %v", tb.chains)
		}
	}
}

// TestRepairPutsTheHooksBackFirst: other software (Calico, dockerd) inserts its own rules
// at the top of the built-in chains. Repair finds it, puts the hooks first again in one
// transaction that never leaves the bridge open, and keeps the other rules below.
func TestRepairPutsTheHooksBackFirst(t *testing.T) {
	fw, tbs := newTestFirewall()
	if err := fw.Install(); err != nil {
		t.Fatal(err)
	}
	for _, tb := range tbs {
		for _, c := range []string{"filter/INPUT", "filter/FORWARD", "mangle/PREROUTING"} {
			tb.chains[c] = slices.Insert(tb.chains[c], 0, "-i codebox0 -j ACCEPT")
		}
		tb.chains["filter/CODEBOX-FWD-codebox0"] = []string{} // and someone flushed a chain
		tb.history = nil
	}
	problems, err := fw.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 8 { // per family: 3 built-in chains, 1 chain of ours (nat untouched)
		t.Fatalf("Verify found %d problems, want 8: %q", len(problems), problems)
	}
	repaired, err := fw.Repair()
	if err != nil {
		t.Fatal(err)
	}
	if len(repaired) != 8 {
		t.Fatalf("Repair says %q", repaired)
	}
	for _, tb := range tbs {
		if got := tb.chains["filter/FORWARD"]; !slices.Equal(got, []string{"-i codebox0 -j CODEBOX-FWD-codebox0", "-o codebox0 -j CODEBOX-FWD-codebox0", "-i codebox0 -j ACCEPT"}) {
			t.Fatalf("FORWARD after repair = %q", got)
		}
		if got := tb.chains["filter/INPUT"]; !slices.Equal(got, []string{"-i codebox0 -j CODEBOX-IN-codebox0", "-i codebox0 -j ACCEPT", "-j ACCEPT-OTHER"}) {
			t.Fatalf("INPUT after repair = %q", got)
		}
		if got := tb.chains["mangle/PREROUTING"]; got[0] != "-i codebox0 -j CODEBOX-PRE-codebox0" {
			t.Fatalf("PREROUTING after repair = %q", got)
		}
		// The transaction replaced the chains whole: the state before it (with the foreign
		// ACCEPTs first) was open, but no state it made was more open than that.
		if tables := map[iptables.Protocol]int{iptables.ProtocolIPv4: 3, iptables.ProtocolIPv6: 2}[tb.proto]; len(tb.history) != tables {
			t.Fatalf("the repair took %d steps, want one per table (%d)", len(tb.history), tables)
		}
		if !closed(tb.history[len(tb.history)-1]) {
			t.Fatalf("after the repair: %q", tb.history[len(tb.history)-1])
		}
	}
	if again, err := fw.Repair(); err != nil || len(again) != 0 {
		t.Fatalf("a second Repair: %q, %v", again, err)
	}
}
