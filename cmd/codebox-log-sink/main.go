// Command codebox-log-sink receives a worker task's stdout and stderr from containerd's
// shim (a binary:// log URI) and keeps at most --max-bytes of them in --path, discarding the
// rest while still draining the pipes, so a write in the worker never blocks or fails.
//
// Why: user code runs as the same uid as the worker's init process and can reopen its
// stdout (/proc/1/fd/1); with a plain log file that is a way to fill the host's disk.
//
// The shim starts one per task, with the task's pipes on fds 3 and 4 and a readiness pipe on
// fd 5 (containerd's core/runtime/v2/logging), and stops it when the task is deleted. The
// shim passes the URI's query as arguments in no fixed order, which the flag package takes
// as it comes:
//
//	codebox-log-sink --max-bytes N --path /var/lib/codeboxd/logs/w-….log
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/runtime/v2/logging"
	"golang.org/x/sys/unix"
)

// drainAfterStop is how long the sink keeps draining after the shim asked it to stop (it
// kills it 12 s after asking).
var drainAfterStop = 10 * time.Second

const marker = "\n[codebox: log limit reached; further output discarded]\n"

func main() {
	fs := flag.NewFlagSet("codebox-log-sink", flag.ContinueOnError)
	maxBytes := fs.Int64("max-bytes", 1<<20, "most bytes kept in the file")
	path := fs.String("path", "", "log file (absolute)")
	if err := fs.Parse(os.Args[1:]); err != nil || *path == "" || *maxBytes < 0 {
		fmt.Fprintln(os.Stderr, "usage: codebox-log-sink --max-bytes N --path FILE (started by containerd's shim)")
		os.Exit(2)
	}
	logging.Run(func(ctx context.Context, cfg *logging.Config, ready func() error) error {
		return sink(ctx, cfg, ready, *path, *maxBytes)
	})
}

func sink(ctx context.Context, cfg *logging.Config, ready func() error, path string, maxBytes int64) error {
	// The sink runs outside the worker's CPU quota, and user code decides how much it
	// writes: at the lowest priority, a worker flooding its stdout waits for the sink
	// rather than taking CPU from others.
	unix.Setpriority(unix.PRIO_PROCESS, 0, 19)
	out := open(path, maxBytes)
	// Ready whatever happened: a sink that failed must still drain, or the worker blocks.
	if err := ready(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, r := range []io.Reader{cfg.Stdout, cfg.Stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			io.CopyBuffer(out, r, buf)
		}()
	}
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		select {
		case <-drained:
		case <-time.After(drainAfterStop):
		}
	}
	return out.Close()
}

// open returns the capped writer of path. A file already half full (a task restarted in the
// same worker) is moved to path.1 first, so the new task's first lines are kept: at most
// twice maxBytes per worker.
func open(path string, maxBytes int64) *capped {
	if st, err := os.Stat(path); err == nil && st.Size() >= maxBytes/2 {
		os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return &capped{} // nowhere to write: drain only
	}
	left := maxBytes
	if st, err := f.Stat(); err == nil {
		left = max(maxBytes-st.Size(), 0)
	}
	return &capped{f: f, left: left}
}

// capped writes until its budget is spent, then reports every write as done and drops it.
type capped struct {
	mu   sync.Mutex
	f    *os.File // nil: discard
	left int64
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil || c.left == 0 {
		return len(p), nil
	}
	n := min(int64(len(p)), c.left)
	if _, err := c.f.Write(p[:n]); err != nil {
		c.f.Close() // the disk is full or gone: keep draining, stop writing
		c.f = nil
		return len(p), nil
	}
	c.left -= n
	if c.left == 0 {
		c.f.Write([]byte(marker))
	}
	return len(p), nil
}

func (c *capped) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
