package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/codebox/codebox/apiserver"
	"github.com/codebox/codebox/daemon"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/keys"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/pkgcache"
	"github.com/codebox/codebox/transfer"
)

// defaultWorkerImage is the image reference used when --worker-image is not given.
const defaultWorkerImage = "codebox.local/worker:slim"

// minWorkerRAMMB is the least memory a worker's kernel needs to start and run small code.
const minWorkerRAMMB = 128

// config is codeboxd's configuration: every flag, each also settable from the environment
// (CODEBOX_<FLAG>).
type config struct {
	Listen                 string
	MinIdleWorkers         int
	MaxTotalWorkers        int
	WorkerCPU              float64
	WorkerRAMMB            int
	WorkerDiskMB           int
	WorkerPids             int
	WorkerImage            string
	WorkerImageArchive     string
	WorkerSubnet           string
	WorkerBridge           string
	ExecTimeout            time.Duration
	MaxExecTimeout         time.Duration
	IdleTimeout            time.Duration
	RecycleInterval        time.Duration
	ContainerdAddress      string
	Namespace              string
	StateDir               string
	CORSOrigins            string
	LogLevel               string
	MaxFileMB              int
	MetricsListen          string
	DestroyOnStop          bool
	FileTimeout            time.Duration
	FileAllowlist          string
	FirewallCheck          time.Duration
	TrustedProxies         string
	TLSCert, TLSKey        string
	Pprof                  bool
	RequestMemoryMB        int
	APIKeys                string
	MaxSessionCPU          float64
	MaxSessionRAMMB        int
	MaxSessionDiskMB       int
	MaxSessionPids         int
	SessionTTL             time.Duration
	MaxSessionTTL          time.Duration
	EndedRetention         time.Duration
	MaxTenantSessions      int
	Environments           string
	AgentDir               string
	EgressResolver         string
	EgressPrivateAllowlist string
	PyPIUpstream           string
	NPMUpstream            string
	PackageCacheMB         int
	PackageAllowlist       string
	PackagesDefault        bool
	MaxSnapshots           int
	MaxSnapshotMB          int
	MaxVolumes             int
	MaxVolumeMB            int

	// environments are the resolved environments (validate fills them in).
	environments []environments.Environment
}

// envName is the environment variable that sets a flag: --min-idle-workers is
// CODEBOX_MIN_IDLE_WORKERS. The systemd unit's EnvironmentFile uses these names.
func envName(flagName string) string {
	return "CODEBOX_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args (without the program name), taking a flag's value from the
// environment when the flag is not on the command line. Errors are one line naming the
// flag.
func parseFlags(args []string, getenv func(string) string) (config, error) {
	var c config
	fs := newFlagSet(&c)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, oneLine(err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("invalid value %q for %s (--%s): %v", v, name, f.Name, err)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	err := c.validate()
	return c, err
}

// usage describes the flags, for --help.
func usage() string {
	var c config
	fs := newFlagSet(&c)
	var b strings.Builder
	b.WriteString("usage: codeboxd [flags]\n\nEvery flag can also be set in the environment as CODEBOX_<FLAG>,\ne.g. --min-idle-workers as CODEBOX_MIN_IDLE_WORKERS; AUTH_TOKEN sets the API token.\n\n")
	fs.SetOutput(&b)
	fs.PrintDefaults()
	return b.String()
}

func newFlagSet(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("codeboxd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Listen, "listen", ":3874", "REST API address")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "127.0.0.1:9474", "Prometheus metrics address; empty: off")
	fs.IntVar(&c.MinIdleWorkers, "min-idle-workers", 10, "idle, healthy workers kept ready")
	fs.IntVar(&c.MaxTotalWorkers, "max-total-workers", 50, "hard cap on workers (idle + busy + being created)")
	fs.Float64Var(&c.WorkerCPU, "worker-cpu", 1.5, "CPU cores per worker (CFS quota)")
	fs.IntVar(&c.WorkerRAMMB, "worker-ram-mb", 1536, "memory limit per worker, MB")
	fs.IntVar(&c.WorkerDiskMB, "worker-disk-mb", 500, "size of each worker's virtual disk, MB")
	fs.IntVar(&c.WorkerPids, "worker-pids", 512, "pids limit per worker")
	fs.StringVar(&c.WorkerImage, "worker-image", defaultWorkerImage, "worker image reference; pulled through containerd if absent")
	fs.StringVar(&c.WorkerImageArchive, "worker-image-archive", "", "OCI archive to import when the image is absent (offline hosts)")
	fs.StringVar(&c.Environments, "environments", "", "JSON file naming environments: images with their own warm pools, limits, env and seed cells (docs/ENVIRONMENTS.md); empty: the default alone")
	fs.StringVar(&c.EgressResolver, "egress-resolver", "", "host:port of the DNS server the names sessions may reach are asked of; empty: the first nameserver of /etc/resolv.conf")
	fs.StringVar(&c.EgressPrivateAllowlist, "egress-private-allowlist", "", "comma-separated private CIDRs (RFC 1918, CGNAT, ULA) a session's network rule may open; empty: none")
	fs.StringVar(&c.PyPIUpstream, "pypi-upstream", "", "a PEP 503 simple index (https://pypi.org/simple/, a mirror, devpi, Artifactory) workers install from through codeboxd's cache; empty: none")
	fs.StringVar(&c.NPMUpstream, "npm-upstream", "", "an npm registry (https://registry.npmjs.org/) workers install from through codeboxd's cache; empty: none")
	fs.IntVar(&c.PackageCacheMB, "package-cache-mb", 4096, "the package cache's files on the host (<state-dir>/package-cache), MB; the least recently used go first")
	fs.StringVar(&c.PackageAllowlist, "package-allowlist", "", "file of the packages workers may install (\"pypi NAME [SPECIFIERS]\", \"npm NAME [RANGE]\" a line); empty: any")
	fs.BoolVar(&c.PackagesDefault, "packages-default", true, "every session may use the package cache; false: only those whose network policy has the preset \"packages\"")
	fs.IntVar(&c.MaxSnapshots, "max-snapshots", 16, "snapshots one key may keep (0: none)")
	fs.IntVar(&c.MaxSnapshotMB, "max-snapshot-mb", 20480, "what all snapshots may take on the host (<state-dir>/snapshots), MB")
	fs.IntVar(&c.MaxVolumes, "max-volumes", 16, "named volumes one key may keep (0: none)")
	fs.IntVar(&c.MaxVolumeMB, "max-volume-mb", 20480, "what all volumes' sizes may add up to on the host (<state-dir>/volumes), MB")
	fs.StringVar(&c.AgentDir, "agent-dir", "", "the kernel agent's directory, mounted read-only into every worker; empty: ../lib/codebox/agent beside codeboxd")
	fs.StringVar(&c.WorkerSubnet, "worker-subnet", "10.213.0.0/16", "IPv4 subnet of the workers' bridge")
	fs.StringVar(&c.WorkerBridge, "worker-bridge", "codebox0", "bridge the workers attach to; also names the CNI network and the firewall chains")
	fs.DurationVar(&c.ExecTimeout, "exec-timeout", 30*time.Second, "default per-call execution limit")
	fs.DurationVar(&c.MaxExecTimeout, "max-exec-timeout", 300*time.Second, "largest execution limit a call may ask for")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", time.Hour, "a session unused this long is released")
	fs.DurationVar(&c.RecycleInterval, "recycle-interval", 5*time.Minute, "how often idle sessions are looked for")
	fs.StringVar(&c.ContainerdAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd socket")
	fs.StringVar(&c.Namespace, "containerd-namespace", "codebox", "containerd namespace of codeboxd's images and containers")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/codeboxd", "token file, virtual disks, mount points, logs")
	fs.StringVar(&c.CORSOrigins, "cors-origins", "*", "comma-separated origins allowed by CORS; empty: none")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&c.DestroyOnStop, "destroy-on-stop", false, "destroy every worker when stopping, instead of leaving them for the next codeboxd to adopt")
	fs.IntVar(&c.MaxFileMB, "max-file-mb", 100, "largest file a file call moves, MB")
	fs.DurationVar(&c.FileTimeout, "file-timeout", 10*time.Minute, "longest one file download or upload may take")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) file: the API, console, streams and MCP are served over TLS; reread on SIGHUP")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key file of --tls-cert")
	fs.IntVar(&c.RequestMemoryMB, "request-memory-mb", apiserver.DefaultHeldBytes>>20, "bytes of callers' requests held at once, over all callers (bodies being read, code queued or running), MB; past it, 503")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go's profiles at /debug/pprof/ on --metrics-listen (for loopback Host names only)")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", "", "comma-separated CIDRs or IPs of proxies in front of codeboxd (a load balancer): exempt from the per-address connection bound, and their X-Forwarded-For names the caller")
	fs.DurationVar(&c.FirewallCheck, "firewall-check-interval", 30*time.Second, "how often the firewall's hooks are checked and put first again when other rules got above them")
	fs.StringVar(&c.APIKeys, "api-keys", "", "file of API keys, one a line: NAME KEY [admin] (mode 0600; reread on SIGHUP); each key is a tenant whose sessions no other sees; AUTH_TOKEN stays an admin key")
	fs.Float64Var(&c.MaxSessionCPU, "max-session-cpu", 4, "the most CPU cores a session may ask for")
	fs.IntVar(&c.MaxSessionRAMMB, "max-session-ram-mb", 8192, "the most memory a session may ask for, MB")
	fs.IntVar(&c.MaxSessionDiskMB, "max-session-disk-mb", 10240, "the largest disk a session may ask for, MB")
	fs.IntVar(&c.MaxSessionPids, "max-session-pids", 4096, "the most processes a session may ask for")
	fs.DurationVar(&c.SessionTTL, "session-ttl", 0, "lifetime of a session that asks for none; 0: none")
	fs.DurationVar(&c.MaxSessionTTL, "max-session-ttl", 0, "the longest lifetime a session may have (those asking for none too); 0: no cap")
	fs.IntVar(&c.MaxTenantSessions, "max-sessions-per-tenant", 0, "the most sessions one key (tenant) runs at once; 0: no bound but --max-total-workers")
	fs.DurationVar(&c.EndedRetention, "ended-retention", 24*time.Hour, "how long why a session ended is remembered (at most 10,000 sessions)")
	fs.StringVar(&c.FileAllowlist, "file-allowlist", "", "comma-separated CIDRs, IPs or host names downloads and uploads may reach although private (e.g. an internal object store)")
	return fs
}

// oneLine turns the flag package's errors into one line naming the flag.
func oneLine(err error) error {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	msg = strings.Replace(msg, "flag provided but not defined: -", "unknown flag --", 1)
	return errors.New(msg)
}

// validate checks values against each other and the host. The first problem is reported.
// validate checks the flags and resolves the environments.
func (c *config) validate() error {
	switch {
	case c.MinIdleWorkers < 0:
		return fmt.Errorf("--min-idle-workers must be 0 or more, not %d", c.MinIdleWorkers)
	case c.MaxTotalWorkers < 1:
		return fmt.Errorf("--max-total-workers must be 1 or more, not %d", c.MaxTotalWorkers)
	case c.MaxTotalWorkers > daemon.MaxWorkers:
		return fmt.Errorf("--max-total-workers must be at most %d (the host uid ranges workers get), not %d", daemon.MaxWorkers, c.MaxTotalWorkers)
	case c.MinIdleWorkers > c.MaxTotalWorkers:
		return fmt.Errorf("--min-idle-workers (%d) must not exceed --max-total-workers (%d)", c.MinIdleWorkers, c.MaxTotalWorkers)
	case !(c.WorkerCPU > 0) || c.WorkerCPU > 1024:
		return fmt.Errorf("--worker-cpu must be more than 0 cores, not %g", c.WorkerCPU)
	case c.WorkerRAMMB < minWorkerRAMMB:
		return fmt.Errorf("--worker-ram-mb must be at least %d (what a kernel needs), not %d", minWorkerRAMMB, c.WorkerRAMMB)
	case c.WorkerDiskMB < 16:
		return fmt.Errorf("--worker-disk-mb must be at least 16, not %d", c.WorkerDiskMB)
	case c.WorkerPids < 16:
		return fmt.Errorf("--worker-pids must be at least 16, not %d", c.WorkerPids)
	case c.WorkerImage == "":
		return errors.New("--worker-image must not be empty")
	case c.ExecTimeout <= 0:
		return fmt.Errorf("--exec-timeout must be positive, not %s", c.ExecTimeout)
	case c.MaxExecTimeout < c.ExecTimeout:
		return fmt.Errorf("--max-exec-timeout (%s) must not be below --exec-timeout (%s)", c.MaxExecTimeout, c.ExecTimeout)
	case c.IdleTimeout <= 0:
		return fmt.Errorf("--idle-timeout must be positive, not %s", c.IdleTimeout)
	case c.FirewallCheck <= 0 || c.FirewallCheck > time.Minute:
		return fmt.Errorf("--firewall-check-interval must be more than 0 and at most 1m, not %s", c.FirewallCheck)
	case c.RecycleInterval <= 0:
		return fmt.Errorf("--recycle-interval must be positive, not %s", c.RecycleInterval)
	case c.ContainerdAddress == "":
		return errors.New("--containerd-address must not be empty")
	case c.Namespace == "":
		return errors.New("--containerd-namespace must not be empty")
	case !filepath.IsAbs(c.StateDir):
		return fmt.Errorf("--state-dir must be an absolute path, not %q", c.StateDir)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: %v", c.Listen, err)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: %v", c.MetricsListen, err)
		}
	}
	if ip, ipnet, err := net.ParseCIDR(c.WorkerSubnet); err != nil || ip.To4() == nil {
		return fmt.Errorf("--worker-subnet %q must be an IPv4 CIDR", c.WorkerSubnet)
	} else if ones, _ := ipnet.Mask.Size(); ones > 28 {
		return fmt.Errorf("--worker-subnet %q is too small for a pool (at most /28)", c.WorkerSubnet)
	}
	switch {
	case !(c.MaxSessionCPU >= c.WorkerCPU):
		return fmt.Errorf("--max-session-cpu (%g) must not be below --worker-cpu (%g)", c.MaxSessionCPU, c.WorkerCPU)
	case c.MaxSessionRAMMB < c.WorkerRAMMB:
		return fmt.Errorf("--max-session-ram-mb (%d) must not be below --worker-ram-mb (%d)", c.MaxSessionRAMMB, c.WorkerRAMMB)
	case c.MaxSessionDiskMB < c.WorkerDiskMB:
		return fmt.Errorf("--max-session-disk-mb (%d) must not be below --worker-disk-mb (%d)", c.MaxSessionDiskMB, c.WorkerDiskMB)
	case c.MaxSessionPids < c.WorkerPids:
		return fmt.Errorf("--max-session-pids (%d) must not be below --worker-pids (%d)", c.MaxSessionPids, c.WorkerPids)
	case c.SessionTTL < 0:
		return fmt.Errorf("--session-ttl must not be negative, not %s", c.SessionTTL)
	case c.MaxSessionTTL < 0:
		return fmt.Errorf("--max-session-ttl must not be negative, not %s", c.MaxSessionTTL)
	case c.MaxSessionTTL > 0 && c.SessionTTL > c.MaxSessionTTL:
		return fmt.Errorf("--session-ttl (%s) must not exceed --max-session-ttl (%s)", c.SessionTTL, c.MaxSessionTTL)
	case c.MaxTenantSessions < 0:
		return fmt.Errorf("--max-sessions-per-tenant must be 0 (none) or more, not %d", c.MaxTenantSessions)
	case c.EndedRetention < 0:
		return fmt.Errorf("--ended-retention must not be negative, not %s", c.EndedRetention)
	}
	if c.APIKeys != "" {
		if _, err := keys.Load(c.APIKeys); err != nil {
			return fmt.Errorf("--api-keys: %v", err)
		}
	}
	if c.RequestMemoryMB < 16 {
		return fmt.Errorf("--request-memory-mb must be at least 16 (an execute's body may hold 8 MB), not %d", c.RequestMemoryMB)
	}
	if c.MaxFileMB < 1 {
		return fmt.Errorf("--max-file-mb must be at least 1, not %d", c.MaxFileMB)
	}
	if c.FileTimeout <= 0 {
		return fmt.Errorf("--file-timeout must be positive, not %s", c.FileTimeout)
	}
	if _, err := transfer.NewGuard(splitList(c.FileAllowlist)); err != nil {
		return fmt.Errorf("--file-allowlist: %v", err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.Pprof && c.MetricsListen == "" {
		return errors.New("--pprof needs --metrics-listen")
	}
	if _, err := parsePrefixes(c.TrustedProxies); err != nil {
		return fmt.Errorf("--trusted-proxies: %v", err)
	}
	if _, err := parsePrefixes(c.EgressPrivateAllowlist); err != nil {
		return fmt.Errorf("--egress-private-allowlist: %v", err)
	}
	for flag, v := range map[string]string{"--pypi-upstream": c.PyPIUpstream, "--npm-upstream": c.NPMUpstream} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s %q must be an http or https URL", flag, v)
		}
	}
	if c.MaxSnapshots < 0 || c.MaxSnapshotMB < 0 || c.MaxVolumes < 0 || c.MaxVolumeMB < 0 {
		return fmt.Errorf("--max-snapshots, --max-snapshot-mb, --max-volumes and --max-volume-mb must be 0 or more")
	}
	if c.PackageCacheMB < 1 {
		return fmt.Errorf("--package-cache-mb must be at least 1, not %d", c.PackageCacheMB)
	}
	if c.PackageAllowlist != "" {
		if _, err := pkgcache.LoadAllowlist(c.PackageAllowlist); err != nil {
			return fmt.Errorf("--package-allowlist: %v", err)
		}
	}
	if c.EgressResolver != "" {
		if _, err := netip.ParseAddrPort(c.EgressResolver); err != nil {
			return fmt.Errorf("--egress-resolver %q must be an address and port (198.51.100.53:53): %v", c.EgressResolver, err)
		}
	}
	if !netns.ValidBridge(c.WorkerBridge) {
		return fmt.Errorf("--worker-bridge %q must be 1-15 characters of a-z 0-9 -", c.WorkerBridge)
	}
	var envs []environments.Environment
	if c.Environments != "" {
		var err error
		if envs, err = environments.Load(c.Environments); err != nil {
			return fmt.Errorf("--environments: %v", err)
		}
	}
	resolved, err := environments.Resolve(envs, environments.Defaults{Image: c.WorkerImage, Archive: c.WorkerImageArchive,
		MinIdle: c.MinIdleWorkers, MaxTotalWorkers: c.MaxTotalWorkers})
	if err != nil {
		return fmt.Errorf("--environments: %v", err)
	}
	// An archive is read only when its image is not in containerd yet (ensureImages): a
	// rebuilt recipe replaces its archive, and the image imported from the old one serves on.
	c.environments = resolved
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level must be debug, info, warn or error, not %q", c.LogLevel)
	}
	return nil
}

// trustedProxies parses --trusted-proxies (validated already).
func (c config) trustedProxies() []netip.Prefix {
	p, _ := parsePrefixes(c.TrustedProxies)
	return p
}

// parsePrefixes reads a comma-separated list of CIDRs and addresses (an address is its
// own /32 or /128).
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range splitList(s) {
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", item)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// corsOrigins splits --cors-origins.
func (c config) corsOrigins() []string { return splitList(c.CORSOrigins) }

// daemonConfig is what the daemon is told of the flags.
func (c config) daemonConfig() daemon.Config {
	return daemon.Config{
		MinIdleWorkers: c.MinIdleWorkers, MaxTotalWorkers: c.MaxTotalWorkers,
		WorkerCPU: c.WorkerCPU, WorkerRAMMB: c.WorkerRAMMB, WorkerDiskMB: c.WorkerDiskMB, WorkerPids: c.WorkerPids,
		ExecTimeout: c.ExecTimeout, MaxExecTimeout: c.MaxExecTimeout,
		IdleTimeout: c.IdleTimeout, RecycleInterval: c.RecycleInterval,
		StateDir: c.StateDir, DestroyOnStop: c.DestroyOnStop,
		MaxFileMB: c.MaxFileMB, FileTimeout: c.FileTimeout, FileAllowlist: splitList(c.FileAllowlist),
		MaxSessionCPU: c.MaxSessionCPU, MaxSessionRAMMB: c.MaxSessionRAMMB, MaxSessionDiskMB: c.MaxSessionDiskMB,
		MaxSessionPids: c.MaxSessionPids, SessionTTL: c.SessionTTL, MaxSessionTTL: c.MaxSessionTTL,
		EndedRetention: c.EndedRetention, MaxSessionsPerTenant: c.MaxTenantSessions,
		Environments: c.environments, MaxSnapshots: c.MaxSnapshots, MaxSnapshotMB: c.MaxSnapshotMB,
		MaxVolumes: c.MaxVolumes, MaxVolumeMB: c.MaxVolumeMB,
	}
}

func splitList(s string) []string {
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// egressResolver is --egress-resolver, or the first nameserver of the host's
// /etc/resolv.conf, on port 53.
func (c config) egressResolver() (string, error) {
	if c.EgressResolver != "" {
		return c.EgressResolver, nil
	}
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return "", fmt.Errorf("--egress-resolver is not set and /etc/resolv.conf cannot be read: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				return netip.AddrPortFrom(a, 53).String(), nil
			}
		}
	}
	return "", errors.New("--egress-resolver is not set and /etc/resolv.conf names no nameserver")
}
