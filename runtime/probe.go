package runtime

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ProbeSpec is a one-off container that asks an image, with the agent's launcher, what
// it offers before workers are made from it.
type ProbeSpec struct {
	ID       string
	Image    *Image
	UIDBase  uint32
	AgentDir string
	Labels   map[string]string
}

// Probe is how a probe ended: the launcher's exit code and what it printed (at most
// probeOutputBytes of each stream).
type Probe struct {
	ExitCode       uint32
	Stdout, Stderr string
}

const (
	probeOutputBytes = 4096
	probeTimeout     = 90 * time.Second
)

// Probe runs the agent's launcher with --check in a container of s.Image, confined as a
// worker is but without a network or a disk, and removes the container. An error is a
// failure to run it at all; an exit code other than 0 is the image's answer.
func (r *Runtime) Probe(ctx context.Context, s ProbeSpec) (_ *Probe, err error) {
	if s.Image == nil {
		return nil, fmt.Errorf("probe %s: no image", s.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	opts := []oci.SpecOpts{
		oci.WithImageConfig(s.Image.img),
		oci.WithHostname("codebox"),
		withIdentity(),
		withUserNamespace(s.UIDBase),
		withLeastPrivilege(),
		withResources(Resources{CPU: 1, MemoryMB: 512, Pids: 64}),
		withScratch(),
		withAgent(s.AgentDir, "--check"),
		oci.WithProcessCwd("/"),
	}
	c, err := r.client.NewContainer(ctx, s.ID,
		client.WithImage(s.Image.img),
		client.WithSnapshotter(Snapshotter),
		client.WithNewSnapshot(s.ID, s.Image.img, snapshots.WithLabels(map[string]string{LabelManagedBy: ManagedByValue})),
		client.WithContainerLabels(withManagedBy(s.Labels)),
		client.WithNewSpec(opts...),
	)
	if err != nil {
		return nil, fmt.Errorf("create probe %s: %w", s.ID, err)
	}
	defer func() {
		if derr := r.Destroy(context.WithoutCancel(ctx), s.ID); derr != nil && err == nil {
			err = fmt.Errorf("remove probe %s: %w", s.ID, derr)
		}
	}()
	if err := r.makeMountPoints(ctx, c); err != nil {
		return nil, err
	}
	stdout, stderr := &capped{max: probeOutputBytes}, &capped{max: probeOutputBytes}
	t, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, stdout, stderr)))
	if err != nil {
		return nil, fmt.Errorf("create probe task %s: %w", s.ID, err)
	}
	exited, err := t.Wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait probe %s: %w", s.ID, err)
	}
	if err := t.Start(ctx); err != nil {
		return nil, fmt.Errorf("start probe %s: %w", s.ID, err)
	}
	select {
	case st := <-exited:
		if st.Error() != nil {
			return nil, fmt.Errorf("probe %s: %w", s.ID, st.Error())
		}
		// The streams are complete once their copies end, after the process's.
		if io := t.IO(); io != nil {
			io.Wait()
		}
		return &Probe{ExitCode: st.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("probe %s did not finish within %s", s.ID, probeTimeout)
	}
}

// withScratch gives a probe the worker's memory-backed /tmp and $HOME.
func withScratch() oci.SpecOpts {
	scratch := []string{"nosuid", "nodev", "noexec"}
	return oci.WithMounts([]specs.Mount{
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: append(scratch, "size=16m", "mode=1777")},
		{Destination: homeDir, Type: "tmpfs", Source: "tmpfs",
			Options: append(scratch, "size=16m", "mode=0700", fmt.Sprintf("uid=%d", SandboxUID), fmt.Sprintf("gid=%d", SandboxUID))},
	})
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
