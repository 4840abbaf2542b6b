package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/codebox/codebox/snapshots"
)

// Snapshots and forks (SPEC 3.14): a session's disk copied at one instant while its worker
// runs on (blockdev freezes the file system for the copy alone), kept with the session's
// shape by package snapshots; a session made from one gets a copy of it, its files given to
// its own uid range. Memory is not kept: a snapshot is files, not variables.

// CreateSnapshot implements api.Backend. It does not take the session's turn: a call in
// flight goes on, its writes held only while the disk is frozen.
func (d *Daemon) CreateSnapshot(ctx context.Context, sessionID string, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	key, s, err := d.existing(ctx, sessionID)
	if err != nil {
		return nil, err
	}
	id := req.SnapshotID
	if id == "" {
		id = "snap-" + randomID()
	} else if !snapshots.ValidID(id) {
		return nil, api.Refuse("snapshot_id", "snapshot_id %q: %v", api.Echo(id), snapshots.ErrBadID)
	}
	d.mu.Lock()
	w, sh := s.worker, s.shape
	d.mu.Unlock()
	if w == nil || !d.disks.Mounted(w.id) {
		return nil, api.Fail(api.Conflict, "session %q has no disk yet: run code in it first", key.id)
	}
	_, size, _ := d.disks.Usage(w.id)
	m := snapshots.Meta{ID: id, Tenant: key.tenant, Session: key.id, Created: time.Now().UTC(), Environment: sh.environment,
		CPU: sh.limits.CPU, MemoryMB: sh.limits.MemoryMB, DiskMB: sh.limits.DiskMB, Pids: sh.limits.Pids,
		Network: sh.network.Texts(), Packages: sh.network != nil && sh.network.Packages,
		Env: maps.Clone(sh.env), Metadata: maps.Clone(sh.metadata), UIDBase: int(w.uidBase)}
	made, err := d.snaps.Create(m, size, func(dst string) (time.Duration, error) { return d.disks.Snapshot(ctx, w.id, dst) })
	if err != nil {
		return nil, snapshotProblem(id, err)
	}
	d.log.Info("snapshot taken", "snapshot", id, "session", key.id, "freeze_ms", made.FreezeMS, "stored_mb", made.Stored>>20)
	d.metrics.snapshotFreeze.Observe(made.FreezeMS / 1000)
	v := d.snapshotView(made)
	return &v, nil
}

func snapshotProblem(id string, err error) error {
	switch {
	case errors.Is(err, snapshots.ErrExists):
		return &api.Problem{Kind: api.Conflict, Field: "snapshot_id", Detail: fmt.Sprintf("snapshot %q exists", id)}
	case errors.Is(err, snapshots.ErrQuota):
		return &api.Problem{Kind: api.Conflict, Detail: err.Error()}
	case errors.Is(err, snapshots.ErrNotFound):
		return &api.Problem{Kind: api.NotFound, Detail: fmt.Sprintf("no snapshot %q", api.Echo(id))}
	}
	return &api.Problem{Kind: api.Internal, Detail: "the snapshot could not be taken; the session is as it was", Cause: err}
}

func (d *Daemon) snapshotView(m *snapshots.Meta) api.Snapshot {
	names := slices.Sorted(maps.Keys(m.Env))
	v := api.Snapshot{SnapshotID: m.ID, SessionID: m.Session, CreatedAt: m.Created, Environment: m.Environment,
		Limits:   api.Limits{CPU: m.CPU, MemoryMB: m.MemoryMB, DiskMB: m.DiskMB, Pids: m.Pids},
		Network:  api.NetworkPolicy{Allow: append([]string{}, m.Network...)},
		Metadata: m.Metadata, EnvNames: names, StoredMB: float64(m.Stored) / (1 << 20), FreezeMS: m.FreezeMS}
	if m.Packages && d.cfg.Packages {
		v.Network.Presets = []string{PresetPackages}
	}
	return v
}

// ListSnapshots implements api.Backend.
func (d *Daemon) ListSnapshots(ctx context.Context) (*api.SnapshotList, error) {
	caller := api.CallerOf(ctx)
	out := &api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, m := range d.snaps.List(caller.Tenant) {
		if caller.Session != "" && m.Session != caller.Session {
			continue // a session's token sees its own session's
		}
		out.Snapshots = append(out.Snapshots, d.snapshotView(&m))
	}
	return out, nil
}

// GetSnapshot implements api.Backend.
func (d *Daemon) GetSnapshot(ctx context.Context, id string) (*api.Snapshot, error) {
	m, err := d.callerSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	v := d.snapshotView(m)
	return &v, nil
}

// DeleteSnapshot implements api.Backend. Sessions made from it keep their disks.
func (d *Daemon) DeleteSnapshot(ctx context.Context, id string) error {
	m, err := d.callerSnapshot(ctx, id)
	if err != nil {
		return err
	}
	if err := d.snaps.Delete(m.Tenant, id); err != nil {
		return snapshotProblem(id, err)
	}
	return nil
}

func (d *Daemon) callerSnapshot(ctx context.Context, id string) (*snapshots.Meta, error) {
	caller := api.CallerOf(ctx)
	m, err := d.snaps.Get(caller.Tenant, id)
	if err != nil || (caller.Session != "" && m.Session != caller.Session) {
		return nil, snapshotProblem(id, snapshots.ErrNotFound)
	}
	return m, nil
}

// Fork implements api.Backend: the session's disk copied once, at one instant, then each
// new session made from that copy (with the session's shape); the copy is gone after.
func (d *Daemon) Fork(ctx context.Context, sessionID string, req api.ForkRequest) (*api.ForkResponse, error) {
	if n := len(req.SessionIDs); n < 1 || n > api.MaxForks {
		return nil, api.Refuse("session_ids", "session_ids must name 1 to %d new sessions", api.MaxForks)
	}
	seen := map[string]bool{}
	for _, id := range req.SessionIDs {
		if err := api.ValidateUserUUID(id); err != nil || seen[id] {
			return nil, api.Refuse("session_ids", "session_ids: %q is not a new session id of its own", api.Echo(id))
		}
		seen[id] = true
	}
	snap, err := d.CreateSnapshot(ctx, sessionID, api.CreateSnapshotRequest{SnapshotID: "fork-" + randomID()})
	if err != nil {
		return nil, err
	}
	caller := api.CallerOf(ctx)
	defer d.snaps.Delete(caller.Tenant, snap.SnapshotID)
	out := &api.ForkResponse{FreezeMS: snap.FreezeMS}
	for _, id := range req.SessionIDs {
		s, err := d.CreateSession(ctx, api.CreateSessionRequest{SessionID: id, FromSnapshot: snap.SnapshotID})
		if err != nil {
			// All or nothing: the forks made before this one go again (their tokens
			// would be lost with the error).
			for _, made := range out.Sessions {
				d.DeleteSession(ctx, made.SessionID)
			}
			var p *api.Problem
			if errors.As(err, &p) {
				p.Detail = fmt.Sprintf("fork %q: %s (no fork was kept)", id, p.Detail)
			}
			return nil, err
		}
		out.Sessions = append(out.Sessions, *s)
	}
	return out, nil
}

// fromSnapshot is a create request with what the snapshot was where the request is
// silent, and the limits to resolve.
func fromSnapshot(req api.CreateSessionRequest, m *snapshots.Meta, packages bool) (api.CreateSessionRequest, *api.Limits) {
	if req.Environment == "" {
		req.Environment = m.Environment
	}
	if req.Network == nil && (len(m.Network) > 0 || m.Packages) {
		req.Network = &api.NetworkPolicy{Allow: append([]string{}, m.Network...)}
		if m.Packages && packages {
			req.Network.Presets = []string{PresetPackages}
		}
	}
	if req.Metadata == nil {
		req.Metadata = maps.Clone(m.Metadata)
	}
	env := maps.Clone(m.Env)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, req.Env)
	req.Env = env
	lim := api.Limits{CPU: m.CPU, MemoryMB: m.MemoryMB, DiskMB: m.DiskMB, Pids: m.Pids}
	if r := req.Limits; r != nil {
		if r.CPU != 0 {
			lim.CPU = r.CPU
		}
		if r.MemoryMB != 0 {
			lim.MemoryMB = r.MemoryMB
		}
		if r.DiskMB != 0 {
			lim.DiskMB = r.DiskMB
		}
		if r.Pids != 0 {
			lim.Pids = r.Pids
		}
	}
	return req, &lim
}

// makeDiskFrom makes worker w's disk a copy of snapshot m, its files given to w's uid range.
func (d *Daemon) makeDiskFrom(ctx context.Context, w *worker, m *snapshots.Meta, sizeMB int) error {
	if _, err := d.disks.MakeFrom(ctx, w.id, d.snaps.Image(m.Tenant, m.ID), sizeMB); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return api.Fail(api.NotFound, "snapshot %q was deleted while the session was made", m.ID)
		}
		return err
	}
	if err := d.disks.Rebase(ctx, w.id, m.UIDBase, int(w.uidBase), runtime.IDRange); err != nil {
		return fmt.Errorf("give the snapshot's files to the worker: %w", err)
	}
	return nil
}

func randomID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
