package daemon

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/egress"
)

// A worker's state, as recorded for a later codeboxd.
const (
	stateIdle    = "idle"    // in the pool, never used by a session
	stateSession = "session" // serving a session
	stateRetired = "retired" // being destroyed; never to serve anyone again
)

// record is what <state-dir>/sessions/<worker-id>.json says of one worker.
type record struct {
	State string `json:"state"`
	// User is the session's id, Tenant its tenant ("": the default tenant).
	User   string `json:"user,omitempty"`
	Tenant string `json:"tenant,omitempty"`
	// Shape is the session's (absent in records of codeboxd before sessions had one).
	Shape *shapeRecord `json:"shape,omitempty"`
}

// shapeRecord is a session's shape as a record keeps it: env values too (the session's
// next kernel needs them), in a file readable by root alone.
type shapeRecord struct {
	Environment string            `json:"environment"`
	Limits      api.Limits        `json:"limits"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Created     time.Time         `json:"created"`
	Expires     *time.Time        `json:"expires,omitempty"`
	IdleTimeout time.Duration     `json:"idle_timeout_ns"`
	Token       string            `json:"token_sha256,omitempty"`
	Network     []string          `json:"network,omitempty"`
	Packages    bool              `json:"packages,omitempty"` // the network preset
	Volumes     []api.VolumeMount `json:"volumes,omitempty"`
}

func (sh shape) record() *shapeRecord {
	r := &shapeRecord{Environment: sh.environment, Limits: sh.limits, Metadata: sh.metadata, Env: sh.env,
		Created: sh.created, IdleTimeout: sh.idleTimeout, Network: sh.network.Texts(),
		Packages: sh.network != nil && sh.network.Packages, Volumes: sh.volumes}
	if !sh.expires.IsZero() {
		e := sh.expires
		r.Expires = &e
	}
	if sh.token != ([32]byte{}) {
		r.Token = hex.EncodeToString(sh.token[:])
	}
	return r
}

func (r *shapeRecord) shape() shape {
	sh := shape{environment: r.Environment, limits: r.Limits, metadata: r.Metadata, env: r.Env,
		created: r.Created, idleTimeout: r.IdleTimeout, volumes: r.Volumes}
	if r.Expires != nil {
		sh.expires = *r.Expires
	}
	if b, err := hex.DecodeString(r.Token); err == nil && len(b) == len(sh.token) {
		copy(sh.token[:], b)
	}
	if len(r.Network) > 0 || r.Packages {
		if p, err := egress.Parse(r.Network); err == nil { // checked when it was set
			p.Packages = r.Packages
			sh.network = p
		}
	}
	return sh
}

// assignments records the state of every worker, one file per worker under
// <state-dir>/sessions, so a codeboxd restarted after a crash gives a worker back to its
// session (with the session's shape), or to the pool if no session ever used it, and never
// to another session: a worker is recorded idle before it joins the pool, serving its
// session before it runs any of the session's code, and retired before its destruction
// begins (the record goes once the destruction succeeded). A worker with no record, or a
// retired one, is destroyed by the next codeboxd. A file per worker keeps each change one
// small write, whatever the number of sessions and the size of their shapes.
//
// The files are written (temporary file, rename) but not fsynced: they must survive a
// crash of codeboxd, which the page cache does; a crash of the host takes the workers
// with it.
type assignments struct {
	dir string
	mu  sync.Mutex
	m   map[string]record // worker id → record
}

func loadAssignments(stateDir string) (*assignments, error) {
	a := &assignments{dir: filepath.Join(stateDir, "sessions"), m: map[string]record{}}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read record %s: %w", e.Name(), err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			// Unreadable: as if there were none, so the worker is destroyed, never
			// handed to anyone.
			continue
		}
		a.m[id] = r
	}
	return a, a.migrate(stateDir)
}

// migrate takes over the records of the single sessions.json that earlier codeboxd wrote
// (worker id → record; before that, worker id → user_uuid).
func (a *assignments) migrate(stateDir string) error {
	old := filepath.Join(stateDir, "sessions.json")
	b, err := os.ReadFile(old)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", old, err)
	}
	m := map[string]record{}
	if err := json.Unmarshal(b, &m); err != nil {
		var users map[string]string
		if err := json.Unmarshal(b, &users); err != nil {
			return fmt.Errorf("parse %s: %w", old, err)
		}
		for id, user := range users {
			m[id] = record{State: stateSession, User: user}
		}
	}
	for id, r := range m {
		if _, ok := a.m[id]; !ok && plainID(id) {
			if err := a.set(id, r); err != nil {
				return err
			}
		}
	}
	return os.Remove(old)
}

// plainID reports whether id can name a file.
func plainID(id string) bool {
	return id != "" && id != "." && id != ".." && !strings.ContainsAny(id, "/\x00")
}

// ids are the workers with a record.
func (a *assignments) ids() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.m))
	for id := range a.m {
		ids = append(ids, id)
	}
	return ids
}

func (a *assignments) get(id string) (record, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.m[id]
	return r, ok
}

func (a *assignments) set(id string, r record) error {
	if !plainID(id) {
		return fmt.Errorf("record of worker %q: not a plain name", id)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := writeJSON(filepath.Join(a.dir, id+".json"), r); err != nil {
		return err
	}
	a.m[id] = r
	return nil
}

// setIfSession rewrites the record of a worker that serves a session (its shape changed), and
// only such a one: a worker retired or gone meanwhile must never be recorded as a session's
// again, or a later codeboxd would adopt it.
func (a *assignments) setIfSession(id string, r record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur, ok := a.m[id]; !ok || cur.State != stateSession {
		return nil
	}
	if err := writeJSON(filepath.Join(a.dir, id+".json"), r); err != nil {
		return err
	}
	a.m[id] = r
	return nil
}

// forget drops the record of a worker that is gone.
func (a *assignments) forget(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.m[id]; !ok {
		return nil
	}
	delete(a.m, id)
	if err := os.Remove(filepath.Join(a.dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// keep drops the records of workers not in alive.
func (a *assignments) keep(alive map[string]string) error {
	a.mu.Lock()
	var gone []string
	for id := range a.m {
		if _, ok := alive[id]; !ok {
			gone = append(gone, id)
		}
	}
	a.mu.Unlock()
	var errs []error
	for _, id := range gone {
		errs = append(errs, a.forget(id))
	}
	return errors.Join(errs...)
}
