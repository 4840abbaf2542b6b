// Package netns owns the workers' networking: one network namespace per worker, wired by
// CNI (go-cni, bridge + host-local) into codeboxd's bridge.
//
// CNI calls are serialised: the bridge and host-local plugins lock their own state, but
// parallel ADD/DEL on one bridge has raced in the past and costs little to avoid.
package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/pkg/netns"
	gocni "github.com/containerd/go-cni"
	cnins "github.com/containernetworking/plugins/pkg/ns"
)

// Config describes the worker network.
type Config struct {
	Bridge     string   // bridge device, e.g. codebox0; also the CNI network's name
	Subnet     string   // IPv4 CIDR the workers' addresses come from
	PluginDirs []string // where the CNI plugin binaries are
}

// DefaultConfig is the network of a stock install.
func DefaultConfig() Config {
	return Config{
		Bridge:     "codebox0",
		Subnet:     "10.213.0.0/16",
		PluginDirs: []string{"/usr/lib/cni", "/opt/cni/bin"},
	}
}

// NetNSDirFor is where the namespaces of bridge's workers live.
func NetNSDirFor(bridge string) string { return "/run/codebox/netns/" + bridge }

// Network attaches workers to the bridge.
type Network struct {
	cfg   Config
	nsDir string // where the namespaces are bind-mounted
	cni   gocni.CNI
	mu    sync.Mutex // serialises CNI calls
}

// Attachment is a worker's place on the network.
type Attachment struct {
	NetNSPath string
	IP        net.IP
}

// New loads the CNI configuration for cfg.
func New(cfg Config) (*Network, error) {
	if !ValidBridge(cfg.Bridge) {
		return nil, fmt.Errorf("bridge name %q: want 1-15 characters of a-z 0-9 -", cfg.Bridge)
	}
	if _, _, err := net.ParseCIDR(cfg.Subnet); err != nil {
		return nil, fmt.Errorf("worker subnet: %w", err)
	}
	conflist, err := confList(cfg)
	if err != nil {
		return nil, err
	}
	c, err := gocni.New(gocni.WithPluginDir(cfg.PluginDirs), gocni.WithInterfacePrefix("eth"),
		gocni.WithMinNetworkCount(2))
	if err != nil {
		return nil, fmt.Errorf("cni: %w", err)
	}
	// The bridge network loads first so the worker's interface is eth0.
	if err := c.Load(gocni.WithConfListBytes(conflist), gocni.WithLoNetwork); err != nil {
		return nil, fmt.Errorf("load cni config: %w", err)
	}
	return &Network{cfg: cfg, nsDir: NetNSDirFor(cfg.Bridge), cni: c}, nil
}

func confList(cfg Config) ([]byte, error) {
	// cniVersion 1.0.0 is the newest Debian 12's plugins (1.1.1) speak.
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       cfg.Bridge,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      cfg.Bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": false,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": cfg.Subnet}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
		},
	})
}

// Attach makes a network namespace for worker id and wires it to the bridge. On failure
// nothing is left behind.
func (n *Network) Attach(ctx context.Context, id string) (_ *Attachment, err error) {
	if err := os.MkdirAll(n.nsDir, 0o755); err != nil {
		return nil, fmt.Errorf("netns dir: %w", err)
	}
	ns, err := netns.NewNetNS(n.nsDir)
	if err != nil {
		return nil, fmt.Errorf("create netns for %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			if rerr := ns.Remove(); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove netns: %w", rerr))
			}
		}
	}()

	// IPv6 off, set from the host: the worker has no business with the link-local
	// addresses its veth gets, and in its own user namespace it may not write the
	// namespace's sysctls itself.
	if err := ns.Do(func(cnins.NetNS) error { return disableIPv6() }); err != nil {
		return nil, fmt.Errorf("netns of %s: %w", id, err)
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	res, err := n.cni.Setup(ctx, id, ns.GetPath())
	if err != nil {
		return nil, fmt.Errorf("cni setup for %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			if rerr := n.cni.Remove(context.WithoutCancel(ctx), id, ns.GetPath()); rerr != nil {
				err = errors.Join(err, fmt.Errorf("cni remove: %w", rerr))
			}
		}
	}()
	iface, ok := res.Interfaces["eth0"]
	if !ok {
		return nil, fmt.Errorf("cni setup for %s: no eth0 in result", id)
	}
	for _, ipc := range iface.IPConfigs {
		if ip4 := ipc.IP.To4(); ip4 != nil {
			return &Attachment{NetNSPath: ns.GetPath(), IP: ip4}, nil
		}
	}
	return nil, fmt.Errorf("cni setup for %s: no IPv4 address on eth0", id)
}

// disableIPv6 turns IPv6 off in the calling thread's network namespace.
func disableIPv6() error {
	for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("disable IPv6: %w", err)
		}
	}
	return nil
}

// Detach unwires worker id and removes its namespace. What is already gone is not an
// error, so Detach also finishes what a crash left.
func (n *Network) Detach(ctx context.Context, id, nsPath string) error {
	n.mu.Lock()
	err := n.cni.Remove(ctx, id, nsPath)
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("cni remove for %s: %w", id, err)
	}
	if nsPath == "" {
		return nil
	}
	if _, serr := os.Stat(nsPath); errors.Is(serr, os.ErrNotExist) {
		return nil
	}
	if err := netns.LoadNetNS(nsPath).Remove(); err != nil {
		return fmt.Errorf("remove netns %s: %w", nsPath, err)
	}
	return nil
}

// cniResults is where libcni caches ADD results, one file per network, container and
// interface: "<network>-<id>-eth0".
const cniResults = "/var/lib/cni/results"

// cniNetworks is where host-local keeps the address allocations of each network.
const cniNetworks = "/var/lib/cni/networks"

// Sweep removes network state that belongs to no live worker: CNI allocations of workers
// not in alive, and network namespaces under the netns dir that no live worker uses. alive
// maps worker id to its netns path. It returns what it removed.
//
// An allocation is found by libcni's result cache, and, for a codeboxd killed during the
// ADD (host-local had reserved the address, libcni had not cached the result yet), by
// host-local's reservation file, which names the container. Call it while no worker is
// being attached: an ADD in flight looks the same.
func (n *Network) Sweep(ctx context.Context, alive map[string]string) ([]string, error) {
	var removed []string
	var errs []error
	inUse := map[string]bool{}
	for _, p := range alive {
		inUse[p] = true
	}
	// The containers with an allocation: libcni's results, then host-local's reservations.
	prefix := n.cfg.Bridge + "-"
	var ids []string
	results, _ := filepath.Glob(filepath.Join(cniResults, prefix+"*-eth0"))
	for _, r := range results {
		ids = append(ids, strings.TrimSuffix(strings.TrimPrefix(filepath.Base(r), prefix), "-eth0"))
	}
	ids = append(ids, reservedBy(filepath.Join(cniNetworks, n.cfg.Bridge))...)
	done := map[string]bool{}
	for _, id := range ids {
		if _, ok := alive[id]; ok || id == "" || done[id] {
			continue
		}
		done[id] = true
		// An empty netns path tells the plugins the namespace is gone: they release the
		// address and skip the interface.
		n.mu.Lock()
		err := n.cni.Remove(ctx, id, "")
		n.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("cni remove for %s: %w", id, err))
			continue
		}
		removed = append(removed, "cni allocation of "+id)
	}
	entries, err := os.ReadDir(n.nsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		p := filepath.Join(n.nsDir, e.Name())
		if inUse[p] {
			continue
		}
		if err := netns.LoadNetNS(p).Remove(); err != nil {
			errs = append(errs, fmt.Errorf("remove netns %s: %w", p, err))
			continue
		}
		removed = append(removed, "netns "+p)
	}
	if len(alive) == 0 && len(errs) == 0 {
		// No worker left: the directories of the bridge's namespaces and of its address
		// allocations go too (host-local keeps a lock file and the last reserved address
		// there, which a new allocation does not need).
		for _, dir := range []string{n.nsDir, filepath.Join(cniNetworks, n.cfg.Bridge)} {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// reservedBy lists the containers host-local reserved addresses for in dir: each address is
// a file named for it, holding the container id, then "\r\n" and the interface.
func reservedBy(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var ids []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) == nil {
			continue // "lock", "last_reserved_ip.0"
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 512))
		f.Close()
		id, _, _ := strings.Cut(string(b), "\n")
		if id = strings.TrimSpace(id); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// ValidBridge reports whether name can be a bridge (and CNI network, and chain suffix).
func ValidBridge(name string) bool {
	if name == "" || len(name) > 15 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
