package runtime

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Task is a worker's running task.
type Task struct {
	ID  string
	Pid uint32
	// Exited delivers the task's exit status once, when it ends.
	Exited <-chan client.ExitStatus
}

// Start creates the worker container and starts its task. On failure nothing it made is
// left behind.
func (r *Runtime) Start(ctx context.Context, s WorkerSpec) (_ *Task, err error) {
	// The lease keeps the new snapshot from garbage collection until the container
	// references it.
	ctx, done, err := r.client.WithLease(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease for %s: %w", s.ID, err)
	}
	defer done(context.WithoutCancel(ctx))

	labels := map[string]string{LabelManagedBy: ManagedByValue}
	for k, v := range s.Labels {
		labels[k] = v
	}
	c, err := r.client.NewContainer(ctx, s.ID,
		client.WithImage(s.Image),
		client.WithSnapshotter(Snapshotter),
		client.WithNewSnapshot(s.ID, s.Image),
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
		}
	}()
	t, err := c.NewTask(ctx, logIO(s.LogPath))
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", s.ID, err)
	}
	// Wait before Start, or a task that exits at once is missed. Its context outlives
	// this call: the channel reports the exit whenever it comes.
	exited, err := t.Wait(namespaces.WithNamespace(context.Background(), r.namespace))
	if err != nil {
		return nil, fmt.Errorf("wait task %s: %w", s.ID, err)
	}
	if err := t.Start(ctx); err != nil {
		return nil, fmt.Errorf("start task %s: %w", s.ID, err)
	}
	return &Task{ID: s.ID, Pid: t.Pid(), Exited: exited}, nil
}
