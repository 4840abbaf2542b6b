package daemon

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/egress"
)

// Sessions' network policies (SPEC 3.12): the daemon tells the egress server which worker
// serves which session under which policy, changes a policy at runtime, and hands a call's
// denials to its answer. The egress package decides every DNS question, connection and
// datagram.

// egressPolicy is what the daemon uses of egress.Server (a no-op in the unit tests).
type egressPolicy interface {
	Assign(ip netip.Addr, owner string, p *egress.Policy)
	SetPolicy(owner string, p *egress.Policy)
	Release(ip netip.Addr)
	Forget(owner string)
	Events(owner string, since uint64, limit int) ([]egress.Event, uint64, uint64)
	Mark(owner string) uint64
	Denials(owner string, since uint64, n int) ([]egress.Event, int)
	Watch(owner string, fn func(egress.Event)) func()
}

// noEgress is the egress of a daemon without one: nothing is decided, nothing recorded.
type noEgress struct{}

func (noEgress) Assign(netip.Addr, string, *egress.Policy) {}
func (noEgress) SetPolicy(string, *egress.Policy)          {}
func (noEgress) Release(netip.Addr)                        {}
func (noEgress) Forget(string)                             {}
func (noEgress) Events(string, uint64, int) ([]egress.Event, uint64, uint64) {
	return nil, 0, 0
}
func (noEgress) Mark(string) uint64                                { return 0 }
func (noEgress) Denials(string, uint64, int) ([]egress.Event, int) { return nil, 0 }
func (noEgress) Watch(string, func(egress.Event)) func()           { return func() {} }

// owner is how the egress server names a session.
func (k sessionKey) owner() string { return k.tenant + "\x00" + k.id }

// workerAddr is a worker's address on the bridge.
func workerAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// PresetPackages opens the host's package cache (SPEC 3.13).
const PresetPackages = "packages"

// parseNetwork checks a session's network policy; nil is none (it reaches nothing).
func (d *Daemon) parseNetwork(p *api.NetworkPolicy) (*egress.Policy, error) {
	if p == nil {
		return nil, nil
	}
	policy, err := egress.Parse(p.Allow)
	if err != nil {
		return nil, api.Refuse("network.allow", "%s", err.Error())
	}
	if len(p.Presets) > 1 {
		return nil, api.Refuse("network.presets", "network.presets has %d entries; this host has one preset, %q", len(p.Presets), PresetPackages)
	}
	for _, name := range p.Presets {
		switch {
		case name != PresetPackages:
			return nil, api.Refuse("network.presets", "network.presets %q: this host's only preset is %q", api.Echo(name), PresetPackages)
		case !d.cfg.Packages:
			return nil, api.Refuse("network.presets", "network.presets %q: this host serves no package cache (codeboxd --pypi-upstream, --npm-upstream)", PresetPackages)
		}
		policy.Packages = true
	}
	return policy, nil
}

func (d *Daemon) networkView(p *egress.Policy) api.NetworkPolicy {
	allow := p.Texts()
	if allow == nil {
		allow = []string{}
	}
	v := api.NetworkPolicy{Allow: allow}
	if d.cfg.Packages && (d.cfg.PackagesDefault || (p != nil && p.Packages)) {
		v.Presets = []string{PresetPackages}
	}
	return v
}

func eventView(e egress.Event) api.NetworkEvent {
	return api.NetworkEvent{Seq: e.Seq, Time: e.Time, Kind: e.Kind, Name: e.Name, IP: e.IP, Port: e.Port,
		Decision: e.Decision, Reason: e.Reason, Rule: e.Rule, BytesOut: e.BytesOut, BytesIn: e.BytesIn}
}

// SetNetwork implements api.Backend: PUT /api/v1/sessions/{id}/network.
func (d *Daemon) SetNetwork(ctx context.Context, id string, p api.NetworkPolicy) (*api.Session, error) {
	return d.UpdateSession(ctx, id, api.UpdateSessionRequest{Network: &p})
}

// NetworkEvents implements api.Backend.
func (d *Daemon) NetworkEvents(ctx context.Context, id string, since uint64, limit int) (*api.NetworkEvents, error) {
	key, _, err := d.existing(ctx, id)
	if err != nil {
		return nil, err
	}
	events, next, dropped := d.egress.Events(key.owner(), since, limit)
	out := &api.NetworkEvents{Events: make([]api.NetworkEvent, 0, len(events)), NextSeq: next, Dropped: dropped}
	for _, e := range events {
		out.Events = append(out.Events, eventView(e))
	}
	return out, nil
}

// maxStreamedDenials is how many network events a call's stream carries.
const maxStreamedDenials = 100

// watchCall follows a call of session key: st (when streaming) gets each denial as it
// happens; the returned func stops that and puts the call's denials into resp.
func (d *Daemon) watchCall(key sessionKey, st api.Streamer) func(resp *api.ExecuteResponse) {
	owner := key.owner()
	mark := d.egress.Mark(owner)
	stop := func() {}
	if st != nil {
		// The first denials of a call stream as they happen; past that its answer still
		// counts them all (a worker can cause thousands a second).
		var streamed atomic.Int32
		stop = d.egress.Watch(owner, func(e egress.Event) {
			if e.Decision == egress.DecisionDenied && streamed.Add(1) <= maxStreamedDenials {
				v := eventView(e)
				st.Stream(api.Event{Type: api.EventNetwork, Network: &v})
			}
		})
	}
	return func(resp *api.ExecuteResponse) {
		stop()
		if resp == nil {
			return
		}
		denials, total := d.egress.Denials(owner, mark, api.MaxNetworkDenials)
		for _, e := range denials {
			resp.NetworkDenials = append(resp.NetworkDenials, eventView(e))
		}
		resp.NetworkDenialsTotal = total
	}
}
