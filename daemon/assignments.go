package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// assignments records which session each worker serves, in <state-dir>/sessions.json, so a
// codeboxd restarted after a crash gives a worker back to its session and never to
// another. It is written (temporary file, rename) before the worker runs any of the
// session's code. It is not fsynced: it must survive a crash of codeboxd, which the page
// cache does; a crash of the host takes the workers with it.
type assignments struct {
	path string
	mu   sync.Mutex
	m    map[string]string // worker id → user_uuid
}

func loadAssignments(stateDir string) (*assignments, error) {
	a := &assignments{path: filepath.Join(stateDir, "sessions.json"), m: map[string]string{}}
	b, err := os.ReadFile(a.path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", a.path, err)
	}
	if err := json.Unmarshal(b, &a.m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", a.path, err)
	}
	return a, nil
}

func (a *assignments) get(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[id]
}

func (a *assignments) set(id, user string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if user == "" {
		if _, ok := a.m[id]; !ok {
			return nil
		}
		delete(a.m, id)
	} else {
		a.m[id] = user
	}
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
