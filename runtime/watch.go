package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"
)

// Exit is how a task ended.
type Exit struct {
	Code uint32
	At   time.Time
	// Known is false when the task vanished without containerd learning its status (its
	// shim died while containerd was down): Code is then 255.
	Known bool
}

// Task is a worker's running task.
type Task struct {
	ID     string
	Pid    uint32
	exited <-chan Exit

	mu    sync.Mutex // pidfd: a signal never races its close (and a reuse of the number)
	pidfd int        // for signals that need no containerd; -1 if it could not be opened
}

// Exited delivers how the task ended, once, and is then closed; it is closed without a
// value when the runtime stops watching (the task is being deleted or replaced). Only a real
// end is delivered: when containerd restarts, the wait is taken up again once it serves.
func (t *Task) Exited() <-chan Exit { return t.exited }

// ProcessID is the task's init process, as the host sees it.
func (t *Task) ProcessID() int { return int(t.Pid) }

// Signal sends sig to the task's init (tini, which passes it on) through a pidfd: it does
// not need containerd, so a timed-out call can be interrupted while containerd restarts,
// and it cannot reach another process that took over the pid.
func (t *Task) Signal(sig syscall.Signal) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pidfd < 0 {
		return fmt.Errorf("signal task %s: no pidfd", t.ID)
	}
	if err := unix.PidfdSendSignal(t.pidfd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal task %s: %w", t.ID, err)
	}
	return nil
}

// release closes the task's pidfd.
func (t *Task) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pidfd >= 0 {
		unix.Close(t.pidfd)
		t.pidfd = -1
	}
}

// watched is what the runtime keeps of a task it watches.
type watched struct {
	task *Task
	stop context.CancelFunc
}

// watch starts watching t (whose first wait is first, ended by cancelFirst) until it exits,
// and returns it with its Exited channel. A wait that fails because containerd went away is
// not an exit: the watcher waits for containerd to serve again and looks at the task once
// more.
func (r *Runtime) watch(t client.Task, first <-chan client.ExitStatus, cancelFirst context.CancelFunc) *Task {
	exited := make(chan Exit, 1)
	pidfd, err := unix.PidfdOpen(int(t.Pid()), 0)
	if err != nil {
		pidfd = -1
	}
	task := &Task{ID: t.ID(), Pid: t.Pid(), exited: exited, pidfd: pidfd}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), r.namespace))
	stop := func() { cancel(); cancelFirst() }
	r.mu.Lock()
	if old, ok := r.watching[t.ID()]; ok {
		old.stop()
		old.task.release()
	}
	r.watching[t.ID()] = watched{task: task, stop: stop}
	r.mu.Unlock()
	go func() {
		e, ok := r.await(ctx, t.ID(), first)
		if ok {
			exited <- e
		}
		close(exited)
	}()
	return task
}

// unwatch stops watching the task of container id (it is being deleted or replaced).
func (r *Runtime) unwatch(id string) {
	r.mu.Lock()
	w, ok := r.watching[id]
	delete(r.watching, id)
	r.mu.Unlock()
	if ok {
		w.stop()
		w.task.release()
	}
}

// await returns how the task of container id ended; false when ctx ended first.
func (r *Runtime) await(ctx context.Context, id string, status <-chan client.ExitStatus) (Exit, bool) {
	for {
		var st client.ExitStatus
		select {
		case st = <-status:
		case <-ctx.Done():
			return Exit{}, false
		}
		if st.Error() == nil {
			return Exit{Code: st.ExitCode(), At: st.ExitTime(), Known: true}, true
		}
		if ctx.Err() != nil {
			return Exit{}, false
		}
		// Lost contact, not an exit: look again once containerd serves.
		r.markDown(st.Error())
		for {
			if err := r.awaitServing(ctx); err != nil {
				return Exit{}, false
			}
			var e Exit
			var done bool
			var err error
			status, e, done, err = r.tasks.Rewait(ctx, id)
			if done {
				return e, true
			}
			if err == nil {
				break
			}
			r.markDown(err)
			select { // containerd answered, but not well: do not spin on it
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return Exit{}, false
			}
		}
	}
}

// taskAPI is what the watchers ask of containerd.
type taskAPI interface {
	IsServing(ctx context.Context) (bool, error)
	// Rewait looks at the task of container id after containerd came back: gone (its shim
	// died meanwhile), stopped (it exited meanwhile: containerd kept its status), or
	// running, and then waits on it again. done: the task ended, as e says.
	Rewait(ctx context.Context, id string) (status <-chan client.ExitStatus, e Exit, done bool, err error)
}

// clientTasks is taskAPI on containerd's client.
type clientTasks struct{ *client.Client }

func (c clientTasks) Rewait(ctx context.Context, id string) (<-chan client.ExitStatus, Exit, bool, error) {
	callCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	ctr, err := c.LoadContainer(callCtx, id)
	if err == nil {
		var t client.Task
		t, err = ctr.Task(callCtx, nil)
		if err == nil {
			var st client.Status
			st, err = t.Status(callCtx)
			if err == nil && st.Status == client.Stopped {
				return nil, Exit{Code: st.ExitStatus, At: st.ExitTime, Known: true}, true, nil
			}
			if err == nil {
				var ch <-chan client.ExitStatus
				ch, err = t.Wait(ctx)
				if err == nil {
					return ch, Exit{}, false, nil
				}
			}
		}
	}
	if errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return nil, Exit{Code: 255, At: time.Now(), Known: false}, true, nil
	}
	return nil, Exit{}, false, err
}

// rpcTimeout bounds one containerd call of the watcher: with containerd down, some calls
// would otherwise wait for it.
const rpcTimeout = 10 * time.Second

// health tracks whether containerd serves. When a call finds it gone, one goroutine polls it
// (the way k3s waits for its containerd: a short probe, again every half second) until it
// serves again; everyone waiting for it is released together.
type health struct {
	mu      sync.Mutex
	down    bool
	lastErr error
	back    chan struct{} // closed when containerd serves again; nil while it is up
	closed  bool          // the runtime is closed: stop polling
}

// markDown records that containerd did not answer (err) and starts polling for its return.
func (r *Runtime) markDown(err error) {
	if !isUnavailable(err) {
		// Another failure (not found, a bad request): containerd answered.
		return
	}
	r.health.mu.Lock()
	defer r.health.mu.Unlock()
	r.health.lastErr = err
	if r.health.down {
		return
	}
	r.health.down = true
	r.health.back = make(chan struct{})
	r.log.Warn("containerd is unreachable; waiting for it to serve again", "err", err)
	go r.pollServing(r.health.back)
}

func (r *Runtime) pollServing(back chan struct{}) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ok, err := r.tasks.IsServing(ctx)
		cancel()
		if err == nil && ok {
			r.health.mu.Lock()
			r.health.down, r.health.lastErr, r.health.back = false, nil, nil
			r.health.mu.Unlock()
			r.log.Info("containerd serves again")
			close(back)
			return
		}
		r.health.mu.Lock()
		if err != nil {
			r.health.lastErr = err
		}
		closed := r.health.closed
		r.health.mu.Unlock()
		if closed {
			close(back)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// awaitServing returns once containerd serves (at once when it is not known to be down).
func (r *Runtime) awaitServing(ctx context.Context) error {
	r.health.mu.Lock()
	back := r.health.back
	r.health.mu.Unlock()
	if back == nil {
		return nil
	}
	select {
	case <-back:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Available reports whether containerd serves, as far as the runtime knows, and if not, the
// last error it saw.
func (r *Runtime) Available() (bool, error) {
	r.health.mu.Lock()
	defer r.health.mu.Unlock()
	return !r.health.down, r.health.lastErr
}

// isUnavailable reports whether err says containerd could not be reached.
func isUnavailable(err error) bool {
	err = errgrpc.ToNative(err)
	return errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded)
}
