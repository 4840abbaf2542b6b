package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The seed scenario's series, in the charts' order.
var seedSeries = []string{
	"seed scenario via API",
	"seed scenario direct to agents (baseline)",
	"seed scenario, Jupyter Server + ipykernel (the seed's engine)",
}

// charts draws latency.png (the seed scenario's latencies as cumulative distributions on
// a log scale: every series on the same axis, none binned, p50/p95/p99 marked),
// throughput.png (req/s per round: API, direct, the Jupyter peer) and outcomes.png
// (throughput and success per scenario).
func (r *Report) charts(dir string) error {
	if err := r.latencyChart(filepath.Join(dir, "latency.png")); err != nil {
		return err
	}
	if err := r.roundsChart(filepath.Join(dir, "throughput.png")); err != nil {
		return err
	}
	return r.outcomesChart(filepath.Join(dir, "outcomes.png"))
}

func (r *Report) latencyChart(file string) error {
	p := plot.New()
	p.Title.Text = "Seed scenario: latency, cumulative (each request once; log scale)"
	p.X.Label.Text = "latency (ms)"
	p.Y.Label.Text = "fraction of requests at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	// Room above 1 for the legend, which would otherwise cover the curves' tops.
	p.Y.Min, p.Y.Max = 0, 1.3
	p.Y.Tick.Marker = plot.ConstantTicks{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"},
		{Value: 0.75, Label: "0.75"}, {Value: 0.95, Label: "0.95"}, {Value: 1, Label: "1"}}
	p.Add(plotter.NewGrid())
	lo, hi := math.Inf(1), 0.0
	for i, name := range seedSeries {
		res := r.Find(name)
		if res == nil || len(res.Latencies) == 0 {
			continue
		}
		pts := make(plotter.XYs, len(res.Latencies))
		for k, d := range res.Latencies { // sorted by summarize
			pts[k].X = max(ms(d), 0.01)
			pts[k].Y = float64(k+1) / float64(len(res.Latencies))
		}
		lo, hi = min(lo, pts[0].X), max(hi, pts[len(pts)-1].X)
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(2)
		p.Add(line)
		// The percentiles, marked on the curve.
		marks := plotter.XYs{{X: res.P50ms, Y: 0.50}, {X: res.P95ms, Y: 0.95}, {X: res.P99ms, Y: 0.99}}
		sc, err := plotter.NewScatter(marks)
		if err != nil {
			return err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: plotutil.Color(i), Radius: vg.Points(3.5), Shape: draw.CircleGlyph{}}
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%s: p50 %.1f, p95 %.1f, p99 %.1f ms (%d requests)", short(name), res.P50ms, res.P95ms, res.P99ms, len(res.Latencies)), line)
	}
	if hi > 0 {
		p.X.Min, p.X.Max = lo*0.8, hi*1.2
		for _, q := range []float64{0.5, 0.95, 0.99} {
			l, _ := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: q}, {X: p.X.Max, Y: q}})
			l.Color = color.Gray{Y: 150}
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
		}
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(10)
	p.Legend.YOffs = -vg.Points(6)
	return p.Save(10*vg.Inch, 5.5*vg.Inch, file)
}

func (r *Report) roundsChart(file string) error {
	if len(r.Rounds) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = "Seed scenario: throughput per round"
	p.Y.Label.Text = "requests / s"
	w := vg.Points(18)
	series := []struct {
		name string
		get  func(Round) float64
	}{
		{"via API", func(x Round) float64 { return x.API }},
		{"direct to agents", func(x Round) float64 { return x.Direct }},
		{"Jupyter Server + ipykernel", func(x Round) float64 { return x.Peer }},
	}
	for i, s := range series {
		var vals plotter.Values
		present := false
		for _, rd := range r.Rounds {
			vals = append(vals, s.get(rd))
			present = present || s.get(rd) > 0
		}
		if !present {
			continue
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(i-1)
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	var names []string
	top := 0.0
	for i, rd := range r.Rounds {
		names = append(names, fmt.Sprintf("round %d", i+1))
		top = max(top, rd.API, rd.Direct, rd.Peer)
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(r.Rounds))-0.4
	p.Y.Min, p.Y.Max = 0, top*1.3 // room for the legend above the bars
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(8*vg.Inch, 4.5*vg.Inch, file)
}

func (r *Report) outcomesChart(file string) error {
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
	return q.Save(12*vg.Inch, 5*vg.Inch, file)
}

// SeedPublishedRPS is the seed's published result for its 25 × 100 scenario.
const SeedPublishedRPS = 32.8

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
