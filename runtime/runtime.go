// Package runtime owns everything codeboxd asks of containerd: the connection, the worker
// image (present, imported or pulled), and the lifecycle of worker containers and their
// tasks, built from OCI spec options composed one concern at a time (spec.go).
//
// It knows nothing of sessions, networks or disks: callers hand it a network namespace path
// and get back a running task.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
)

const (
	// Snapshotter is the snapshotter workers' root filesystems are unpacked into.
	Snapshotter = "overlayfs"
	// LabelManagedBy marks every container codeboxd creates.
	LabelManagedBy = "managed-by"
	// ManagedByValue is the value of LabelManagedBy on codeboxd's containers.
	ManagedByValue = "codeboxd"
)

// Runtime is a connection to containerd, scoped to one namespace.
type Runtime struct {
	client    *client.Client
	address   string // containerd's socket
	namespace string
	log       *slog.Logger
	// logSink is the absolute path of codebox-log-sink, which keeps a task's stdout and
	// stderr within logMaxBytes (see LogTo).
	logSink     string
	logMaxBytes int64

	// tasks is what the watchers ask of containerd (the client; a fake in tests).
	tasks    taskAPI
	mu       sync.Mutex
	watching map[string]watched // container id → its task's watcher
	health   health
}

// LogSinkName is the log sink's command, installed next to codeboxd.
const LogSinkName = "codebox-log-sink"

// LogTo makes every task started from now send its stdout and stderr through sink (the
// path of codebox-log-sink), which keeps at most maxBytes of them in the task's log file.
// A plain log file would let user code fill the host's disk: it can reopen the worker's
// init's stdout.
func (r *Runtime) LogTo(sink string, maxBytes int64) error {
	st, err := os.Stat(sink)
	if err != nil {
		return fmt.Errorf("log sink: %w", err)
	}
	if !filepath.IsAbs(sink) || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("log sink %s is not an executable file given by an absolute path", sink)
	}
	r.logSink, r.logMaxBytes = sink, maxBytes
	return nil
}

// Connect dials containerd at address and checks that it serves. namespace is where
// codeboxd keeps its images and containers ("codebox"); log gets a line when containerd
// goes away and when it is back.
func Connect(ctx context.Context, address, namespace string, log *slog.Logger) (*Runtime, error) {
	c, err := client.New(address, client.WithDefaultNamespace(namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	// IsServing waits for containerd to come up: bound it, so a daemon (or a cleanup)
	// started while containerd is down fails and says so.
	serveCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ok, err := c.IsServing(serveCtx)
	if err != nil || !ok {
		c.Close()
		if err == nil {
			err = errors.New("not serving")
		}
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	return &Runtime{client: c, address: address, namespace: namespace, log: log, tasks: clientTasks{c},
		watching: map[string]watched{}}, nil
}

// Close stops watching tasks and closes the connection.
func (r *Runtime) Close() error {
	r.mu.Lock()
	for id, w := range r.watching {
		w.stop()
		w.task.release()
		delete(r.watching, id)
	}
	r.mu.Unlock()
	r.health.mu.Lock()
	r.health.closed = true
	r.health.mu.Unlock()
	return r.client.Close()
}

// Ping reports whether containerd answers. A failure also tells the runtime containerd is
// down (Available), until it answers again.
func (r *Runtime) Ping(ctx context.Context) error {
	if up, err := r.Available(); !up {
		return fmt.Errorf("containerd is down: %w", err) // being polled: no need to wait here
	}
	ok, err := r.client.IsServing(ctx)
	if err == nil && !ok {
		err = errors.New("containerd is not serving")
	}
	if err != nil {
		r.markDown(err)
		return err
	}
	return nil
}

// Managed lists the containers codeboxd created, with their labels.
func (r *Runtime) Managed(ctx context.Context) (map[string]map[string]string, error) {
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%s", LabelManagedBy, ManagedByValue))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make(map[string]map[string]string, len(cs))
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			if errdefs.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("labels of %s: %w", c.ID(), err)
		}
		out[c.ID()] = labels
	}
	return out, nil
}

// RemoveOrphans removes what a codeboxd killed while making workers left in containerd:
// their leases, their snapshots no container took, and the shims of tasks whose creation
// was cut short (shims.go). Call it only while no worker is
// being made in the namespace (before the pool starts, or with codeboxd stopped): a
// creation in flight would lose its snapshot. It returns what it removed.
func (r *Runtime) RemoveOrphans(ctx context.Context) ([]string, error) {
	ours := fmt.Sprintf("labels.%q==%s", LabelManagedBy, ManagedByValue)
	var removed []string
	var errs []error
	ls := r.client.LeasesService()
	leaseList, err := ls.List(ctx, ours)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	for _, l := range leaseList {
		if err := ls.Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete lease %s: %w", l.ID, err))
			continue
		}
		removed = append(removed, "lease "+l.ID)
	}
	// Every container of the namespace: a snapshot or shim of one is not an orphan.
	all, err := r.client.Containers(ctx)
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("list containers: %w", err))...)
	}
	exists := map[string]bool{}
	for _, c := range all {
		exists[c.ID()] = true
	}
	sn := r.client.SnapshotService(Snapshotter)
	defer sn.Close()
	var orphans []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if !exists[info.Name] {
			orphans = append(orphans, info.Name)
		}
		return nil
	}, ours); err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("list snapshots: %w", err))...)
	}
	for _, name := range orphans {
		if err := sn.Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove snapshot %s: %w", name, err))
			continue
		}
		removed = append(removed, "snapshot "+name)
	}
	var leaked []shim
	for _, s := range shimsOf(r.namespace, r.address) {
		if !exists[s.id] {
			leaked = append(leaked, s)
		}
	}
	stopped, err := stopShims(leaked)
	for _, s := range stopped {
		removed = append(removed, fmt.Sprintf("shim of %s (pid %d)", s.id, s.pid))
	}
	errs = append(errs, err)
	cgroups, err := removeOrphanCgroups(cgroupRoot, r.namespace, exists)
	removed = append(removed, cgroups...)
	errs = append(errs, err)
	return removed, errors.Join(errs...)
}

// Destroy kills the container's task and deletes the task, the container and its
// snapshot. Parts already gone are not an error, so Destroy finishes what an interrupted
// Destroy or a crash left.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	r.unwatch(id)
	c, err := r.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if err := deleteTask(ctx, c); err != nil {
		return err
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return removeWorkerCgroups(r.namespace, id)
}

// deleteTask kills and deletes the container's task, if it has one.
func deleteTask(ctx context.Context, c client.Container) error {
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("task of %s: %w", c.ID(), err)
	}
	if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", c.ID(), err)
	}
	return nil
}

// logIO sends the task's stdout and stderr to the log file path on the host, through the
// log sink (for operators: the agent sends user code's output over the websocket, not
// there). Without a path they are discarded.
func (r *Runtime) logIO(path string) (cio.Creator, error) {
	if path == "" {
		return cio.NullIO, nil
	}
	if r.logSink == "" {
		return nil, errors.New("no log sink configured (Runtime.LogTo)")
	}
	return cio.BinaryIO(r.logSink, map[string]string{
		"--path": path, "--max-bytes": strconv.FormatInt(r.logMaxBytes, 10),
	}), nil
}

// Running reports whether container id has a running task.
func (r *Runtime) Running(ctx context.Context, id string) (bool, error) {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return false, fmt.Errorf("load container %s: %w", id, err)
	}
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("task of %s: %w", id, err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		return false, fmt.Errorf("task status of %s: %w", id, err)
	}
	return st.Status == client.Running, nil
}
