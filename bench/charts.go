package bench

import (
	"fmt"
	"image/color"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// charts draws latency.png (the distribution of the seed scenario's latencies, through the
// API and direct) and outcomes.png (throughput and success per scenario).
func (r *Report) charts(dir string) error {
	p := plot.New()
	p.Title.Text = "Seed scenario: latency distribution"
	p.X.Label.Text = "latency (ms)"
	p.Y.Label.Text = "requests"
	for i, name := range []string{"seed scenario via API", "seed scenario direct to agents (baseline)"} {
		res := r.Find(name)
		if res == nil || len(res.Latencies) == 0 {
			continue
		}
		vals := make(plotter.Values, len(res.Latencies))
		for k, d := range res.Latencies {
			vals[k] = ms(d)
		}
		h, err := plotter.NewHist(vals, 40)
		if err != nil {
			return err
		}
		c := plotutil.Color(i)
		h.FillColor = color.NRGBA{R: c.(color.RGBA).R, G: c.(color.RGBA).G, B: c.(color.RGBA).B, A: 110}
		h.LineStyle.Color = c
		p.Add(h)
		p.Legend.Add(fmt.Sprintf("%s (p50 %.1f, p95 %.1f ms)", name, res.P50ms, res.P95ms), h)
	}
	p.Legend.Top = true
	if err := p.Save(10*vg.Inch, 5*vg.Inch, filepath.Join(dir, "latency.png")); err != nil {
		return err
	}

	q := plot.New()
	q.Title.Text = "Outcomes: requests per second and success"
	q.Y.Label.Text = "requests / s"
	var rps plotter.Values
	var names []string
	// Throughput scenarios only (one-at-a-time ones have no throughput to speak of), and
	// the figure the seed published for the same scenario, for comparison.
	var results []*Result
	for _, x := range r.Results {
		if x.Requests >= 100 {
			results = append(results, x)
		}
	}
	results = append(results, &Result{Name: "seed, as published (i5-14400)", PerSecond: SeedPublishedRPS, SuccessPct: 100, VerifiedPct: 100})
	sort.SliceStable(results, func(i, j int) bool { return results[i].PerSecond > results[j].PerSecond })
	for _, x := range results {
		rps = append(rps, x.PerSecond)
		names = append(names, fmt.Sprintf("%s\n%.0f req/s, %.0f%% ok, %.0f%% verified", short(x.Name), x.PerSecond, x.SuccessPct, x.VerifiedPct))
	}
	bars, err := plotter.NewBarChart(rps, vg.Points(40))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	q.Add(bars)
	q.NominalX(names...)
	q.X.Tick.Label.Font.Size = vg.Points(7)
	return q.Save(12*vg.Inch, 5*vg.Inch, filepath.Join(dir, "outcomes.png"))
}

// SeedPublishedRPS is the seed's published result for its 25 × 100 scenario.
const SeedPublishedRPS = 32.8

func short(s string) string {
	if len(s) > 34 {
		return s[:34] + "…"
	}
	return s
}
