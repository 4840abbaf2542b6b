package environments

import (
	"testing"
	"time"
)

// A burst raises the target at once, the next window still remembers it, and quiet brings
// it back to the floor over some half-lives.
func TestDemandLearnsAndForgets(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := NewDemand(10*time.Second, 5*time.Minute)
	if got := d.Target(now, 2); got != 2 {
		t.Fatalf("no demand: target %d, want the floor 2", got)
	}
	for i := 0; i < 25; i++ {
		d.Observe(now.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	if got := d.Target(now.Add(3*time.Second), 2); got != 25 {
		t.Fatalf("during the burst: target %d, want 25", got)
	}
	// The next windows are quiet: the burst is remembered, decaying.
	if got := d.Target(now.Add(30*time.Second), 2); got < 24 || got > 25 {
		t.Fatalf("20 s after the burst: target %d, want about 25", got)
	}
	if got := d.Target(now.Add(10*time.Second+5*time.Minute), 2); got != 13 { // 25/2 rounds to 13
		t.Fatalf("a half-life after the burst: target %d, want 13", got)
	}
	if got := d.Target(now.Add(40*time.Minute), 2); got != 2 {
		t.Fatalf("after 40 quiet minutes: target %d, want the floor 2", got)
	}
	// A smaller burst later does not lower what is remembered of a bigger one.
	d2 := NewDemand(10*time.Second, 5*time.Minute)
	for i := 0; i < 20; i++ {
		d2.Observe(now)
	}
	for i := 0; i < 3; i++ {
		d2.Observe(now.Add(15 * time.Second))
	}
	if got := d2.Target(now.Add(16*time.Second), 0); got != 20 {
		t.Fatalf("a small burst after a big one: target %d, want 20", got)
	}
	// Steady demand: one session a window holds one worker.
	d3 := NewDemand(10*time.Second, 5*time.Minute)
	for i := 0; i < 60; i++ {
		d3.Observe(now.Add(time.Duration(i) * 10 * time.Second))
	}
	if got := d3.Target(now.Add(600*time.Second), 0); got != 1 {
		t.Fatalf("steady one per window: target %d, want 1", got)
	}
}

// Time going backwards (a clock step) neither panics nor inflates the target.
func TestDemandClockStep(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := NewDemand(10*time.Second, 5*time.Minute)
	for i := 0; i < 5; i++ {
		d.Observe(now)
	}
	d.Observe(now.Add(-time.Hour))
	if got := d.Target(now.Add(-time.Hour), 0); got != 6 {
		t.Fatalf("after a step back: target %d, want 6", got)
	}
}
