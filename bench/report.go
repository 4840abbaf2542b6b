package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured.
type Report struct {
	Machine string             `json:"machine"`
	Command string             `json:"command"`
	Started time.Time          `json:"started"`
	Config  map[string]string  `json:"config"`
	Results []*Result          `json:"results"`
	Figures map[string]float64 `json:"figures"` // single numbers: ratios, start times, memory
	// Rounds are the seed scenario's throughput in each round, for the chart per round.
	Rounds []Round `json:"rounds,omitempty"`
	// Targets are the figures the project aims at, each with this run's value.
	Targets  []Target `json:"targets,omitempty"`
	Comments []string `json:"comments,omitempty"`
}

// Target is a figure and the value it should reach: at most (Max) or at least.
type Target struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Target float64 `json:"target"`
	Max    bool    `json:"max"`
	Unit   string  `json:"unit"`
}

// Met says whether the value reaches the target.
func (t Target) Met() bool {
	if t.Max {
		return t.Value <= t.Target
	}
	return t.Value >= t.Target
}

// Round is one round of the seed scenario: req/s via the API, direct to the agents, and
// against the Jupyter peer (0: not run).
type Round struct {
	API    float64 `json:"api"`
	Direct float64 `json:"direct"`
	Peer   float64 `json:"peer,omitempty"`
}

// Table writes the human table.
func (r *Report) Table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\trequests\treq/s\tsuccess %\tverified %\tp50 ms\tp95 ms\tp99 ms\tmax ms\t")
	for _, x := range r.Results {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
			x.Name, x.Requests, x.PerSecond, x.SuccessPct, x.VerifiedPct, x.P50ms, x.P95ms, x.P99ms, x.MaxMs)
	}
	tw.Flush()
	var keys []string
	for k := range r.Figures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%-48s %10.2f\n", k, r.Figures[k])
	}
	for _, x := range r.Results {
		if len(x.Errors) > 0 {
			fmt.Fprintf(w, "errors in %s: %v\n", x.Name, x.Errors)
		}
	}
	for _, c := range r.Comments {
		fmt.Fprintln(w, c)
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\ntargets:")
		for _, t := range r.Targets {
			op, met := ">=", "not met"
			if t.Max {
				op = "<="
			}
			if t.Met() {
				met = "met"
			}
			fmt.Fprintf(w, "  %-44s %10.2f %-8s (target %s %g)  %s\n", t.Name, t.Value, t.Unit, op, t.Target, met)
		}
	}
}

// Write stores results.json, results.txt and the charts in dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	var t strings.Builder
	r.Table(&t)
	if err := os.WriteFile(filepath.Join(dir, "results.txt"), []byte(t.String()), 0o644); err != nil {
		return err
	}
	return r.charts(dir)
}

// Find returns the result named name, or nil.
func (r *Report) Find(name string) *Result {
	for _, x := range r.Results {
		if x.Name == name {
			return x
		}
	}
	return nil
}
