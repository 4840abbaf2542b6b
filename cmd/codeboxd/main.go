// Command codeboxd is the codebox daemon: stateful, isolated code-interpreter sessions in
// containerd workers, served over a REST API (docs/API.md). This file only wires the packages.
//
//	codeboxd [flags]                  run the daemon
//	codeboxd cleanup [--all] [flags]  remove leftovers of workers that are gone (with --all:
//	                                  every worker), and the firewall once no worker is left
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/apiserver"
	"github.com/codebox/codebox/connguard"
	"github.com/codebox/codebox/console"
	"github.com/codebox/codebox/daemon"
	"github.com/codebox/codebox/egress"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/firewall"
	"github.com/codebox/codebox/keys"
	"github.com/codebox/codebox/mcpserver"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/pkgcache"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/transfer"
)

// workerLogBytes is what a worker's log file may hold (the agent's own lines, and whatever
// user code writes to the worker's init); past it, output is dropped.
const workerLogBytes = 1 << 20

// Bounds of the API's connections (package connguard): all of them; those that have carried
// no authenticated request, in all and from one address; and how long one of those may idle.
const (
	maxAPIConnections    = 4096
	maxUnauthConnections = 1024
	maxUnauthPerSource   = 256
	unauthIdle           = 10 * time.Second
)

func main() {
	args := os.Args[1:]
	cleanup := len(args) > 0 && args[0] == "cleanup"
	all := false
	if cleanup {
		args = args[1:]
		if len(args) > 0 && args[0] == "--all" {
			all, args = true, args[1:]
		}
	}
	cfg, err := parseFlags(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(usage())
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "codeboxd:", err)
		os.Exit(2)
	}
	run := serve
	if cleanup {
		run = func(cfg config) error { return cleanupHost(cfg, all) }
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "codeboxd:", err)
		os.Exit(1)
	}
}

func logger(cfg config) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, err
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

func network(cfg config) (*netns.Network, *firewall.Firewall, error) {
	netCfg := netns.DefaultConfig()
	netCfg.Subnet = cfg.WorkerSubnet
	netCfg.Bridge = cfg.WorkerBridge
	n, err := netns.New(netCfg)
	if err != nil {
		return nil, nil, err
	}
	fw, err := firewall.New(netCfg.Bridge, firewall.Egress{DNSPort: egress.DNSPort, ProxyPort: egress.ProxyPort,
		NFLOGGroup: firewall.NFLOGGroup(netCfg.Bridge)})
	if err != nil {
		return nil, nil, err
	}
	return n, fw, nil
}

// cleanupHost removes what codeboxd left: resources of workers that are gone (all: every
// worker), and the firewall chains once no worker is left, since running workers must
// stay fenced in. For ExecStopPost and operators.
func cleanupHost(cfg config, all bool) error {
	log, err := logger(cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	rt, err := runtime.Connect(ctx, cfg.ContainerdAddress, cfg.Namespace, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	n, fw, err := network(cfg)
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg.daemonConfig(), log, daemon.Deps{Runtime: rt, Network: n})
	if err != nil {
		return err
	}
	remaining, err := d.Cleanup(ctx, all)
	if err != nil {
		return err
	}
	if remaining > 0 {
		log.Info("cleanup done; workers left running, so the firewall stays", "workers", remaining)
		return nil
	}
	if err := fw.Remove(); err != nil {
		return fmt.Errorf("remove firewall: %w", err)
	}
	if err := runtime.RemoveCgroupParents(cfg.Namespace); err != nil {
		return err
	}
	log.Info("cleanup done")
	return nil
}

func serve(cfg config) error {
	log, err := logger(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	token, err := loadToken(cfg.StateDir, os.Getenv(api.TokenEnv), log)
	if err != nil {
		return err
	}
	apiKeys, err := keys.New(token, api.DefaultTenant, cfg.APIKeys)
	if err != nil {
		return err
	}
	rt, err := runtime.Connect(ctx, cfg.ContainerdAddress, cfg.Namespace, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := rt.LogTo(filepath.Join(filepath.Dir(exe), runtime.LogSinkName), workerLogBytes); err != nil {
		return fmt.Errorf("%w (it is installed next to codeboxd)", err)
	}
	agentDir, err := findAgent(cfg.AgentDir, exe)
	if err != nil {
		return err
	}
	images, err := ensureImages(ctx, rt, cfg.environments, log)
	if err != nil {
		return err
	}
	n, fw, err := network(cfg)
	if err != nil {
		return err
	}
	// Workers' inotify use is charged to root (see runtime.EnsureHostLimits).
	if err := runtime.EnsureHostLimits(cfg.MaxTotalWorkers); err != nil {
		return err
	}
	page, err := console.New()
	if err != nil {
		return err
	}
	// The firewall goes up before any worker exists.
	if err := fw.Install(); err != nil {
		return fmt.Errorf("install firewall: %w", err)
	}
	go fw.Keep(ctx, cfg.FirewallCheck, log)
	// The workers' only way out: their resolver and proxy, before any worker exists.
	cache, err := packageCache(cfg, log)
	if err != nil {
		return err
	}
	eg, resolvConf, err := startEgress(ctx, cfg, cache, log)
	if err != nil {
		return err
	}
	dcfg := cfg.daemonConfig()
	dcfg.AgentDir, dcfg.ResolvConf = agentDir, resolvConf
	dcfg.SessionEnv = sessionEnv(cfg, cache)
	dcfg.Packages, dcfg.PackagesDefault = cache != nil, cache != nil && cfg.PackagesDefault
	deps := daemon.Deps{Runtime: rt, Network: n, Images: images, Egress: eg}
	if cache != nil {
		deps.Collectors = cache.Collectors()
	}
	d, err := daemon.New(dcfg, log, deps)
	if err != nil {
		return err
	}
	tools, err := mcpserver.New(mcpserver.Config{Backend: d, Log: log, SessionTimeout: cfg.IdleTimeout,
		MaxExecTimeout: cfg.MaxExecTimeout, Version: version()})
	if err != nil {
		d.Close(context.Background())
		return err
	}
	if err := d.Recover(ctx); err != nil {
		return err
	}

	var cert *certificate
	if cfg.TLSCert != "" {
		if cert, err = loadCertificate(cfg.TLSCert, cfg.TLSKey); err != nil {
			d.Close(context.Background())
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		d.Close(context.Background())
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	trusted := cfg.trustedProxies()
	// Thousands of callers without a key holding connections (idle, or trickling bodies)
	// must lock out neither callers with one nor /healthz.
	guard := connguard.New(connguard.Config{Max: maxAPIConnections, MaxUnauthenticated: maxUnauthConnections,
		PerSource: maxUnauthPerSource, UnauthenticatedIdle: unauthIdle, Log: log,
		Trusted: func(ip net.IP) bool {
			a, ok := netip.AddrFromSlice(ip)
			return ok && slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(a.Unmap()) })
		}})
	authFailures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "codebox_auth_failures_total",
		Help: "Requests refused for a missing or invalid key or token."}, []string{"reason"})
	handler := apiserver.NewHandler(d, apiserver.ServerConfig{Auth: authenticator{keys: apiKeys, sessions: d},
		AuthFailed: func(reason string) { authFailures.WithLabelValues(reason).Inc() }, CORSOrigins: cfg.corsOrigins(), Log: log,
		MaxFileBytes: int64(cfg.MaxFileMB) << 20, FileTimeout: cfg.FileTimeout, MaxExecTimeout: cfg.MaxExecTimeout,
		Console: page, MCP: tools, TrustedProxies: trusted, HeldBytes: int64(cfg.RequestMemoryMB) << 20})
	srv := &http.Server{
		Handler: handler,
		// The handlers set the body and answer deadlines of each call (apiserver.ServerConfig); the
		// server bounds what comes before and between calls.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnState:         guard.ConnState,
		ConnContext:       guard.ConnContext,
	}
	serveErr := make(chan error, 2)
	if cert != nil {
		srv.TLSConfig = cert.config()
		go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if cfg.APIKeys != "" {
				if n, err := apiKeys.Reload(token, cfg.APIKeys); err != nil {
					log.Error("SIGHUP: API keys not reloaded; the ones in use stay", "err", err)
				} else {
					log.Info("SIGHUP: API keys reloaded", "keys", n)
				}
			}
			if cert == nil {
				continue
			}
			if err := cert.reload(); err != nil {
				log.Error("SIGHUP: TLS certificate not reloaded; the one in use stays", "err", err)
				continue
			}
			log.Info("SIGHUP: TLS certificate reloaded", "cert", cfg.TLSCert)
		}
	}()
	if cfg.MetricsListen != "" {
		msrv, err := metricsServer(cfg.MetricsListen, cfg.Pprof, d, guard, authFailures)
		if err != nil {
			d.Close(context.Background())
			return err
		}
		defer msrv.Close()
	}
	d.Start()
	log.Info("codeboxd ready", "listen", ln.Addr().String(), "metrics", cfg.MetricsListen, "environments", len(cfg.environments), "image", cfg.WorkerImage, "namespace", cfg.Namespace)
	notifyReady(ctx, d, log)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		sdnotify.SdNotify(false, sdnotify.SdNotifyStopping)
	case err = <-serveErr:
		log.Error("API server stopped", "err", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The websockets finish their running calls meanwhile; Shutdown does not wait for them.
	streamsDone := make(chan struct{})
	go func() { handler.Shutdown(shutCtx); close(streamsDone) }()
	if serr := srv.Shutdown(shutCtx); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		log.Warn("API shutdown", "err", serr)
	}
	<-streamsDone
	if cerr := d.Close(shutCtx); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// metricsServer serves Prometheus metrics (the daemon's, Go's and the process's) on addr,
// and, withPprof, Go's profiles.
func metricsServer(addr string, withPprof bool, d *daemon.Daemon, guard *connguard.Guard, more ...prometheus.Collector) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(more...)
	connGauge := func(name, help string, f func(connguard.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(guard.Stats()) })
	}
	connCounter := func(name, help string, f func(connguard.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(guard.Stats()) })
	}
	reg.MustRegister(
		connGauge("codebox_api_connections", "Open API connections.", func(s connguard.Stats) float64 { return float64(s.Open) }),
		connGauge("codebox_api_connections_unauthenticated", "Open API connections that carried no authenticated request.",
			func(s connguard.Stats) float64 { return float64(s.Unauthenticated) }),
		connCounter("codebox_api_connections_refused_total", "New API connections closed at once: a connection bound was reached.",
			func(s connguard.Stats) float64 { return float64(s.Refused) }),
		connCounter("codebox_api_connections_evicted_total", "Idle unauthenticated API connections closed to make room.",
			func(s connguard.Stats) float64 { return float64(s.Evicted) }),
		connCounter("codebox_api_connections_expired_total", "Unauthenticated API connections closed for idling.",
			func(s connguard.Stats) float64 { return float64(s.Expired) }),
	)
	if err := d.Register(reg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: metricsHandler(reg, withPprof), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		// A profile or trace lasts ?seconds= (30 by default): within a minute and a half.
		WriteTimeout: 90 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go srv.Serve(ln)
	return srv, nil
}

// metricsHandler serves reg's metrics and, withPprof, Go's profiles.
func metricsHandler(reg *prometheus.Registry, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if withPprof {
		// Profiles for operators, when asked for. Only for a Host that names loopback: a web
		// page that made the operator's browser resolve its own name to 127.0.0.1 (DNS
		// rebinding) names itself.
		profiles := http.NewServeMux()
		profiles.HandleFunc("/debug/pprof/", pprof.Index)
		profiles.HandleFunc("/debug/pprof/profile", pprof.Profile)
		profiles.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.Handle("/debug/pprof/", loopbackHostOnly(profiles))
	}
	return mux
}

// loopbackHostOnly serves only requests whose Host header is a loopback address or
// "localhost".
func loopbackHostOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			host = hh
		}
		ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
		if host != "localhost" && (err != nil || !ip.IsLoopback()) {
			http.Error(w, "profiles are served for a loopback Host only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// notifyReady tells systemd (Type=notify) the daemon is ready, containerd answering, the
// image present and the API listening, and reports the pre-warm in STATUS lines. Without
// systemd it does nothing.
func notifyReady(ctx context.Context, d *daemon.Daemon, log *slog.Logger) {
	if _, err := sdnotify.SdNotify(false, sdnotify.SdNotifyReady); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	go func() {
		for !d.Warm() {
			st := d.Status()
			sdnotify.SdNotify(false, fmt.Sprintf("STATUS=pre-warming: %d of %d idle workers ready", st.IdleWorkers, st.MinIdleWorkers))
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		sdnotify.SdNotify(false, "STATUS=serving")
	}()
}

// version is the build's revision, which the MCP endpoint reports.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return s.Value[:12]
			}
		}
	}
	return "dev"
}

// authenticator is the API's: a session's access token reaches its session; any other
// credential is a key of --api-keys or the API token.
type authenticator struct {
	keys     *keys.Set
	sessions interface {
		SessionToken(token string) (api.Caller, bool)
	}
}

func (a authenticator) Authenticate(cred string) (api.Caller, bool) {
	if strings.HasPrefix(cred, api.AccessTokenPrefix) {
		return a.sessions.SessionToken(cred)
	}
	k, ok := a.keys.Lookup(cred)
	if !ok {
		return api.Caller{}, false
	}
	return api.Caller{Tenant: k.Name, Admin: k.Admin}, true
}

// findAgent is the kernel agent's directory: dir, or ../lib/codebox/agent beside the
// executable exe (where make install puts it), with its symbolic link resolved to the
// versioned directory (scripts/build-agent.sh), which is what workers mount. It must hold the
// agent's launcher and tini, and, as code every worker runs, be root's alone.
func findAgent(dir, exe string) (string, error) {
	if dir == "" {
		dir = filepath.Join(filepath.Dir(exe), "..", "lib", "codebox", "agent")
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("--agent-dir: %w (make build puts the agent in lib/codebox/agent, make install in PREFIX/lib/codebox/agent)", err)
	}
	if resolved, err = filepath.Abs(resolved); err != nil {
		return "", err
	}
	for _, f := range []string{"codebox_boot.py", "codebox_agent.py", "tini"} {
		if _, err := os.Stat(filepath.Join(resolved, f)); err != nil {
			return "", fmt.Errorf("--agent-dir %s: no %s (make build puts the agent in lib/codebox/agent, make install in PREFIX/lib/codebox/agent)", resolved, f)
		}
	}
	err = filepath.WalkDir(resolved, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok || st.Uid != 0 || info.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("--agent-dir: %s must be root's and writable by root alone: every worker runs it", p)
		}
		return nil
	})
	return resolved, err
}

// ensureImages brings in every environment's image, each reference once, in parallel; one
// that can be neither found, pulled nor imported stops codeboxd, naming its environment.
func ensureImages(ctx context.Context, rt *runtime.Runtime, envs []environments.Environment, log *slog.Logger) (map[string]*runtime.Image, error) {
	first := map[string]environments.Environment{} // by image reference
	var refs []string
	for _, e := range envs {
		if _, ok := first[e.Image]; !ok {
			first[e.Image] = e
			refs = append(refs, e.Image)
		}
	}
	byRef := make([]*runtime.Image, len(refs))
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := first[ref]
			if byRef[i], errs[i] = rt.EnsureImage(ctx, e.Image, e.Archive, log.With("environment", e.Name)); errs[i] != nil {
				errs[i] = fmt.Errorf("environment %q: %w", e.Name, errs[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	images := make(map[string]*runtime.Image, len(envs))
	for _, e := range envs {
		images[e.Name] = byRef[slices.Index(refs, e.Image)]
	}
	return images, nil
}

// packageCache is the package cache workers install from, when an upstream is set.
func packageCache(cfg config, log *slog.Logger) (*pkgcache.Cache, error) {
	if cfg.PyPIUpstream == "" && cfg.NPMUpstream == "" {
		return nil, nil
	}
	pc := pkgcache.Config{Dir: filepath.Join(cfg.StateDir, "package-cache"), MaxBytes: int64(cfg.PackageCacheMB) << 20,
		BaseURL: "http://" + net.JoinHostPort(workerGateway(cfg).String(), strconv.Itoa(egress.PackagePort)), Log: log}
	// The upstreams themselves may be anywhere (a devpi on loopback, a mirror on a private
	// network): their host and port, not the rest of that host; whatever else their pages
	// name must be a public address.
	guard, err := transfer.NewGuard(nil)
	if err != nil {
		return nil, err
	}
	for _, raw := range []string{cfg.PyPIUpstream, cfg.NPMUpstream} {
		if raw == "" {
			continue
		}
		u, _ := url.Parse(strings.TrimSuffix(raw, "/") + "/")
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		if err := guard.AllowHostPort(net.JoinHostPort(u.Hostname(), port)); err != nil {
			return nil, err
		}
		if raw == cfg.PyPIUpstream {
			pc.PyPI = u
		} else {
			pc.NPM = u
		}
	}
	pc.Dial = guard.DialContext
	if cfg.PackageAllowlist != "" {
		a, err := pkgcache.LoadAllowlist(cfg.PackageAllowlist)
		if err != nil {
			return nil, fmt.Errorf("--package-allowlist: %w", err)
		}
		pc.Allowlist = a
	}
	cache, err := pkgcache.New(pc)
	if err != nil {
		return nil, err
	}
	log.Info("package cache serving", "pypi", cfg.PyPIUpstream, "npm", cfg.NPMUpstream, "dir", pc.Dir,
		"max_mb", cfg.PackageCacheMB, "allowlist", cfg.PackageAllowlist != "", "default", cfg.PackagesDefault)
	return cache, nil
}

// workerGateway is the bridge's address (CNI's isGateway): the workers' resolver, proxy
// and package cache.
func workerGateway(cfg config) netip.Addr {
	subnet, _ := netip.ParsePrefix(cfg.WorkerSubnet) // validated
	return subnet.Masked().Addr().Next()
}

// sessionEnv is what every session's agent gets beneath the session's own env: pip and
// npm install onto the session's disk (/sandbox), from the package cache when there is one.
func sessionEnv(cfg config, cache *pkgcache.Cache) map[string]string {
	env := map[string]string{
		"PYTHONUSERBASE": "/sandbox/.local", "PIP_USER": "1", "PIP_BREAK_SYSTEM_PACKAGES": "1",
		"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_WARN_SCRIPT_LOCATION": "1",
		"npm_config_audit": "false", "npm_config_fund": "false", "npm_config_update_notifier": "false",
	}
	if cache == nil {
		return env
	}
	gw := workerGateway(cfg).String()
	base := "http://" + net.JoinHostPort(gw, strconv.Itoa(egress.PackagePort))
	for _, eco := range cache.Serves() {
		switch eco {
		case "pypi":
			env["PIP_INDEX_URL"], env["PIP_TRUSTED_HOST"] = base+"/pypi/simple/", gw
		case "npm":
			env["npm_config_registry"] = base + "/npm/"
		}
	}
	return env
}

// startEgress starts the workers' resolver and proxy on the bridge's address, and writes
// the resolv.conf every worker gets (its one nameserver: the bridge's address).
func startEgress(ctx context.Context, cfg config, cache *pkgcache.Cache, log *slog.Logger) (*egress.Server, string, error) {
	subnet, err := netip.ParsePrefix(cfg.WorkerSubnet)
	if err != nil {
		return nil, "", err
	}
	gateway := workerGateway(cfg)
	upstream, err := cfg.egressResolver()
	if err != nil {
		return nil, "", err
	}
	private, _ := parsePrefixes(cfg.EgressPrivateAllowlist)
	ecfg := egress.Config{Gateway: gateway, Subnet: subnet.Masked(), DNSPort: egress.DNSPort,
		ProxyPort: egress.ProxyPort, Upstream: upstream, PrivateAllowlist: private,
		NFLOGGroup: firewall.NFLOGGroup(cfg.WorkerBridge), Log: log}
	if cache != nil {
		ecfg.PackagePort, ecfg.PackagesDefault = egress.PackagePort, cfg.PackagesDefault
		ecfg.Packages = func(refused func(*http.Request, string, string)) http.Handler {
			return cache.Handler(func(r *http.Request, ref pkgcache.Refusal) {
				if ref.Reason != pkgcache.ReasonNotFound {
					refused(r, ref.Reason, ref.Package)
				}
			})
		}
	}
	eg, err := egress.New(ecfg)
	if err != nil {
		return nil, "", err
	}
	if err := eg.Start(ctx); err != nil {
		return nil, "", err
	}
	path := filepath.Join(cfg.StateDir, "resolv.conf")
	conf := fmt.Sprintf("# codeboxd: the workers' resolver, which answers the names a session's network policy allows\nnameserver %s\noptions timeout:2 attempts:2\n", gateway)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, "", err
	}
	log.Info("egress serving", "resolver", netip.AddrPortFrom(gateway, egress.DNSPort).String(),
		"proxy", netip.AddrPortFrom(gateway, egress.ProxyPort).String(), "upstream", upstream)
	return eg, path, nil
}
