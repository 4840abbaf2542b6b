package netns

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fakeTables keeps chains as lists of rule strings.
type fakeTables struct{ chains map[string][]string }

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
	return nil
}
func (f *fakeTables) DeleteChain(table, chain string) error {
	if len(f.chains[key(table, chain)]) > 0 {
		return fmt.Errorf("chain %s not empty", chain)
	}
	delete(f.chains, key(table, chain))
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
func (f *fakeTables) Insert(table, chain string, pos int, spec ...string) error {
	c, ok := f.chains[key(table, chain)]
	if !ok {
		return fmt.Errorf("no chain %s", chain)
	}
	f.chains[key(table, chain)] = slices.Insert(c, pos-1, strings.Join(spec, " "))
	return nil
}
func (f *fakeTables) Append(table, chain string, spec ...string) error {
	c, ok := f.chains[key(table, chain)]
	if !ok {
		return fmt.Errorf("no chain %s", chain)
	}
	f.chains[key(table, chain)] = append(c, strings.Join(spec, " "))
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
	return nil
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
