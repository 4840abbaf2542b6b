package daemon

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/egress"
	"github.com/codebox/codebox/environments"
	"github.com/codebox/codebox/runtime"
)

// Sessions as resources (api.Backend's session calls): made with a shape, listed by their
// metadata, read with their usage, changed while they run, ended; each tenant sees its own.

// CreateSession implements api.Backend: a session of the caller's tenant with the shape
// asked for, on a worker taken from the pool at once.
func (d *Daemon) CreateSession(ctx context.Context, req api.CreateSessionRequest) (*api.Session, error) {
	caller := api.CallerOf(ctx)
	if caller.Session != "" {
		return nil, api.Fail(api.Forbidden, "a session's access token cannot create sessions")
	}
	id := req.SessionID
	if id == "" {
		id = newSessionID()
	} else if err := api.ValidateUserUUID(id); err != nil {
		return nil, api.Refuse("session_id", "session_id must be 1..%d characters of A-Z a-z 0-9 . _ -", api.MaxUserUUIDLength)
	}
	now := time.Now()
	sh, err := d.newShape(req, caller.Tenant, now)
	if err != nil {
		return nil, err
	}
	token, hash := newAccessToken()
	sh.token = hash
	key := sessionKey{tenant: caller.Tenant, id: id}

	d.mu.Lock()
	if _, ok := d.sessions[key]; ok {
		d.mu.Unlock()
		return nil, &api.Problem{Kind: api.Conflict, Field: "session_id", Detail: fmt.Sprintf("session %q is running", id)}
	}
	s := newSession(key, sh)
	d.sessions[key] = s
	d.armExpiryLocked(s)
	d.mu.Unlock()

	callCtx, done, err := s.takeTurn(ctx)
	if err != nil { // it ended before it began (released by id already)
		return nil, err
	}
	defer done()
	if err := d.assign(callCtx, s); err != nil {
		d.mu.Lock()
		if d.sessions[key] == s {
			delete(d.sessions, key)
		}
		s.gone = true
		d.mu.Unlock()
		return nil, err
	}
	d.mu.Lock()
	if d.sessions[key] != s || s.gone { // ended while it was being made
		d.mu.Unlock()
		return nil, d.notFound(key)
	}
	d.tokens[hash] = key
	v := d.viewLocked(s, caller.Admin)
	d.mu.Unlock()
	v.AccessToken = token
	d.metrics.sessionsCreated.Inc()
	return &v, nil
}

// newShape checks a create request against the caps and makes the session's shape.
func (d *Daemon) newShape(req api.CreateSessionRequest, tenant string, now time.Time) (shape, error) {
	sh := shape{environment: environments.Default, created: now, idleTimeout: d.cfg.IdleTimeout}
	var fromLimits *api.Limits
	if req.FromSnapshot != "" {
		m, err := d.snaps.Get(tenant, req.FromSnapshot)
		if err != nil {
			return sh, &api.Problem{Kind: api.NotFound, Field: "from_snapshot", Detail: fmt.Sprintf("no snapshot %q", api.Echo(req.FromSnapshot))}
		}
		req, fromLimits = fromSnapshot(req, m, d.cfg.Packages)
		sh.from = m
	}
	if req.Environment != "" {
		sh.environment = req.Environment
	}
	d.mu.Lock()
	base, envDefaults, err := d.environmentShapeLocked(sh.environment)
	d.mu.Unlock()
	if err != nil {
		return sh, err
	}
	if fromLimits != nil {
		// The snapshot's limits under the request's, all checked against today's caps; its
		// disk never smaller than the snapshot's.
		if sh.limits, err = d.resolveLimits(fromLimits, base); err != nil {
			return sh, err
		}
		if sh.limits.DiskMB < sh.from.DiskMB {
			return sh, api.Refuse("limits.disk_mb", "limits.disk_mb must be at least the snapshot's %d MB", sh.from.DiskMB)
		}
	} else if sh.limits, err = d.resolveLimits(req.Limits, base); err != nil {
		return sh, err
	}
	if sh.expires, err = d.lifetime(req.Timeout, now); err != nil {
		return sh, err
	}
	if req.IdleTimeout != nil {
		if sh.idleTimeout, err = seconds("idle_timeout", *req.IdleTimeout, maxIdleTimeout); err != nil {
			return sh, err
		}
	}
	if sh.metadata, err = checkMetadata(req.Metadata); err != nil {
		return sh, err
	}
	if sh.env, err = checkEnv(req.Env); err != nil {
		return sh, err
	}
	if sh.network, err = d.parseNetwork(req.Network); err != nil {
		return sh, err
	}
	if sh.volumes, err = d.checkVolumes(tenant, req.Volumes); err != nil {
		return sh, err
	}
	// The environment's variables, then the session's over them, within the same bounds.
	if len(envDefaults) > 0 {
		merged := envDefaults
		maps.Copy(merged, sh.env)
		if _, err := checkEnv(merged); err != nil {
			var p *api.Problem
			if errors.As(err, &p) {
				return sh, api.Refuse("env", "with the variables of environment %q: %s", sh.environment, p.Detail)
			}
			return sh, err
		}
		sh.env = merged
	}
	return sh, nil
}

// GetSession implements api.Backend: a running session with its usage, or an ended one
// with why it ended.
func (d *Daemon) GetSession(ctx context.Context, id string) (*api.Session, error) {
	key, err := keyFor(ctx, id)
	if err != nil {
		return nil, err
	}
	admin := api.CallerOf(ctx).Admin
	d.mu.Lock()
	s := d.sessions[key]
	var v api.Session
	var w *worker
	if s != nil {
		v, w = d.viewLocked(s, admin), s.worker
	}
	d.mu.Unlock()
	if s == nil {
		if e, ok := d.ended.get(key); ok {
			v := e.view(admin)
			return &v, nil
		}
		return nil, api.Fail(api.NotFound, "no session %q", key.id)
	}
	if w != nil {
		v.Usage = d.usage(w)
	}
	return &v, nil
}

// usage is what w uses now; nil when it cannot be read (its task is being replaced).
func (d *Daemon) usage(w *worker) *api.Usage {
	u, err := d.rt.Usage(w.id)
	if err != nil {
		d.log.Debug("usage not read", "worker", w.id, "err", err)
		return nil
	}
	out := &api.Usage{CPUSeconds: u.CPUSeconds, MemoryBytes: u.MemoryBytes, MemoryPeakBytes: u.MemoryPeakBytes,
		Processes: u.Processes}
	out.DiskUsedBytes, out.DiskTotalBytes, _ = d.disks.Usage(w.id)
	return out
}

// viewLocked is s as the API shows it (the tenant, to an admin). Under Daemon.mu.
func (d *Daemon) viewLocked(s *session, withTenant bool) api.Session {
	sh := s.shape
	v := api.Session{SessionID: s.key.id, Environment: sh.environment, State: api.SessionRunning,
		Limits: sh.limits, Metadata: maps.Clone(sh.metadata), EnvNames: envNames(sh.env), CreatedAt: sh.created,
		LastActivityAt: time.Unix(0, s.lastUsed.Load()), IdleTimeout: sh.idleTimeout.Seconds(), Network: d.networkView(sh.network), Volumes: sh.volumes}
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	if w := s.worker; w != nil {
		v.WorkerID = w.id
	}
	if !sh.expires.IsZero() {
		e := sh.expires
		v.ExpiresAt = &e
	}
	if withTenant {
		v.Tenant = s.key.tenant
	}
	return v
}

// pageToken is where a page of sessions resumes: after this session of the listing's order.
type pageToken struct {
	Created int64  `json:"c"`
	Tenant  string `json:"t"`
	ID      string `json:"i"`
}

// ListSessions implements api.Backend: the caller's tenant's sessions (an admin's: every
// tenant's, or q.Tenant's) whose metadata holds q's pairs, oldest first, a page at a time.
func (d *Daemon) ListSessions(ctx context.Context, q api.SessionQuery) (*api.SessionList, error) {
	caller := api.CallerOf(ctx)
	if caller.Session != "" {
		return nil, api.Fail(api.Forbidden, "a session's access token cannot list sessions")
	}
	tenant := caller.Tenant
	if caller.Admin {
		tenant = q.Tenant // "": all
	} else if q.Tenant != "" && q.Tenant != caller.Tenant {
		return nil, api.Fail(api.Forbidden, "only an admin key lists another tenant's sessions")
	}
	limit := q.Limit
	switch {
	case limit == 0:
		limit = api.DefaultSessionsPage
	case limit < 0 || limit > api.MaxSessionsPage:
		return nil, api.Refuse("limit", "limit must be 1..%d", api.MaxSessionsPage)
	}
	var after *pageToken
	if q.PageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(q.PageToken)
		after = &pageToken{}
		if err != nil || json.Unmarshal(b, after) != nil {
			return nil, api.Refuse("page_token", "page_token is not one this daemon gave")
		}
	}
	running, ended := true, false
	switch q.State {
	case "", api.SessionRunning:
	case api.SessionEnded:
		running, ended = false, true
	case "all":
		ended = true
	default:
		return nil, api.Refuse("state", "state must be running, ended or all")
	}
	keep := func(t, env string, md map[string]string) bool {
		return (tenant == "" || t == tenant) && (q.Environment == "" || env == q.Environment) && matches(md, q.Metadata)
	}
	var all []api.Session
	if running {
		d.mu.Lock()
		for _, s := range d.sessions {
			if s.worker != nil && keep(s.key.tenant, s.shape.environment, s.shape.metadata) {
				v := d.viewLocked(s, true)
				all = append(all, v)
			}
		}
		d.mu.Unlock()
	}
	if ended {
		for _, e := range d.ended.all(func(e endedSession) bool { return keep(e.Tenant, e.Environment, e.Metadata) }) {
			all = append(all, e.view(true))
		}
	}
	order := func(a api.Session) pageToken {
		return pageToken{Created: a.CreatedAt.UnixNano(), Tenant: a.Tenant, ID: a.SessionID}
	}
	less := func(a, b pageToken) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.ID, b.ID))
	}
	slices.SortFunc(all, func(a, b api.Session) int { return less(order(a), order(b)) })
	if after != nil {
		i, _ := slices.BinarySearchFunc(all, *after, func(a api.Session, t pageToken) int { return less(order(a), t) })
		for i < len(all) && less(order(all[i]), *after) <= 0 {
			i++
		}
		all = all[i:]
	}
	out := &api.SessionList{Sessions: all}
	if len(all) > limit {
		out.Sessions = all[:limit]
		b, _ := json.Marshal(order(out.Sessions[limit-1]))
		next := base64.RawURLEncoding.EncodeToString(b)
		out.NextPageToken = &next
	}
	if !caller.Admin {
		for i := range out.Sessions {
			out.Sessions[i].Tenant = ""
		}
	}
	if out.Sessions == nil {
		out.Sessions = []api.Session{}
	}
	return out, nil
}

// UpdateSession implements api.Backend: PATCH of a running session. Everything asked is
// checked first; limits are applied to the running worker before the rest changes, so a
// refusal leaves the session as it was. It does not wait for the session's call in flight.
func (d *Daemon) UpdateSession(ctx context.Context, id string, req api.UpdateSessionRequest) (*api.Session, error) {
	key, s, err := d.existing(ctx, id)
	if err != nil {
		return nil, err
	}
	s.patchMu.Lock()
	defer s.patchMu.Unlock()
	d.mu.Lock()
	sh, w := s.shape, s.worker
	d.mu.Unlock()
	if w == nil {
		return nil, d.notFound(key)
	}
	now := time.Now()
	next := sh
	if req.Limits != nil {
		if next.limits, err = d.resolveLimits(req.Limits, sh.limits); err != nil {
			return nil, err
		}
	}
	if req.Timeout != nil {
		if next.expires, err = d.lifetime(req.Timeout, now); err != nil {
			return nil, err
		}
	}
	if req.IdleTimeout != nil {
		if next.idleTimeout, err = seconds("idle_timeout", *req.IdleTimeout, maxIdleTimeout); err != nil {
			return nil, err
		}
	}
	if req.Metadata != nil {
		if next.metadata, err = checkMetadata(*req.Metadata); err != nil {
			return nil, err
		}
	}
	if req.Network != nil {
		if next.network, err = d.parseNetwork(req.Network); err != nil {
			return nil, err
		}
		if next.network == nil {
			next.network = &egress.Policy{}
		}
	}
	if next.limits != sh.limits {
		applied, err := d.changeLimits(ctx, w, sh.limits, next.limits)
		if err != nil {
			if applied != sh.limits { // the disk grew before the rest failed: it stays grown
				d.mu.Lock()
				if d.sessions[key] == s {
					s.shape.limits = applied
				}
				d.mu.Unlock()
			}
			return nil, err
		}
	}
	d.mu.Lock()
	if d.sessions[key] != s {
		d.mu.Unlock()
		return nil, d.notFound(key)
	}
	s.shape = next
	if req.Network != nil {
		d.egress.SetPolicy(key.owner(), next.network) // under the lock: two PATCHes land in order
	}
	d.armExpiryLocked(s)
	v := d.viewLocked(s, api.CallerOf(ctx).Admin)
	d.mu.Unlock()
	if err := d.assigned.setIfSession(w.id, d.sessionRecord(s, next)); err != nil {
		d.log.Warn("session record not updated", "session", key.id, "err", err)
	}
	return &v, nil
}

// DeleteSession implements api.Backend: the session ends as a release does (evicted, when
// an admin ends another tenant's).
func (d *Daemon) DeleteSession(ctx context.Context, id string) error {
	_, s, err := d.existing(ctx, id)
	if err != nil {
		return err
	}
	reason := api.EndReleased
	if api.CallerOf(ctx).Operator {
		reason = api.EndEvicted
	}
	return d.end(ctx, s, reason)
}

// SessionToken implements api.Backend: the session a session access token reaches.
func (d *Daemon) SessionToken(token string) (api.Caller, bool) {
	h := sha256.Sum256([]byte(token))
	d.mu.Lock()
	defer d.mu.Unlock()
	key, ok := d.tokens[h]
	if !ok {
		return api.Caller{}, false
	}
	return api.Caller{Tenant: key.tenant, Session: key.id}, true
}

// sessionRecord is what the record of s's worker says: its session and shape sh.
func (d *Daemon) sessionRecord(s *session, sh shape) record {
	tenant := s.key.tenant
	if tenant == api.DefaultTenant {
		tenant = ""
	}
	return record{State: stateSession, User: s.key.id, Tenant: tenant, Shape: sh.record()}
}

// changeLimits applies new limits to worker w (which has old), the disk first (the change a
// host may refuse), then CPU, memory and pids through its cgroups. Memory below what the
// session uses now is refused (409), and so is a smaller disk (422). It returns the limits
// in force afterwards: old, unless the disk grew before something else failed.
func (d *Daemon) changeLimits(ctx context.Context, w *worker, old, next api.Limits) (api.Limits, error) {
	if next.DiskMB < old.DiskMB {
		return old, api.Refuse("limits.disk_mb", "limits.disk_mb cannot shrink (%d MB now)", old.DiskMB)
	}
	if next.MemoryMB < old.MemoryMB {
		if u, err := d.rt.Usage(w.id); err == nil && u.MemoryBytes > int64(next.MemoryMB)<<20 {
			return old, &api.Problem{Kind: api.Conflict, Field: "limits.memory_mb",
				Detail: fmt.Sprintf("the session uses %d MB now, more than limits.memory_mb %d", u.MemoryBytes>>20, next.MemoryMB)}
		}
	}
	inForce := old
	if next.DiskMB > old.DiskMB {
		if err := d.disks.Grow(ctx, w.id, next.DiskMB); err != nil {
			if errors.Is(err, errCannotGrow) {
				return old, &api.Problem{Kind: api.Conflict, Field: "limits.disk_mb", Detail: err.Error()}
			}
			return old, &api.Problem{Kind: api.Internal, Detail: "disk not grown", Cause: err}
		}
		inForce.DiskMB = next.DiskMB
	}
	if next.CPU != old.CPU || next.MemoryMB != old.MemoryMB || next.Pids != old.Pids {
		err := d.rt.Update(ctx, w.id, runtime.Resources{CPU: next.CPU, MemoryMB: next.MemoryMB, Pids: next.Pids})
		if err != nil {
			if next.MemoryMB < old.MemoryMB {
				return inForce, &api.Problem{Kind: api.Conflict, Field: "limits.memory_mb",
					Detail: "the kernel could not bring the session's memory under the new limit", Cause: err}
			}
			return inForce, &api.Problem{Kind: api.Internal, Detail: "limits not applied", Cause: err}
		}
	}
	return next, nil
}
