package firewall

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fakeTables keeps chains as lists of rule strings, and every state a packet could meet
// (one per operation: a restore is one transaction).
type fakeTables struct {
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

func newFake() *fakeTables {
	return &fakeTables{chains: map[string][]string{"filter/INPUT": {"-j ACCEPT-OTHER"}, "filter/FORWARD": {}}}
}

func key(table, chain string) string { return table + "/" + chain }

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

// checkTarget fails like iptables does when a rule jumps to a chain that does not exist.
func (f *fakeTables) checkTarget(table string, spec []string) error {
	if i := slices.Index(spec, "-j"); i >= 0 && i+1 < len(spec) && strings.HasPrefix(spec[i+1], "CODEBOX-") {
		if _, ok := f.chains[key(table, spec[i+1])]; !ok {
			return fmt.Errorf("chain '%s' does not exist", spec[i+1])
		}
	}
	return nil
}

func (f *fakeTables) Exists(table, chain string, spec ...string) (bool, error) {
	if err := f.checkTarget(table, spec); err != nil {
		return false, err
	}
	return slices.Contains(f.chains[key(table, chain)], strings.Join(spec, " ")), nil
}

// Restore applies iptables-restore --noflush input to the filter table in one step.
func (f *fakeTables) Restore(rules string) error {
	next := map[string][]string{}
	for k, v := range f.chains {
		next[k] = slices.Clone(v)
	}
	for _, line := range strings.Split(strings.TrimSpace(rules), "\n") {
		fields := strings.Fields(line)
		switch {
		case line == "*filter" || line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			next[key("filter", strings.TrimPrefix(fields[0], ":"))] = []string{}
		case fields[0] == "-A":
			c, ok := next[key("filter", fields[1])]
			if !ok {
				return fmt.Errorf("no chain %s", fields[1])
			}
			next[key("filter", fields[1])] = append(c, strings.Join(fields[2:], " "))
		case fields[0] == "-I" && fields[2] == "1":
			c, ok := next[key("filter", fields[1])]
			if !ok {
				return fmt.Errorf("no chain %s", fields[1])
			}
			next[key("filter", fields[1])] = slices.Insert(c, 0, strings.Join(fields[3:], " "))
		default:
			return fmt.Errorf("fake restore: cannot read %q", line)
		}
	}
	f.chains = next
	f.record()
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

// TestReinstallNeverOpensTheFirewall: codeboxd installs the firewall at every start, with
// workers of the earlier codeboxd running. Before, it emptied the chains and then refilled
// them rule by rule: in between, a hooked chain was empty and the workers' packets fell
// through to the host's own rules.
func TestReinstallNeverOpensTheFirewall(t *testing.T) {
	v4, v6 := newFake(), newFake()
	fw := &Firewall{bridge: "codebox0", tables: []iptablesAPI{v4, v6}, netfilter: func() error { return nil }}
	if err := fw.Install(); err != nil {
		t.Fatal(err)
	}
	for _, tb := range []*fakeTables{v4, v6} {
		tb.history = nil
	}
	if err := fw.Install(); err != nil { // the restart
		t.Fatal(err)
	}
	for _, tb := range []*fakeTables{v4, v6} {
		if len(tb.history) == 0 {
			t.Fatal("the reinstall changed nothing")
		}
		for i, state := range tb.history {
			in, fwd := state["filter/CODEBOX-IN-codebox0"], state["filter/CODEBOX-FWD-codebox0"]
			if len(in) == 0 || in[len(in)-1] != "-j REJECT" || len(fwd) == 0 || fwd[len(fwd)-1] != "-j DROP" {
				t.Fatalf("state %d of the reinstall: input chain %q, forward chain %q: the firewall was open", i, in, fwd)
			}
		}
	}
}

func TestFirewallInstallIsIdempotentAndRemovable(t *testing.T) {
	v4, v6 := newFake(), newFake()
	fw := &Firewall{bridge: "codebox0", tables: []iptablesAPI{v4, v6}, netfilter: func() error { return nil }}
	for i := 0; i < 2; i++ {
		if err := fw.Install(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range []*fakeTables{v4, v6} {
		in := tb.chains["filter/INPUT"]
		if len(in) != 2 || in[0] != "-i codebox0 -j CODEBOX-IN-codebox0" {
			t.Fatalf("INPUT = %q (hook must come first, once)", in)
		}
		fwd := tb.chains["filter/FORWARD"]
		if len(fwd) != 2 || !slices.Contains(fwd, "-i codebox0 -j CODEBOX-FWD-codebox0") || !slices.Contains(fwd, "-o codebox0 -j CODEBOX-FWD-codebox0") {
			t.Fatalf("FORWARD = %q", fwd)
		}
		if got := tb.chains["filter/CODEBOX-IN-codebox0"]; len(got) != 2 || !strings.Contains(got[0], "RELATED,ESTABLISHED -j ACCEPT") || got[1] != "-j REJECT" {
			t.Fatalf("input chain = %q", got)
		}
		if got := tb.chains["filter/CODEBOX-FWD-codebox0"]; len(got) != 1 || got[0] != "-j DROP" {
			t.Fatalf("forward chain = %q", got)
		}
	}
	for i := 0; i < 2; i++ {
		if err := fw.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range []*fakeTables{v4, v6} {
		if len(tb.chains) != 2 || len(tb.chains["filter/INPUT"]) != 1 || len(tb.chains["filter/FORWARD"]) != 0 {
			t.Fatalf("after Remove: %v", tb.chains)
		}
	}
}
