package environments

import (
	"math"
	"time"
)

// Demand is how many new sessions a pool has seen lately: the most seen in one window,
// decaying by half each half-life, so that a pool that saw a burst holds enough idle
// workers for the next one, and goes back to its floor when quiet. Not safe for concurrent
// use (the daemon holds its lock).
type Demand struct {
	window, halfLife time.Duration
	start            time.Time // of the current window
	count            int       // sessions in the current window
	peak             float64   // decayed peak of earlier windows, as of peakAt
	peakAt           time.Time
}

// Pools learn over windows of 10 s and forget with a half-life of 5 minutes: a burst's
// successor within minutes is absorbed; a pool quiet for half an hour is back at its floor.
const (
	DemandWindow   = 10 * time.Second
	DemandHalfLife = 5 * time.Minute
)

// NewDemand returns a Demand with windows of window and the given half-life.
func NewDemand(window, halfLife time.Duration) *Demand {
	return &Demand{window: window, halfLife: halfLife}
}

// Observe counts a new session at now.
func (d *Demand) Observe(now time.Time) {
	d.roll(now)
	d.count++
}

// Level is the pool's learned demand at now, in sessions per window.
func (d *Demand) Level(now time.Time) float64 {
	d.roll(now)
	return max(float64(d.count), d.decayed(now))
}

// Target is how many idle workers a pool with floor minIdle should hold at now: its
// learned demand, rounded, and never below the floor. The caller applies the caps.
func (d *Demand) Target(now time.Time, minIdle int) int {
	return max(minIdle, int(math.Round(d.Level(now))))
}

// roll closes the current window if now is past it.
func (d *Demand) roll(now time.Time) {
	if d.start.IsZero() {
		d.start = now
		return
	}
	if now.Sub(d.start) < d.window {
		return
	}
	// The window that ended joins the peak as of its end.
	end := d.start.Add(d.window)
	d.peak = max(d.decayed(end), float64(d.count))
	d.peakAt = end
	d.count = 0
	d.start = now
}

// decayed is the peak as of t.
func (d *Demand) decayed(t time.Time) float64 {
	if d.peak == 0 {
		return 0
	}
	age := t.Sub(d.peakAt)
	if age <= 0 {
		return d.peak
	}
	return d.peak * math.Exp2(-float64(age)/float64(d.halfLife))
}
