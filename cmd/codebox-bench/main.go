// Command codebox-bench measures codebox on this host (make bench): it starts codeboxd
// twice (a cold pool, then the seed's configuration), runs the scenarios of package bench
// against it, and writes a table, results.json and PNG charts. It uses its own containerd
// namespace, bridge and state, and removes them when done. Traffic goes only to loopback
// and to the workers on its own bridge.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/bench"
	"github.com/codebox/codebox/daemon"
	"github.com/codebox/codebox/netns"
	crt "github.com/codebox/codebox/runtime"
)

const (
	namespace = "codebox-bench"
	bridge    = "cbxbench0"
	subnet    = "10.215.0.0/16"
	port      = "3875"
	// metricsPort serves the bench daemon's metrics and pprof.
	metricsPort = "9475"
)

type options struct {
	codeboxd, containerd, image, archive, out string
	agentDir                                  string
	charts                                    string
	profile, peer                             bool
	users, requests, single, warm, cold       int
	firstCell, startPath                      int
	firstPrint, firstUse, sessions, sessionMB int
	rounds                                    int
	egressRequests, egressMB                  int
	snapshots                                 bool
	budgetMB                                  int
	workerCPU                                 float64
	deadline                                  time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.codeboxd, "codeboxd", "bin/codeboxd", "the codeboxd binary")
	flag.StringVar(&o.containerd, "containerd-address", "/run/containerd/containerd.sock", "containerd socket")
	flag.StringVar(&o.image, "image", "", "worker image reference")
	flag.StringVar(&o.archive, "archive", "", "worker image archive")
	flag.StringVar(&o.agentDir, "agent-dir", "", "the agent's directory for codeboxd's --agent-dir (empty: codeboxd's default)")
	flag.StringVar(&o.out, "out", "bench-results", "directory for results.json, results.txt and charts")
	flag.StringVar(&o.charts, "charts", "", "also copy the charts here (make bench: docs/bench, which docs/benchmarks.md shows)")
	flag.IntVar(&o.users, "users", 25, "seed scenario: concurrent users")
	flag.IntVar(&o.requests, "requests", 100, "seed scenario: stateful requests per user")
	flag.IntVar(&o.rounds, "rounds", 3, "seed scenario: rounds of API then direct; the median round by API req/s is reported")
	flag.IntVar(&o.single, "single", 1000, "single-session trivial executes")
	flag.IntVar(&o.firstPrint, "first-print", 100, "streamed cells whose first print is timed, per transport")
	flag.IntVar(&o.firstUse, "first-use", 10, "sessions whose first call in each language besides Python is timed")
	flag.IntVar(&o.warm, "warm", 30, "new sessions from a warm pool")
	flag.IntVar(&o.cold, "cold", 10, "new sessions from an empty pool")
	flag.IntVar(&o.startPath, "start-path", 10, "workers pre-warmed from nothing for the start path's profile (0: skip)")
	flag.IntVar(&o.firstCell, "first-cell", 10, "environments: new sessions whose first useful cell is timed, per environment (0: skip the phase)")
	flag.IntVar(&o.egressRequests, "egress-requests", 300, "egress: HTTP requests (a new connection each) per round and path (0: skip the phase)")
	flag.IntVar(&o.egressMB, "egress-mb", 64, "egress: MB downloaded per round and path")
	flag.BoolVar(&o.snapshots, "snapshots", true, "time snapshots and forks of a 500 MB disk holding 100 MB")
	flag.IntVar(&o.budgetMB, "budget-mb", 16384, "memory budget for the density figure")
	flag.IntVar(&o.sessions, "sessions", 500, "density: concurrent sessions kept on this host (0: skip)")
	flag.IntVar(&o.sessionMB, "session-ram-mb", 256, "density: each worker's memory limit")
	flag.Float64Var(&o.workerCPU, "worker-cpu", 1.0, "CPU cores per worker (the seed used 1.0)")
	flag.DurationVar(&o.deadline, "deadline", 25*time.Minute, "the whole run stops after this")
	flag.BoolVar(&o.peer, "peer", true, "also run the seed scenario against a Jupyter Server with ipykernel (Debian's), the seed's own engine")
	flag.BoolVar(&o.profile, "profile", false, "write a CPU profile of codeboxd during the seed scenario to OUT/codeboxd.cpu.pprof")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "codebox-bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	// Interrupted, it still stops its daemons and removes what it made.
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, o.deadline)
	defer cancel()
	state, err := os.MkdirTemp("", "codebox-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	defer cleanup(o, state)

	rep := &bench.Report{
		Machine: machine(), Command: strings.Join(os.Args, " "), Started: time.Now().UTC(),
		Figures: map[string]float64{},
		Config: map[string]string{"workers": fmt.Sprintf("min idle 5, max 30, %g CPU, 1024 MB, 500 MB disk", o.workerCPU),
			"seed": fmt.Sprintf("%d users x %d requests", o.users, o.requests)},
	}
	seedFlags := []string{"--max-total-workers", "30", "--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64),
		"--worker-ram-mb", "1024", "--worker-disk-mb", "500"}

	// Phase 1: an empty pool, for cold starts: one that learns no idle target either.
	empty := filepath.Join(state, "empty-pool.json")
	if err := os.WriteFile(empty, []byte(`{"environments": [{"name": "default", "min_idle": 0, "max_idle": 0}]}`), 0o600); err != nil {
		return err
	}
	d, err := start(ctx, o, state, append([]string{"--min-idle-workers", "0", "--environments", empty}, seedFlags...))
	if err != nil {
		return err
	}
	cold := bench.FirstExecute(ctx, d.client, "cold start: new session, empty pool", "cold", o.cold,
		func(s api.Status) bool { return s.TotalWorkers == 0 })
	rep.Results = append(rep.Results, cold)
	if err := d.stop(); err != nil {
		return err
	}
	if o.startPath > 0 {
		if err := startPathRun(ctx, o, state, rep, o.startPath); err != nil {
			return err
		}
	}

	// Phase 2: environments, seeded and not; a burst, and another once the pool learned.
	if o.firstCell > 0 {
		if err := environmentsRun(ctx, o, state, rep); err != nil {
			return err
		}
	}

	// Phase 3: many sessions at once, with smaller workers.
	if o.sessions > 0 {
		if err := densityRun(ctx, o, state, rep); err != nil {
			return err
		}
	}

	// Phase 4: what the network policy layer costs an allowed client.
	if o.egressRequests > 0 {
		if err := egressRun(ctx, o, state, rep); err != nil {
			return err
		}
	}

	if o.snapshots {
		if err := snapshotsRun(ctx, o, state, rep); err != nil {
			return err
		}
	}

	// Phase 5: the seed's configuration.
	d, err = start(ctx, o, state, append([]string{"--min-idle-workers", "5"}, seedFlags...))
	if err != nil {
		return err
	}
	defer d.stop()
	warmup, err := bench.WaitIdle(ctx, d.client, 5)
	if err != nil {
		return err
	}
	rep.Figures["pre-warm: 5 idle workers after start (s)"] = warmup.Seconds() + d.startup.Seconds()
	rep.Figures["refill rate (workers/s)"] = 5 / warmup.Seconds()
	rep.Results = append(rep.Results, bench.FirstExecute(ctx, d.client, "warm acquire: new session, warm pool", "warm", o.warm,
		func(s api.Status) bool { return s.IdleWorkers >= 5 && s.CreatingWorkers == 0 }))
	shaped, shapedFirst := bench.ShapedCreate(ctx, d.client, "shaped", o.warm,
		func(s api.Status) bool { return s.IdleWorkers >= 5 && s.CreatingWorkers == 0 })
	rep.Results = append(rep.Results, shaped, shapedFirst)
	if _, err := d.client.CreateSession(ctx, api.CreateSessionRequest{SessionID: "resize"}); err == nil {
		rep.Results = append(rep.Results, bench.Resize(ctx, d.client, "resize", o.warm))
		d.client.DeleteSession(ctx, "resize")
	}
	for _, language := range api.Languages {
		rep.Results = append(rep.Results, bench.Single(ctx, d.client, "single", language, o.single))
	}
	d.client.Release(ctx, "single")
	for _, language := range api.Languages[1:] {
		rep.Results = append(rep.Results, bench.FirstUse(ctx, d.client, "first", language, o.firstUse))
	}
	for _, via := range []string{"websocket", "sse"} {
		if o.firstPrint > 0 {
			rep.Results = append(rep.Results, bench.FirstPrint(ctx, d.client, d.url, d.token, "first-print-"+via, via, o.firstPrint))
		}
	}
	if _, err := bench.WaitIdle(ctx, d.client, 5); err != nil {
		return err
	}
	if err := density(ctx, o, rep); err != nil {
		return err
	}

	var peer *jupyterPeer
	if o.peer {
		if peer, err = startJupyter(ctx, o, state, o.users, 1024); err != nil {
			return err
		}
		defer peer.stop()
	}
	if err := seedRounds(ctx, o, d, peer, rep); err != nil {
		return err
	}
	targets(rep, o.users)
	rep.Table(os.Stdout)
	if err := rep.Write(o.out); err != nil {
		return err
	}
	fmt.Printf("\nwritten: %s/results.json, results.txt, latency.png, throughput.png, outcomes.png\n", o.out)
	if o.charts != "" {
		if err := os.MkdirAll(o.charts, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"latency.png", "throughput.png", "outcomes.png"} {
			b, err := os.ReadFile(filepath.Join(o.out, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(o.charts, f), b, 0o644); err != nil {
				return err
			}
		}
		fmt.Printf("charts copied to %s\n", o.charts)
	}
	return nil
}

// seedRounds runs the seed scenario through the API and then straight to the agents, o.rounds
// times, and reports the round with the median API throughput: on a shared VM one round's
// figure moves by ±20 %, and all rounds' rates are recorded as well.
func seedRounds(ctx context.Context, o options, d *daemonProc, peer *jupyterPeer, rep *bench.Report) error {
	type round struct {
		seed, direct, peer *bench.Result
		figures            map[string]float64
	}
	var rounds []round
	for r := 0; r < max(1, o.rounds); r++ {
		rd := round{figures: map[string]float64{}}
		var before cpuSnap
		timed := func() {
			if o.profile && r == 0 {
				go profile(o.out, 3*time.Second)
			}
			before = snapCPU(d.cmd.Process.Pid)
		}
		seed, setup := bench.Seed(ctx, d.client, "seed", o.users, o.requests, timed)
		cpuFigures(rd.figures, "seed via API", before, snapCPU(d.cmd.Process.Pid), seed.Requests, true)
		if r == 0 {
			rep.Figures[fmt.Sprintf("seed: %d sessions set up from a pool of 5 (s)", o.users)] = setup.Seconds()
		}
		conns, err := agentConns(ctx, o, d.client, "seed", o.users)
		if err != nil {
			return err
		}
		before = snapCPU(0)
		direct := bench.Direct(ctx, conns, o.requests)
		cpuFigures(rd.figures, "seed direct", before, snapCPU(0), direct.Requests, false)
		for _, c := range conns {
			c.Close()
		}
		rd.seed, rd.direct = seed, direct
		if peer != nil {
			rd.peer = bench.JupyterSeed(ctx, peer.url, peer.token, o.users, o.requests)
		}
		rounds = append(rounds, rd)
	}
	sorted := slices.Clone(rounds)
	slices.SortFunc(sorted, func(a, b round) int { return cmp.Compare(a.seed.PerSecond, b.seed.PerSecond) })
	med := sorted[len(sorted)/2]
	rep.Results = append(rep.Results, med.seed, med.direct)
	maps.Copy(rep.Figures, med.figures)
	if med.direct.PerSecond > 0 {
		rep.Figures["daemon overhead: API / direct throughput (%)"] = 100 * med.seed.PerSecond / med.direct.PerSecond
	}
	var api, direct, jupyter []string
	for _, rd := range rounds {
		api = append(api, fmt.Sprintf("%.0f", rd.seed.PerSecond))
		direct = append(direct, fmt.Sprintf("%.0f", rd.direct.PerSecond))
		rep.Rounds = append(rep.Rounds, bench.Round{API: rd.seed.PerSecond, Direct: rd.direct.PerSecond})
		if rd.peer != nil {
			jupyter = append(jupyter, fmt.Sprintf("%.0f", rd.peer.PerSecond))
			rep.Rounds[len(rep.Rounds)-1].Peer = rd.peer.PerSecond
		}
	}
	comment := fmt.Sprintf("seed rounds, req/s via API: %s; direct: %s", strings.Join(api, ", "), strings.Join(direct, ", "))
	if med.peer != nil {
		rep.Results = append(rep.Results, med.peer)
		if med.peer.PerSecond > 0 {
			rep.Figures["seed: API / Jupyter peer throughput (x)"] = med.seed.PerSecond / med.peer.PerSecond
		}
		if med.seed.P95ms > 0 {
			rep.Figures["seed: Jupyter peer / API p95 latency (x)"] = med.peer.P95ms / med.seed.P95ms
		}
		comment += "; Jupyter peer: " + strings.Join(jupyter, ", ")
	}
	rep.Comments = append(rep.Comments, comment+" (the median round by API req/s is shown, with its direct and peer runs)")
	return nil
}

// daemonProc is a codeboxd this command started.
type daemonProc struct {
	cmd     *exec.Cmd
	url     string
	token   string
	client  *api.Client
	startup time.Duration
	done    chan error
}

func start(ctx context.Context, o options, state string, flags []string) (*daemonProc, error) {
	token := randomHex(16)
	args := append([]string{
		"--listen", "127.0.0.1:" + port, "--state-dir", state, "--containerd-address", o.containerd,
		"--containerd-namespace", namespace, "--worker-bridge", bridge, "--worker-subnet", subnet,
		"--worker-image", o.image, "--worker-image-archive", o.archive, "--metrics-listen", "127.0.0.1:" + metricsPort,
		"--destroy-on-stop", "--log-level", "warn",
	}, flags...)
	if o.agentDir != "" {
		args = append(args, "--agent-dir", o.agentDir)
	}
	cmd := exec.Command(o.codeboxd, args...)
	cmd.Env = append(os.Environ(), api.TokenEnv+"="+token)
	logf, err := os.Create(filepath.Join(state, "codeboxd.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	url := "http://127.0.0.1:" + port
	d := &daemonProc{cmd: cmd, url: url, token: token, client: api.NewClient(url, token), done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait(); logf.Close() }()
	for {
		if resp, err := http.Get("http://127.0.0.1:" + port + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				d.startup = time.Since(begin)
				return d, nil
			}
		}
		select {
		case err := <-d.done:
			log, _ := os.ReadFile(filepath.Join(state, "codeboxd.log"))
			return nil, fmt.Errorf("codeboxd exited: %v\n%s", err, log)
		case <-ctx.Done():
			cmd.Process.Kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *daemonProc) stop() error {
	if d.cmd.ProcessState != nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(2 * time.Minute):
		d.cmd.Process.Kill()
		return fmt.Errorf("codeboxd did not stop")
	}
}

// cleanup removes the bench's workers, firewall chains and bridge, and images of earlier
// recipes.
func cleanup(o options, state string) {
	if rt, err := crt.Connect(context.Background(), o.containerd, namespace, slog.Default()); err == nil {
		rt.PruneOthers(context.Background(), o.image)
		rt.Close()
	}
	exec.Command(o.codeboxd, "cleanup", "--all", "--containerd-address", o.containerd, "--containerd-namespace", namespace,
		"--worker-bridge", bridge, "--worker-subnet", subnet, "--state-dir", state).Run()
	exec.Command("ip", "link", "delete", bridge).Run()
	os.Remove(netns.NetNSDirFor(bridge))
}

// agentConns opens a kernel connection to each seed session's worker, reading its address
// and token from containerd as the daemon would after a restart.
func agentConns(ctx context.Context, o options, c *api.Client, prefix string, users int) ([]*agent.Client, error) {
	rt, err := crt.Connect(ctx, o.containerd, namespace, slog.Default())
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	var conns []*agent.Client
	for u := 0; u < users; u++ {
		resp, err := c.Execute(ctx, fmt.Sprintf("%s-%d", prefix, u), "1", 0)
		if err != nil {
			return nil, err
		}
		a, err := rt.Adopt(ctx, resp.WorkerID)
		if err != nil {
			return nil, err
		}
		token := ""
		for _, kv := range a.Env {
			if v, ok := strings.CutPrefix(kv, daemon.AgentTokenEnv+"="); ok {
				token = v
			}
		}
		kc, err := agent.Dial(ctx, daemon.AgentURL(daemon.ParseLabels(a.Labels).IP), token, agent.Options{})
		if err != nil {
			return nil, err
		}
		conns = append(conns, kc)
	}
	return conns, nil
}

// managedWorkers lists the bench namespace's workers with their labels.
func managedWorkers(ctx context.Context, o options) (map[string]map[string]string, error) {
	rt, err := crt.Connect(ctx, o.containerd, namespace, slog.Default())
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	return rt.Managed(ctx)
}

// density reads idle workers' memory from their cgroups.
func density(ctx context.Context, o options, rep *bench.Report) error {
	managed, err := managedWorkers(ctx, o)
	if err != nil {
		return err
	}
	// Called with the pool idle: every worker is an idle one.
	var rss, usage []float64
	for id := range managed {
		r, u, ok := workerMemory(id)
		if !ok {
			continue // cgroup v2 hosts: not read here
		}
		rss, usage = append(rss, r), append(usage, u)
	}
	if len(rss) == 0 {
		rep.Comments = append(rep.Comments, "density: no cgroup v1 memory stats found")
		return nil
	}
	avg := func(v []float64) float64 {
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	rep.Figures["idle worker RSS, cgroup total_rss (MB)"] = avg(rss)
	if len(usage) > 0 {
		rep.Figures["idle worker memory incl. page cache, cgroup usage (MB)"] = avg(usage)
	}
	rep.Figures[fmt.Sprintf("idle workers in %d MB by RSS", o.budgetMB)] = float64(int(float64(o.budgetMB) / avg(rss)))
	return nil
}

// workerMemory reads worker id's memory from its cgroup v1: its RSS (memory.stat
// total_rss) and its usage with the page cache, in MB.
func workerMemory(id string) (rss, usage float64, ok bool) {
	stat, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", namespace, id, "memory.stat"))
	if err != nil {
		return 0, 0, false
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if v, found := strings.CutPrefix(line, "total_rss "); found {
			n, _ := strconv.ParseFloat(v, 64)
			rss = n / (1 << 20)
		}
	}
	if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", namespace, id, "memory.usage_in_bytes")); err == nil {
		n, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		usage = n / (1 << 20)
	}
	return rss, usage, true
}

func machine() string {
	host, _ := os.Hostname()
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	syscall.Sysinfo(&si)
	return fmt.Sprintf("%s: %d cores, %s, %d GiB RAM, %s/%s", host, runtime.NumCPU(), cpu, si.Totalram>>30, runtime.GOOS, runtime.GOARCH)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// profile saves a CPU profile of the bench's codeboxd.
func profile(dir string, d time.Duration) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/debug/pprof/profile?seconds=%d", metricsPort, int(d.Seconds())))
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer resp.Body.Close()
	os.MkdirAll(dir, 0o755)
	f, err := os.Create(filepath.Join(dir, "codeboxd.cpu.pprof"))
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}

// densityRun keeps o.sessions sessions at once on this host: each created (25 at a time,
// the pool of 5 refilling behind them), given a state, kept; then every state checked.
func densityRun(ctx context.Context, o options, state string, rep *bench.Report) error {
	memBefore := memAvailableMB()
	d, err := start(ctx, o, state, []string{"--min-idle-workers", "5", "--max-total-workers", strconv.Itoa(o.sessions + 5),
		"--worker-cpu", strconv.FormatFloat(o.workerCPU, 'f', -1, 64), "--worker-ram-mb", strconv.Itoa(o.sessionMB),
		"--worker-disk-mb", "100"})
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := bench.WaitIdle(ctx, d.client, 5); err != nil {
		return err
	}
	acquire, reached, verified := bench.Density(ctx, d.client, "density", o.sessions, 25)
	rep.Results = append(rep.Results, acquire)
	n := float64(o.sessions)
	rep.Figures[fmt.Sprintf("density: time to reach %d sessions (s)", o.sessions)] = reached.Seconds()
	rep.Figures[fmt.Sprintf("density: sessions of %d that kept their state", o.sessions)] = float64(verified)
	rep.Figures[fmt.Sprintf("density: codeboxd RSS with %d sessions (MB)", o.sessions)] = rssMB(d.cmd.Process.Pid)
	rep.Figures["density: host memory per session (MB)"] = (memBefore - memAvailableMB()) / n
	rep.Config["density"] = fmt.Sprintf("%d sessions, min idle 5, %g CPU, %d MB, 100 MB disk each", o.sessions, o.workerCPU, o.sessionMB)
	if acquire.SuccessPct < 100 {
		rep.Comments = append(rep.Comments, fmt.Sprintf("density: %d of %d sessions were not created: %v", o.sessions-int(acquire.SuccessPct*n/100), o.sessions, acquire.Errors))
	}
	return d.stop()
}

// memAvailableMB is the host's MemAvailable.
func memAvailableMB() float64 {
	return procField("/proc/meminfo", "MemAvailable:") / 1024
}

// rssMB is a process's resident memory.
func rssMB(pid int) float64 {
	return procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") / 1024
}

// procField reads a "Name: N kB" line.
func procField(file, name string) float64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return f
		}
	}
	return 0
}

// targets sets the figures the project aims at against this run's (docs/benchmarks.md
// explains those not met).
func targets(rep *bench.Report, users int) {
	add := func(name, unit string, value, target float64, atMost bool) {
		rep.Targets = append(rep.Targets, bench.Target{Name: name, Value: value, Target: target, Max: atMost, Unit: unit})
	}
	f := rep.Figures
	if v, ok := f["seed via API: CPU per request, codeboxd (ms)"]; ok {
		add("codeboxd CPU per proxied execute", "ms", v, 0.15, true)
	}
	if v, ok := f["seed via API: CPU per request, agents (ms)"]; ok {
		add("agents' CPU per execute under the seed load", "ms", v, 0.50, true)
	}
	if r := rep.Find("seed scenario via API"); r != nil {
		add("seed scenario via API", "req/s", r.PerSecond, 2000, false)
		add("seed scenario via API, p95", "ms", r.P95ms, 25, true)
	}
	if v, ok := f["daemon overhead: API / direct throughput (%)"]; ok {
		add("API throughput / direct", "%", v, 90, false)
	}
	if r := rep.Find("single session, trivial execute"); r != nil && r.Requests > 0 {
		add("single-session execute p50", "ms", r.P50ms, 0.50, true)
	}
	if r := rep.Find("cold start: new session, empty pool"); r != nil && r.Requests > 0 {
		add("cold start p50", "ms", r.P50ms, 250, true)
	}
	if v, ok := f["refill rate (workers/s)"]; ok {
		add("refill rate", "workers/s", v, 8, false)
	}
	if v, ok := f[fmt.Sprintf("seed: %d sessions set up from a pool of 5 (s)", users)]; ok && users == 25 {
		add("burst: 25 new sessions from a pool of 5", "s", v, 1.5, true)
	}
	if r := rep.Find("first useful cell, seeded: create + pandas describe"); r != nil && r.Requests > 0 {
		add("first useful cell (create + pandas describe), seeded p50", "ms", r.P50ms, 100, true)
	}
	if r := rep.Find("first useful cell, unseeded: create + pandas describe"); r != nil && r.Requests > 0 {
		add("first useful cell (create + pandas describe), unseeded p50", "ms", r.P50ms, 150, true)
	}
	if v, ok := f["idle worker RSS, cgroup total_rss (MB)"]; ok {
		add("idle worker RSS", "MB", v, 30, true)
	}
	if v, ok := f["start path: CPU per worker start, whole machine (ms)"]; ok {
		add("CPU per worker start, whole machine (2 cores: 8/s needs <= 250)", "ms", v, 250, true)
	}
	for k, v := range f {
		if n, ok := strings.CutPrefix(k, "density: sessions of "); ok && strings.HasSuffix(n, " that kept their state") {
			add("density: sessions kept, every state verified", "sessions", v, 500, false)
		}
	}
	for _, r := range rep.Results {
		if strings.HasPrefix(r.Name, "density: ") && strings.HasSuffix(r.Name, "a new one's first execute") && r.Requests > 0 {
			add("density: a new session's first execute p50", "ms", r.P50ms, 1000, true)
		}
	}
	if v, ok := f["egress: policy layer / direct requests per second (%)"]; ok {
		add("egress: allowed requests/s through the policy layer / direct", "%", v, 80, false)
	}
	if v, ok := f["egress: time the policy layer adds to a new connection's request, p50 (ms)"]; ok {
		add("egress: time added to a new connection's request, p50", "ms", v, 1, true)
	}
	if v, ok := f["packages: pip install of a wheel from the cache, p50 of 5 (ms)"]; ok {
		add("packages: cached pip install of a small wheel, p50", "ms", v, 1000, true)
	}
	if v, ok := f["snapshots: the longest write in the session meanwhile (ms)"]; ok {
		add("snapshots: the longest write stall a snapshot causes", "ms", v, 250, true)
	}
	if v, ok := f["snapshots: a fork into 3 sessions (ms)"]; ok {
		add("snapshots: a fork into 3 sessions (500 MB disk, 100 MB data)", "ms", v, 2000, true)
	}
	if v, ok := f["egress: policy layer / direct download throughput (%)"]; ok {
		add("egress: allowed download through the policy layer / direct", "%", v, 80, false)
	}
	if v, ok := f[fmt.Sprintf("burst: %d new sessions, pool that learned (s)", users)]; ok && users == 25 {
		add("burst: 25 new sessions after the pool learned", "s", v, 1.5, true)
	}
}
