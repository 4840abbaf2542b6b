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
	"net"
	"os"
	"sync"

	"github.com/containerd/containerd/v2/pkg/netns"
	gocni "github.com/containerd/go-cni"
)

// Config describes the worker network.
type Config struct {
	Bridge     string   // bridge device, e.g. codebox0
	Subnet     string   // IPv4 CIDR the workers' addresses come from
	PluginDirs []string // where the CNI plugin binaries are
	NetNSDir   string   // where the namespaces are bind-mounted
}

// DefaultConfig is the network of a stock install.
func DefaultConfig() Config {
	return Config{
		Bridge:     "codebox0",
		Subnet:     "10.213.0.0/16",
		PluginDirs: []string{"/usr/lib/cni", "/opt/cni/bin"},
		NetNSDir:   "/run/codebox/netns",
	}
}

// Network attaches workers to the bridge.
type Network struct {
	cfg Config
	cni gocni.CNI
	mu  sync.Mutex // serialises CNI calls
}

// Attachment is a worker's place on the network.
type Attachment struct {
	NetNSPath string
	IP        net.IP
}

// New loads the CNI configuration for cfg.
func New(cfg Config) (*Network, error) {
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
	return &Network{cfg: cfg, cni: c}, nil
}

func confList(cfg Config) ([]byte, error) {
	// cniVersion 1.0.0 is the newest Debian 12's plugins (1.1.1) speak.
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "codebox",
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
	if err := os.MkdirAll(n.cfg.NetNSDir, 0o755); err != nil {
		return nil, fmt.Errorf("netns dir: %w", err)
	}
	ns, err := netns.NewNetNS(n.cfg.NetNSDir)
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
