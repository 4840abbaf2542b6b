package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/sandboxfs"
	"github.com/codebox/codebox/volumes"
)

// Named volumes (SPEC 3.14): package volumes keeps them and mounts them; the daemon checks
// what a session asks for, mounts its volumes when its worker is fitted, reaches them from
// the file calls, and lets them go when the session ends.

// CreateVolume implements api.Backend.
func (d *Daemon) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (*api.Volume, error) {
	caller := api.CallerOf(ctx)
	if caller.Session != "" {
		return nil, api.Fail(api.Forbidden, "a session's access token cannot create volumes")
	}
	if !volumes.ValidName(req.Name) {
		return nil, api.Refuse("name", "name %q: %v", api.Echo(req.Name), volumes.ErrBadName)
	}
	if req.SizeMB < MinSessionDiskMB || req.SizeMB > d.cfg.MaxSessionDiskMB {
		return nil, api.Refuse("size_mb", "size_mb must be %d to %d (--max-session-disk-mb)", MinSessionDiskMB, d.cfg.MaxSessionDiskMB)
	}
	v, err := d.vols.Create(ctx, caller.Tenant, req.Name, req.SizeMB)
	if err != nil {
		return nil, volumeProblem(req.Name, err)
	}
	d.log.Info("volume created", "volume", req.Name, "tenant", caller.Tenant, "size_mb", req.SizeMB)
	view := volumeView(v)
	return &view, nil
}

func volumeProblem(name string, err error) error {
	switch {
	case errors.Is(err, volumes.ErrExists):
		return &api.Problem{Kind: api.Conflict, Field: "name", Detail: fmt.Sprintf("volume %q exists", name)}
	case errors.Is(err, volumes.ErrQuota), errors.Is(err, volumes.ErrInUse):
		return &api.Problem{Kind: api.Conflict, Detail: fmt.Sprintf("volume %q: %v", name, err)}
	case errors.Is(err, volumes.ErrNotFound):
		return &api.Problem{Kind: api.NotFound, Detail: fmt.Sprintf("no volume %q", api.Echo(name))}
	}
	return &api.Problem{Kind: api.Internal, Detail: fmt.Sprintf("volume %q failed", api.Echo(name)), Cause: err}
}

func volumeView(v *volumes.Volume) api.Volume {
	out := api.Volume{Name: v.Name, SizeMB: v.SizeMB, CreatedAt: v.Created, StoredMB: float64(v.Stored) / (1 << 20), MountedBy: []api.VolumeUse{}}
	for _, u := range v.Uses {
		out.MountedBy = append(out.MountedBy, api.VolumeUse{SessionID: u.ID, Path: u.Path, ReadOnly: u.ReadOnly})
	}
	return out
}

// ListVolumes implements api.Backend. A session's access token sees the volumes its
// session has, and of their uses its own.
func (d *Daemon) ListVolumes(ctx context.Context) (*api.VolumeList, error) {
	caller := api.CallerOf(ctx)
	out := &api.VolumeList{Volumes: []api.Volume{}}
	for _, v := range d.vols.List(caller.Tenant) {
		if view, ok := volumeFor(caller, &v); ok {
			out.Volumes = append(out.Volumes, view)
		}
	}
	return out, nil
}

// GetVolume implements api.Backend.
func (d *Daemon) GetVolume(ctx context.Context, name string) (*api.Volume, error) {
	caller := api.CallerOf(ctx)
	v, err := d.vols.Get(caller.Tenant, name)
	if err != nil {
		return nil, volumeProblem(name, err)
	}
	view, ok := volumeFor(caller, v)
	if !ok {
		return nil, volumeProblem(name, volumes.ErrNotFound)
	}
	return &view, nil
}

// volumeFor is v as caller sees it: a session's token, only a volume its session has.
func volumeFor(caller api.Caller, v *volumes.Volume) (api.Volume, bool) {
	view := volumeView(v)
	if caller.Session == "" {
		return view, true
	}
	mine := view.MountedBy[:0]
	for _, u := range view.MountedBy {
		if u.SessionID == caller.Session {
			mine = append(mine, u)
		}
	}
	view.MountedBy = mine
	return view, len(mine) > 0
}

// DeleteVolume implements api.Backend: 409 while a session has it.
func (d *Daemon) DeleteVolume(ctx context.Context, name string) error {
	caller := api.CallerOf(ctx)
	if caller.Session != "" {
		return api.Fail(api.Forbidden, "a session's access token cannot delete volumes")
	}
	if err := d.vols.Delete(caller.Tenant, name); err != nil {
		return volumeProblem(name, err)
	}
	return nil
}

// checkVolumes checks what a new session asks to mount: volumes of its tenant, each at a
// directory under /sandbox of its own (none inside another).
func (d *Daemon) checkVolumes(tenant string, mounts []api.VolumeMount) ([]api.VolumeMount, error) {
	if len(mounts) > api.MaxVolumeMounts {
		return nil, api.Refuse("volumes", "volumes: at most %d", api.MaxVolumeMounts)
	}
	var out []api.VolumeMount
	var rels []string
	for i, m := range mounts {
		field := fmt.Sprintf("volumes[%d]", i)
		if _, err := d.vols.Get(tenant, m.Name); err != nil {
			return nil, &api.Problem{Kind: api.NotFound, Field: field + ".name", Detail: fmt.Sprintf("no volume %q", api.Echo(m.Name))}
		}
		rel, err := sandboxfs.CleanDir(m.Path)
		if err != nil || rel == "." || !strings.HasPrefix(m.Path, sandboxfs.Prefix+"/") {
			return nil, api.Refuse(field+".path", "%s.path %q must be a directory under %s/", field, api.Echo(m.Path), sandboxfs.Prefix)
		}
		for _, o := range rels {
			if rel == o || strings.HasPrefix(rel, o+"/") || strings.HasPrefix(o, rel+"/") {
				return nil, api.Refuse(field+".path", "%s.path %q is over another volume's", field, api.Echo(m.Path))
			}
		}
		rels = append(rels, rel)
		out = append(out, api.VolumeMount{Name: m.Name, Path: sandboxfs.Prefix + "/" + rel, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// mountVolumes mounts session s's volumes into worker w, whose disk is mounted. On failure
// none stays counted as the session's.
func (d *Daemon) mountVolumes(s *session, w *worker, mounts []api.VolumeMount) error {
	if len(mounts) == 0 {
		return nil
	}
	owner := runtime.HostUID(w.uidBase)
	root, err := sandboxfs.Open(d.disks.MountPoint(w.id), owner, owner)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, m := range mounts {
		target, err := root.MkdirAll(m.Path)
		if err != nil {
			d.vols.Release(s.key.owner())
			return &api.Problem{Kind: api.Invalid, Field: "volumes", Detail: fmt.Sprintf("volume %q at %s: %v", m.Name, m.Path, err)}
		}
		err = d.vols.Attach(s.key.tenant, m.Name, volumes.Use{Session: s.key.owner(), ID: s.key.id, Path: m.Path, ReadOnly: m.ReadOnly},
			target, w.current.task.ProcessID())
		target.Close()
		if err != nil {
			d.vols.Release(s.key.owner())
			return volumeProblem(m.Name, err)
		}
	}
	return nil
}

// volumeRoots mounts session s's volumes into root, for the file calls.
func (d *Daemon) volumeRoots(s *session, root *sandboxfs.Root) error {
	d.mu.Lock()
	mounts := s.shape.volumes // a PATCH replaces the shape under the lock
	d.mu.Unlock()
	for _, m := range mounts {
		sub, err := sandboxfs.Open(d.vols.Root(s.key.tenant, m.Name), volumes.Owner, volumes.Owner)
		if err != nil {
			return err
		}
		if err := root.Mount(m.Path, sub, m.ReadOnly); err != nil {
			sub.Close()
			return err
		}
	}
	return nil
}
