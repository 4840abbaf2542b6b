package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/continuity/fs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// makeMountPoints makes, in container c's own snapshot, the directory of every mount of
// its spec that the image lacks (/sandbox, /home/sandbox, /opt/codebox/agent in an image
// of nobody's making). runc would make them as the container's root, which in the worker's
// user namespace may not write in the image's directories (the host's root owns them), so
// the host's root makes them here, before the task. Paths resolve inside the snapshot: an
// image's symbolic link does not lead out of it.
func (r *Runtime) makeMountPoints(ctx context.Context, c client.Container) error {
	spec, err := c.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of %s: %w", c.ID(), err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("info of %s: %w", c.ID(), err)
	}
	mounts, err := r.client.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil {
		return fmt.Errorf("mounts of %s: %w", c.ID(), err)
	}
	return mount.WithTempMount(ctx, mounts, func(root string) error {
		for _, m := range spec.Mounts {
			p, err := fs.RootPath(root, m.Destination)
			if err != nil {
				return fmt.Errorf("mount point %s of %s: %w", m.Destination, c.ID(), err)
			}
			if _, err := os.Stat(p); err == nil {
				continue
			}
			if isFile(m) { // a file bound over a file: /etc/resolv.conf
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return fmt.Errorf("mount point %s of %s: %w", m.Destination, c.ID(), err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					return fmt.Errorf("mount point %s of %s: %w", m.Destination, c.ID(), err)
				}
				continue
			}
			if err := os.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("mount point %s of %s: %w", m.Destination, c.ID(), err)
			}
		}
		return nil
	})
}

// isFile reports whether m binds a regular file of the host.
func isFile(m specs.Mount) bool {
	if m.Type != "bind" {
		return false
	}
	st, err := os.Stat(m.Source)
	return err == nil && st.Mode().IsRegular()
}
