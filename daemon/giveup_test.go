package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// A new pool worker whose record cannot be written is given up like any other: destroyed,
// and its host uid range freed. Before, it was destroyed and its range kept, so every such
// failure leaked one of the host's ranges until codeboxd restarted.
func TestUnrecordedPoolWorkerFreesItsUIDRange(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{MinIdleWorkers: 1, MaxTotalWorkers: 2})
	// Records are files in <state-dir>/sessions: a file in that directory's place makes
	// every write fail.
	dir := filepath.Join(d.cfg.StateDir, "sessions")
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d.Start()
	waitFor(t, "a creation to be given up", func() bool {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		return len(fw.destroyed) >= 1
	})
	d.mu.Lock()
	ranges, idle, creating := len(d.uidRanges), len(d.pools[0].idle), d.pools[0].creating
	d.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d idle workers without a record", idle)
	}
	if ranges > creating {
		t.Fatalf("%d uid ranges held with %d creations under way: the given-up worker's was not freed", ranges, creating)
	}
	// Once the file can be written again, the pool fills.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	d.refill()
	waitFor(t, "the pool to fill", func() bool { return d.Status().IdleWorkers == 1 })
}
