package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/codebox/codebox/api"
)

// sessionsCmd is `codebox sessions ls|create|get|extend|rm`.
func sessionsCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("sessions needs ls, create, get, extend, network, events or rm")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "ls":
		fs := flag.NewFlagSet("sessions ls", flag.ContinueOnError)
		var md pairs
		fs.Var(&md, "m", "KEY=VALUE: only sessions with this metadata (repeatable)")
		state := fs.String("state", "", "running (default), ended or all")
		asJSON := fs.Bool("json", false, "print the JSON answer")
		if err := fs.Parse(args); err != nil {
			return err
		}
		q := api.SessionQuery{Metadata: md.m, State: *state, Limit: api.MaxSessionsPage}
		var all []api.Session
		for {
			page, err := c.Sessions(ctx, q)
			if err != nil {
				return err
			}
			all = append(all, page.Sessions...)
			if page.NextPageToken == nil {
				break
			}
			q.PageToken = *page.NextPageToken
		}
		if *asJSON {
			return printJSON(stdout, all)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tENVIRONMENT\tSTATE\tCPU\tMEMORY\tDISK\tEXPIRES\tMETADATA")
		for _, s := range all {
			expires := "-"
			if s.ExpiresAt != nil {
				expires = time.Until(*s.ExpiresAt).Round(time.Second).String()
			}
			state := s.State
			if s.EndedReason != "" {
				state += " (" + s.EndedReason + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%g\t%d MB\t%d MB\t%s\t%s\n", s.SessionID, s.Environment, state, s.Limits.CPU, s.Limits.MemoryMB,
				s.Limits.DiskMB, expires, formatPairs(s.Metadata))
		}
		return tw.Flush()
	case "create":
		fs := flag.NewFlagSet("sessions create", flag.ContinueOnError)
		var md, env pairs
		id := fs.String("id", "", "the session's id (default: one is made)")
		environment := fs.String("environment", "", "the environment it runs in (codebox environments lists them; default: default)")
		cpu := fs.Float64("cpu", 0, "CPU cores")
		mem := fs.Int("memory-mb", 0, "memory, MB")
		disk := fs.Int("disk-mb", 0, "disk at /sandbox, MB")
		pids := fs.Int("pids", 0, "processes")
		ttl := fs.Duration("timeout", 0, "lifetime (e.g. 1h); 0: the daemon's default")
		idle := fs.Duration("idle-timeout", 0, "idle timeout (e.g. 10m); 0: the daemon's default")
		fs.Var(&md, "m", "KEY=VALUE metadata (repeatable)")
		fs.Var(&env, "e", "NAME=VALUE environment variable (repeatable)")
		var allow list
		fs.Var(&allow, "allow", "what it may reach: a host name, *.suffix, address or CIDR, with an optional :port (repeatable; none: nothing)")
		packages := fs.Bool("packages", false, "open the host's package cache (the network preset \"packages\")")
		from := fs.String("from-snapshot", "", "start on a copy of this snapshot's disk, with its shape")
		var vols volumeMounts
		fs.Var(&vols, "volume", "NAME:/sandbox/PATH[:ro]: mount a volume (repeatable)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		req := api.CreateSessionRequest{SessionID: *id, Environment: *environment, Metadata: md.m, Env: env.m, FromSnapshot: *from, Volumes: vols}
		if len(allow) > 0 || *packages {
			req.Network = &api.NetworkPolicy{Allow: allow, Presets: presets(*packages)}
		}
		if *cpu != 0 || *mem != 0 || *disk != 0 || *pids != 0 {
			req.Limits = &api.Limits{CPU: *cpu, MemoryMB: *mem, DiskMB: *disk, Pids: *pids}
		}
		if *ttl > 0 {
			req.Timeout = seconds(*ttl)
		}
		if *idle > 0 {
			req.IdleTimeout = seconds(*idle)
		}
		s, err := c.CreateSession(ctx, req)
		if err != nil {
			return err
		}
		return printJSON(stdout, s)
	case "get", "rm":
		if len(args) != 1 {
			return fmt.Errorf("sessions %s needs one SESSION", sub)
		}
		if sub == "rm" {
			return c.DeleteSession(ctx, args[0])
		}
		s, err := c.Session(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, s)
	case "network":
		fs := flag.NewFlagSet("sessions network", flag.ContinueOnError)
		var allow list
		fs.Var(&allow, "allow", "a rule (repeatable; none: the session reaches nothing)")
		packages := fs.Bool("packages", false, "keep the host's package cache open (the network preset \"packages\")")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("sessions network needs one SESSION")
		}
		s, err := c.SetNetwork(ctx, fs.Arg(0), api.NetworkPolicy{Allow: append([]string{}, allow...), Presets: presets(*packages)})
		if err != nil {
			return err
		}
		return printJSON(stdout, s.Network)
	case "events":
		fs := flag.NewFlagSet("sessions events", flag.ContinueOnError)
		since := fs.Uint64("since", 0, "the seq to start from")
		asJSON := fs.Bool("json", false, "print the JSON answer")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("sessions events needs one SESSION")
		}
		ev, err := c.NetworkEvents(ctx, fs.Arg(0), *since, 1000)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, ev)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tNAME\tDESTINATION\tDECISION\tREASON / RULE\tBYTES OUT/IN")
		for _, e := range ev.Events {
			dest := e.IP
			if e.Port != 0 {
				dest = fmt.Sprintf("%s:%d", e.IP, e.Port)
			}
			why := e.Reason
			if why == "" {
				why = e.Rule
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", e.Seq, e.Time.Format("15:04:05.000"), e.Kind, e.Name, dest,
				e.Decision, why, e.BytesOut, e.BytesIn)
		}
		return tw.Flush()
	case "extend":
		fs := flag.NewFlagSet("sessions extend", flag.ContinueOnError)
		ttl := fs.Duration("timeout", time.Hour, "the new lifetime, from now")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("sessions extend needs one SESSION")
		}
		s, err := c.UpdateSession(ctx, fs.Arg(0), api.UpdateSessionRequest{Timeout: seconds(*ttl)})
		if err != nil {
			return err
		}
		return printJSON(stdout, s)
	}
	return fmt.Errorf("unknown sessions command %q: ls, create, get, extend, network, events or rm", sub)
}

// environmentsCmd is `codebox environments [--json]`.
func environmentsCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("environments", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the JSON answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	envs, err := c.Environments(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, envs)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENVIRONMENT\tLANGUAGES\tCPU\tMEMORY\tDISK\tSEED\tPOOL (IDLE/TARGET, BUSY, MAX)\tSTATE")
	for _, e := range envs {
		pool := "-"
		if p := e.Pool; p != nil {
			pool = fmt.Sprintf("%d/%d, %d, %d", p.Idle, p.TargetIdle, p.Busy, p.MaxTotal)
		}
		state := "available"
		if !e.Available {
			state = "unavailable: " + e.UnavailableReason
		}
		seed := "no"
		if e.Seed {
			seed = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%d MB\t%d MB\t%s\t%s\t%s\n", e.Name, strings.Join(e.Languages, ","), e.Limits.CPU,
			e.Limits.MemoryMB, e.Limits.DiskMB, seed, pool, state)
	}
	return tw.Flush()
}

func seconds(d time.Duration) *float64 {
	s := d.Seconds()
	return &s
}

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// pairs is a repeatable KEY=VALUE flag.
type pairs struct{ m map[string]string }

func (p *pairs) String() string { return formatPairs(p.m) }

func (p *pairs) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	if p.m == nil {
		p.m = map[string]string{}
	}
	p.m[k] = val
	return nil
}

func formatPairs(m map[string]string) string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// presets are the network presets a command's flags ask for.
func presets(packages bool) []string {
	if packages {
		return []string{"packages"}
	}
	return nil
}
