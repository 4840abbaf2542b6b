package daemon

import (
	"context"
	"syscall"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/blockdev"
	"github.com/codebox/codebox/netns"
	"github.com/codebox/codebox/runtime"
)

// What the daemon uses of the packages it combines, as the daemon needs it: the real ones
// (adapted below where their methods return concrete types) in codeboxd, small fakes in
// the unit tests.

// containers is containerd: the workers' containers and tasks (runtime.Runtime).
type containers interface {
	Start(ctx context.Context, s runtime.WorkerSpec) (task, error)
	Restart(ctx context.Context, id, logPath string, beforeStart func(pid uint32) error) (task, error)
	Adopt(ctx context.Context, id string) (*adopted, error)
	Destroy(ctx context.Context, id string) error
	Managed(ctx context.Context) (map[string]map[string]string, error)
	// RemoveOrphans removes the leases, snapshots and shims of workers whose making was cut
	// short.
	RemoveOrphans(ctx context.Context) ([]string, error)
	Running(ctx context.Context, id string) (bool, error)
	Ping(ctx context.Context) error
	Available() (bool, error)
	// Update changes a running worker's limits; Usage reads what it uses.
	Update(ctx context.Context, id string, res runtime.Resources) error
	Usage(id string) (runtime.Usage, error)
	// Probe asks an image what it offers, in a one-off container.
	Probe(ctx context.Context, s runtime.ProbeSpec) (*runtime.Probe, error)
}

// task is a worker's running task.
type task interface {
	Signal(sig syscall.Signal) error
	// Exited delivers how the task ended; it is closed without a value when watching
	// stops (the task is being deleted or replaced).
	Exited() <-chan runtime.Exit
	// ProcessID is its init process on the host (its namespaces are the worker's).
	ProcessID() int
}

// adopted is a running worker an earlier codeboxd left, as containerd knows it.
type adopted struct {
	env     []string // its process's environment: the agent's token
	created time.Time
	task    task
}

// network wires workers' network namespaces (netns.Network).
type network interface {
	Attach(ctx context.Context, id string) (*netns.Attachment, error)
	Detach(ctx context.Context, id, nsPath string) error
	Sweep(ctx context.Context, alive map[string]string) ([]string, error)
}

// disks are the workers' virtual disks (blockdev.Store): a mount point from the worker's
// creation, the disk made and mounted there when a session takes the worker.
type disks interface {
	Prepare(id string) (mountPoint string, err error)
	Make(ctx context.Context, id string, sizeMB, owner int) (*blockdev.Disk, error)
	// Snapshot copies a mounted disk at one instant to dst, frozen for the copy; MakeFrom
	// makes a worker's disk from such a copy; Rebase moves its files' owners to the worker's
	// uid range; Thaw undoes a freeze a stop left.
	Snapshot(ctx context.Context, id, dst string) (time.Duration, error)
	MakeFrom(ctx context.Context, id, src string, sizeMB int) (*blockdev.Disk, error)
	Rebase(ctx context.Context, id string, from, to, size int) error
	Thaw(id string)
	// Grow grows a mounted disk (errCannotGrow: the host does not allow it).
	Grow(ctx context.Context, id string, sizeMB int) error
	Usage(id string) (used, total int64, err error)
	Remove(id string) error
	List() ([]string, error)
	Mounted(id string) bool
	MountPoint(id string) string
	// Close undoes the store's own mount, once no worker is left.
	Close() error
}

// errCannotGrow: the host does not let codeboxd grow a mounted disk.
var errCannotGrow = blockdev.ErrCannotGrow

// agentConn is the connection to a worker's agentConn agent (agent.Client).
type agentConn interface {
	// Start sends code for language's interpreter ("" is Python); the caller finishes the
	// call. sink, when not nil, gets the call's output as it arrives (it must not block).
	Start(code, language string, sink func(agent.Event)) (agentCall, error)
	// Check proves the kernel runs code.
	Check(ctx context.Context) error
	// StartSession sets the session's env and moves the agent onto its disk.
	StartSession(ctx context.Context, env map[string]string) error
	// Seed runs an environment's seed cell (agent.ErrSeedFailed: it raised).
	Seed(ctx context.Context, code, language string) error
	// Err is nil while the connection is usable.
	Err() error
	Close() error
}

// agentCall is an execute in flight.
type agentCall interface {
	Wait(ctx context.Context) (*agent.Result, error)
	Finish()
}

// dialAgentFunc connects to a worker's agent.
type dialAgentFunc func(ctx context.Context, url, token string) (agentConn, error)

// containerd adapts runtime.Runtime to containers.
type containerd struct{ *runtime.Runtime }

func (c containerd) Start(ctx context.Context, s runtime.WorkerSpec) (task, error) {
	t, err := c.Runtime.Start(ctx, s)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (c containerd) Restart(ctx context.Context, id, logPath string, beforeStart func(pid uint32) error) (task, error) {
	t, err := c.Runtime.Restart(ctx, id, logPath, beforeStart)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (c containerd) Adopt(ctx context.Context, id string) (*adopted, error) {
	a, err := c.Runtime.Adopt(ctx, id)
	if err != nil {
		return nil, err
	}
	return &adopted{env: a.Env, created: a.Created, task: a.Task}, nil
}

// agentClient adapts agent.Client to agentConn.
type agentClient struct{ *agent.Client }

func (k agentClient) Start(code, language string, sink func(agent.Event)) (agentCall, error) {
	c, err := k.Client.Start(code, language, sink)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func dialAgent(ctx context.Context, url, token string) (agentConn, error) {
	c, err := agent.Dial(ctx, url, token, agent.Options{})
	if err != nil {
		return nil, err
	}
	return agentClient{c}, nil
}
