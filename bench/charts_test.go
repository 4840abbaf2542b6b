package bench

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The charts draw from a report of every series, and each is a PNG of its size.
func TestCharts(t *testing.T) {
	r := &Report{Figures: map[string]float64{}, Rounds: []Round{{API: 1200, Direct: 1500, Peer: 300}, {API: 1100, Direct: 1450, Peer: 310}}}
	for i, name := range seedSeries {
		var lat []time.Duration
		for k := 1; k <= 2500; k++ {
			lat = append(lat, time.Duration(k*(i+1))*10*time.Microsecond)
		}
		r.Results = append(r.Results, summarize(name, lat, 2500, 2500, 2500, time.Second, nil))
	}
	dir := t.TempDir()
	if err := r.charts(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"latency.png", "throughput.png", "outcomes.png"} {
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(fh)
		fh.Close()
		if err != nil || cfg.Width < 500 {
			t.Errorf("%s: %v %+v", f, err, cfg)
		}
	}
}

func TestTargetsInTable(t *testing.T) {
	r := &Report{Figures: map[string]float64{}, Targets: []Target{
		{Name: "a", Value: 0.2, Target: 0.15, Max: true, Unit: "ms"},
		{Name: "b", Value: 2100, Target: 2000, Unit: "req/s"},
	}}
	if r.Targets[0].Met() || !r.Targets[1].Met() {
		t.Fatalf("met: %v %v", r.Targets[0].Met(), r.Targets[1].Met())
	}
	var b strings.Builder
	r.Table(&b)
	if !strings.Contains(b.String(), "(target <= 0.15)  not met") || !strings.Contains(b.String(), "(target >= 2000)  met") {
		t.Fatalf("table:\n%s", b.String())
	}
}
