package runtime

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// creationLeasePrefix names the lease of a worker being made.
const creationLeasePrefix = "codebox-create-"

// Start creates the worker container and starts its task. On failure nothing it made is
// left behind.
func (r *Runtime) Start(ctx context.Context, s WorkerSpec) (_ *Task, err error) {
	// The lease keeps the new snapshot from garbage collection until the container
	// references it. A codeboxd killed in between leaves both: they carry codeboxd's label
	// so that the next one finds them (RemoveOrphans), and the lease expires regardless.
	ctx, done, err := r.client.WithLease(ctx, leases.WithID(creationLeasePrefix+s.ID),
		leases.WithExpiration(time.Hour), leases.WithLabel(LabelManagedBy, ManagedByValue))
	if err != nil {
		return nil, fmt.Errorf("lease for %s: %w", s.ID, err)
	}
	defer func() {
		// Left behind, the lease expires within the hour, and the next start deletes it.
		if derr := done(context.WithoutCancel(ctx)); derr != nil {
			r.log.Warn("creation lease not deleted", "worker", s.ID, "err", derr)
		}
	}()

	labels := withManagedBy(s.Labels)
	c, err := r.client.NewContainer(ctx, s.ID,
		client.WithImage(s.Image.img),
		client.WithSnapshotter(Snapshotter),
		client.WithNewSnapshot(s.ID, s.Image.img, snapshots.WithLabels(map[string]string{LabelManagedBy: ManagedByValue})),
		client.WithContainerLabels(labels),
		client.WithNewSpec(specOpts(s)...),
	)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", s.ID, err)
	}
	defer func() {
		if err != nil {
			if derr := r.Destroy(context.WithoutCancel(ctx), s.ID); derr != nil {
				err = fmt.Errorf("%w (and clean-up failed: %v)", err, derr)
			}
			// A task Create that containerd's restart cut short leaves its shim running
			// with nothing in containerd to list it (containerd#6860): stop it now rather
			// than at the next start's sweep.
			if derr := r.stopShimOf(s.ID); derr != nil {
				err = fmt.Errorf("%w (and its shim: %v)", err, derr)
			}
			// Its runc, gone with the shim, may have left cgroups Destroy found busy.
			if derr := removeWorkerCgroups(r.namespace, s.ID); derr != nil {
				err = fmt.Errorf("%w (and its cgroups: %v)", err, derr)
			}
		}
	}()
	if err := r.makeMountPoints(ctx, c); err != nil {
		return nil, err
	}
	return r.startTask(ctx, c, s.ID, s.LogPath, s.BeforeStart)
}

// withManagedBy is labels and codeboxd's own.
func withManagedBy(labels map[string]string) map[string]string {
	out := map[string]string{LabelManagedBy: ManagedByValue}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// Restart replaces the container's task with a new one in the same container: same
// snapshot, network namespace and mounts, so the kernel starts afresh while the files on
// the worker's disk stay.
func (r *Runtime) Restart(ctx context.Context, id, logPath string, beforeStart func(pid uint32) error) (*Task, error) {
	r.unwatch(id)
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	if err := deleteTask(ctx, c); err != nil {
		return nil, err
	}
	return r.startTask(ctx, c, id, logPath, beforeStart)
}

func (r *Runtime) startTask(ctx context.Context, c client.Container, id, logPath string, beforeStart func(pid uint32) error) (*Task, error) {
	logs, err := r.logIO(logPath)
	if err != nil {
		return nil, err
	}
	t, err := c.NewTask(ctx, logs)
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", id, err)
	}
	// Wait before Start, or a task that exits at once is missed. Its context outlives
	// this call: the watcher reports the exit whenever it comes.
	waitCtx, cancelWait := context.WithCancel(namespaces.WithNamespace(context.Background(), r.namespace))
	exited, err := t.Wait(waitCtx)
	if err != nil {
		cancelWait()
		t.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	if beforeStart != nil {
		if err := beforeStart(t.Pid()); err != nil {
			cancelWait()
			t.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
			return nil, fmt.Errorf("prepare task %s: %w", id, err)
		}
	}
	if err := t.Start(ctx); err != nil {
		cancelWait()
		t.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
		return nil, fmt.Errorf("start task %s: %w", id, err)
	}
	return r.watch(t, exited, cancelWait), nil
}

// Adopted is a worker container found running, with what a new codeboxd needs to take it
// over.
type Adopted struct {
	ID      string
	Labels  map[string]string
	Env     []string // the process environment of its spec (the agent's token is there)
	Created time.Time
	Task    *Task
}

// Adopt attaches to the running task of container id (left by an earlier codeboxd). An
// error means the container is not usable and should be destroyed.
func (r *Runtime) Adopt(ctx context.Context, id string) (*Adopted, error) {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("info of %s: %w", id, err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("spec of %s: %w", id, err)
	}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("task of %s: %w", id, err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("task status of %s: %w", id, err)
	}
	if st.Status != client.Running {
		return nil, fmt.Errorf("task of %s is %s, not running", id, st.Status)
	}
	waitCtx, cancelWait := context.WithCancel(namespaces.WithNamespace(context.Background(), r.namespace))
	exited, err := t.Wait(waitCtx)
	if err != nil {
		cancelWait()
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	a := &Adopted{ID: id, Labels: info.Labels, Created: info.CreatedAt, Task: r.watch(t, exited, cancelWait)}
	if spec.Process != nil {
		a.Env = spec.Process.Env
	}
	return a, nil
}
