package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
	"github.com/prometheus/client_golang/prometheus"
)

// The environments the daemon serves: one pool each (pool.go), made from the operator's
// resolved entries, each image probed at Start.

// makePools makes a pool per environment of the configuration, checking each entry's
// limits and variables against the daemon's caps (errors name the entry).
func (d *Daemon) makePools(images map[string]*runtime.Image) ([]*pool, error) {
	envs := d.cfg.Environments
	if len(envs) == 0 {
		var err error
		envs, err = environments.Resolve(nil, environments.Defaults{MinIdle: d.cfg.MinIdleWorkers, MaxTotalWorkers: d.cfg.MaxTotalWorkers})
		if err != nil {
			return nil, err
		}
	}
	if envs[0].Name != environments.Default {
		return nil, fmt.Errorf("environments: the default must come first, not %q", envs[0].Name)
	}
	var pools []*pool
	for _, e := range envs {
		limits, err := d.resolveLimits(&e.Limits, d.defaultLimits())
		if err != nil {
			return nil, fmt.Errorf("environment %q: %w", e.Name, err)
		}
		if _, err := checkEnv(e.Env); err != nil {
			return nil, fmt.Errorf("environment %q: %w", e.Name, err)
		}
		pools = append(pools, &pool{env: e, image: images[e.Name], limits: limits, fingerprint: d.fingerprint(e, limits),
			demand: environments.NewDemand(environments.DemandWindow, environments.DemandHalfLife)})
	}
	return pools, nil
}

// probeEnvironmentsLocked asks each environment's image, in a one-off container, whether
// it runs the agent and which languages it offers; each pool fills its floor once its probe
// answered (sessions waiting meanwhile get workers). An image that cannot run the agent
// makes its environment unavailable, logged on one line naming it and what is missing; the
// others serve. A probe that cannot run at all (containerd trouble, a timeout) leaves the
// environment to its workers' creations.
func (d *Daemon) probeEnvironmentsLocked() {
	for _, p := range d.pools {
		p.probing = true
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			res, err := d.probe(d.bg, p)
			d.mu.Lock()
			defer d.mu.Unlock()
			p.probing = false
			defer d.refillLocked()
			switch {
			case d.bg.Err() != nil:
			case err != nil:
				d.log.Warn("environment not probed", "environment", p.name(), "image", p.env.Image, "err", err)
			case res.ExitCode != 0:
				why, ok := agent.BootFailure(res.ExitCode)
				if !ok {
					why = fmt.Sprintf("its agent launcher exited with status %d: %s", res.ExitCode, lastLine(res.Stderr))
				}
				d.markUnavailableLocked(p, "its image cannot run the agent: "+why)
			default:
				var check agent.BootCheck
				if err := json.Unmarshal([]byte(lastLine(res.Stdout)), &check); err != nil || !slices.Contains(check.Languages, "python") {
					d.log.Warn("environment probe unreadable", "environment", p.name(), "stdout", lastLine(res.Stdout))
					return
				}
				p.languages = check.Languages
				d.log.Info("environment ready", "environment", p.name(), "image", p.env.Image, "offers", check.String())
			}
		}()
	}
}

// fingerprint hashes what the workers of environment e are made from: its image, its
// limits, its variables and seed, and the agent (its versioned directory).
func (d *Daemon) fingerprint(e environments.Environment, limits api.Limits) string {
	b, _ := json.Marshal(struct {
		Image  string
		Limits api.Limits
		Env    map[string]string
		Seed   map[string]string
		Agent  string
	}{e.Image, limits, e.Env, e.Seed, filepath.Base(d.cfg.AgentDir)})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func (d *Daemon) probe(ctx context.Context, p *pool) (*runtime.Probe, error) {
	base, err := d.takeUIDRange()
	if err != nil {
		return nil, err
	}
	defer func() {
		d.mu.Lock()
		delete(d.uidRanges, base)
		d.mu.Unlock()
	}()
	return d.rt.Probe(ctx, runtime.ProbeSpec{ID: "probe-" + newWorkerID()[2:], Image: p.image, UIDBase: base,
		AgentDir: d.cfg.AgentDir, Labels: map[string]string{labelEnv: p.name()}})
}

// lastLine is the last non-empty line of s, at most 300 bytes: what a probe's output
// says in a log line or an error.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	return l
}

// checkLanguage refuses a call in a language the session's environment does not run.
func (d *Daemon) checkLanguage(env, language string) error {
	if language == "" {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.poolOf(env)
	if p == nil || p.languages == nil || slices.Contains(p.languages, language) {
		return nil
	}
	return api.Errorf(400, "environment %q does not run %s (it runs %s)", env, language, strings.Join(p.languages, ", "))
}

// environmentShape is what a session of environment name starts from: its default limits
// and variables.
func (d *Daemon) environmentShapeLocked(name string) (api.Limits, map[string]string, error) {
	p := d.poolOf(name)
	if p == nil {
		names := make([]string, len(d.pools))
		for i, p := range d.pools {
			names[i] = p.name()
		}
		return api.Limits{}, nil, api.Refuse("environment", "unknown environment %q (known: %s)", api.Echo(name), strings.Join(names, ", "))
	}
	return p.limits, maps.Clone(p.env.Env), nil
}

// Environments implements api.Backend.
func (d *Daemon) Environments(ctx context.Context) ([]api.Environment, error) {
	admin := api.CallerOf(ctx).Admin
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Environment, 0, len(d.pools))
	for _, p := range d.pools {
		langs := p.languages
		switch {
		case p.unavailable != "":
			langs = []string{} // it runs nothing
		case langs == nil:
			langs = api.Languages // not probed: what it runs shows at the first call
		}
		e := api.Environment{Name: p.name(), Image: p.env.Image, Languages: slices.Clone(langs), Limits: p.limits,
			Seed: len(p.env.SeedLanguages()) > 0, Available: p.unavailable == "", UnavailableReason: p.unavailable}
		if admin {
			e.Pool = &api.EnvironmentPool{Idle: len(p.idle), Busy: p.busy(), Creating: p.creating,
				MinIdle: p.minIdle(), TargetIdle: p.target(now), MaxIdle: *p.env.MaxIdle, MaxTotal: p.env.MaxTotal}
		}
		out = append(out, e)
	}
	return out, nil
}

// poolCollector serves each pool's state as metrics, read at scrape time.
type poolCollector struct{ d *Daemon }

var (
	envWorkersDesc = prometheus.NewDesc("codebox_environment_workers", "Workers of an environment's pool, by state (idle, busy, creating).",
		[]string{"environment", "state"}, nil)
	envTargetDesc = prometheus.NewDesc("codebox_environment_target_idle", "Idle workers an environment's pool holds now: its floor, or more after a burst.",
		[]string{"environment"}, nil)
	envAvailableDesc = prometheus.NewDesc("codebox_environment_available", "1 when an environment serves sessions, 0 when it is unavailable.",
		[]string{"environment"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- envWorkersDesc
	ch <- envTargetDesc
	ch <- envAvailableDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.pools {
		n := p.name()
		for state, v := range map[string]int{"idle": len(p.idle), "busy": p.busy(), "creating": p.creating} {
			ch <- prometheus.MustNewConstMetric(envWorkersDesc, prometheus.GaugeValue, float64(v), n, state)
		}
		ch <- prometheus.MustNewConstMetric(envTargetDesc, prometheus.GaugeValue, float64(p.target(now)), n)
		available := 0.0
		if p.unavailable == "" {
			available = 1
		}
		ch <- prometheus.MustNewConstMetric(envAvailableDesc, prometheus.GaugeValue, available, n)
	}
}
