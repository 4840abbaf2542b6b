package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/runtime/v2/logging"
)

// run feeds stdout and stderr to the sink as the shim would and waits for it to finish.
func run(t *testing.T, path string, maxBytes int64, stdout, stderr io.Reader) {
	t.Helper()
	ready := false
	err := sink(context.Background(), &logging.Config{Stdout: stdout, Stderr: stderr},
		func() error { ready = true; return nil }, path, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !ready {
		t.Fatal("the sink never said it was ready: the task would not start")
	}
}

func TestSinkKeepsAtMostItsBudgetAndDrainsTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.log")
	out := bytes.NewReader(bytes.Repeat([]byte("o"), 20<<20))
	errs := bytes.NewReader(bytes.Repeat([]byte("e"), 20<<20))
	run(t, path, 1<<20, out, errs)
	if out.Len() != 0 || errs.Len() != 0 {
		t.Fatalf("the sink stopped reading: %d and %d bytes left in the pipes", out.Len(), errs.Len())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1<<20+len(marker) || !strings.HasSuffix(string(b), marker) {
		t.Fatalf("log of %d bytes, want the budget and the marker", len(b))
	}
}

func TestSinkRotatesAHalfFullLogOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.log")
	run(t, path, 1000, strings.NewReader(strings.Repeat("a", 600)), strings.NewReader(""))
	// A restarted task: the earlier log moves to .1, the new one starts empty.
	run(t, path, 1000, strings.NewReader("second task\n"), strings.NewReader(""))
	if b, _ := os.ReadFile(path); string(b) != "second task\n" {
		t.Fatalf("new log %q", b)
	}
	if b, _ := os.ReadFile(path + ".1"); len(b) != 600 {
		t.Fatalf("previous log of %d bytes, want 600", len(b))
	}
	// A log still under half its budget is appended to.
	run(t, path, 1000, strings.NewReader("third\n"), strings.NewReader(""))
	if b, _ := os.ReadFile(path); string(b) != "second task\nthird\n" {
		t.Fatalf("appended log %q", b)
	}
}

func TestSinkWithoutAFileStillDrains(t *testing.T) {
	out := bytes.NewReader(bytes.Repeat([]byte("o"), 1<<20))
	run(t, filepath.Join(t.TempDir(), "missing-dir", "w.log"), 1000, out, strings.NewReader(""))
	if out.Len() != 0 {
		t.Fatal("the sink stopped reading")
	}
}

// blocked never ends: a pipe whose writer stays open.
type blocked struct{}

func (blocked) Read([]byte) (int, error) { select {} }

func TestSinkStopsSoonAfterItIsAskedTo(t *testing.T) {
	drainAfterStop = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sink(ctx, &logging.Config{Stdout: blocked{}, Stderr: blocked{}}, func() error { return nil },
			filepath.Join(t.TempDir(), "w.log"), 100)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(drainAfterStop + 5*time.Second):
		t.Fatal("the sink did not stop after it was asked to")
	}
}
