package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// A worker's state, as recorded for a later codeboxd.
const (
	stateIdle    = "idle"    // in the pool, never used by a session
	stateSession = "session" // serving User
	stateRetired = "retired" // being destroyed; never to serve anyone again
)

// record is what <state-dir>/sessions.json says of one worker.
type record struct {
	State string `json:"state"`
	User  string `json:"user,omitempty"`
}

// assignments records the state of every worker in <state-dir>/sessions.json, so a
// codeboxd restarted after a crash gives a worker back to its session, or to the pool if
// no session ever used it, and never to another session: a worker is recorded idle before
// it joins the pool, serving its session before it runs any of the session's code, and
// retired before its destruction begins (the record goes once the destruction succeeded).
// A worker with no record, or a retired one, is destroyed by the next codeboxd.
//
// The file is written (temporary file, rename) but not fsynced: it must survive a crash of
// codeboxd, which the page cache does; a crash of the host takes the workers with it.
type assignments struct {
	path string
	mu   sync.Mutex
	m    map[string]record // worker id → record
}

func loadAssignments(stateDir string) (*assignments, error) {
	a := &assignments{path: filepath.Join(stateDir, "sessions.json"), m: map[string]record{}}
	b, err := os.ReadFile(a.path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", a.path, err)
	}
	if err := json.Unmarshal(b, &a.m); err == nil {
		return a, nil
	}
	// The first format: worker id → user_uuid of the workers that served a session.
	var old map[string]string
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, fmt.Errorf("parse %s: %w", a.path, err)
	}
	for id, user := range old {
		a.m[id] = record{State: stateSession, User: user}
	}
	return a, nil
}

func (a *assignments) get(id string) (record, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.m[id]
	return r, ok
}

func (a *assignments) set(id string, r record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[id] = r
	return a.save()
}

// forget drops the record of a worker that is gone.
func (a *assignments) forget(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.m[id]; !ok {
		return nil
	}
	delete(a.m, id)
	return a.save()
}

// keep drops the records of workers not in alive.
func (a *assignments) keep(alive map[string]string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.m {
		if _, ok := alive[id]; !ok {
			delete(a.m, id)
		}
	}
	return a.save()
}

func (a *assignments) save() error {
	b, err := json.Marshal(a.m)
	if err != nil {
		return err
	}
	tmp := a.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, a.path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}
