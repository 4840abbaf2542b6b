package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
)

// Ended sessions are remembered, so that a caller asking for one learns why it is gone:
// for --ended-retention, at most maxEnded of them (maxEndedPerTenant of one tenant, so that
// one tenant's churn does not wipe the others') and about maxEndedBytes, the oldest
// forgotten first. They are kept in <state-dir>/ended.json, written at most every
// endedSaveWait (a crash of codeboxd may forget that last while's), so they outlive
// restarts.

const (
	maxEnded          = 10_000
	maxEndedPerTenant = 2_000
	maxEndedBytes     = 16 << 20
	endedSaveWait     = 5 * time.Second
)

// endedSession is what is remembered of a session that ended.
type endedSession struct {
	Tenant         string            `json:"tenant"`
	ID             string            `json:"id"`
	Reason         string            `json:"reason"`
	At             time.Time         `json:"at"`
	WorkerID       string            `json:"worker_id,omitempty"`
	Environment    string            `json:"environment"`
	Limits         api.Limits        `json:"limits"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	LastActivityAt time.Time         `json:"last_activity_at"`
}

// size is about what e holds in memory, for the bound.
func (e endedSession) size() int {
	n := 256 + len(e.Tenant) + len(e.ID) + len(e.WorkerID) + len(e.Environment)
	for k, v := range e.Metadata {
		n += 64 + len(k) + len(v)
	}
	return n
}

// endedStore holds the ended sessions, oldest first. Putting one costs O(1) amortized: the
// oldest are dropped from the front, and the list is compacted only once most of it is
// holes (ends a later end of the same id replaced, or dropped ones).
type endedStore struct {
	path      string
	retention time.Duration
	log       *slog.Logger

	mu       sync.Mutex
	list     []endedSession     // oldest first; entries with an empty ID are holes
	head     int                // list[:head] are gone
	byKey    map[sessionKey]int // index into list of a key's end
	byTenant map[string]int     // ends kept of each tenant
	live     int
	bytes    int
	pending  bool // a save is scheduled
}

func loadEnded(stateDir string, retention time.Duration, log *slog.Logger) (*endedStore, error) {
	s := &endedStore{path: filepath.Join(stateDir, "ended.json"), retention: retention, log: log,
		byKey: map[sessionKey]int{}, byTenant: map[string]int{}}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.path, err)
	}
	var list []endedSession
	if err := json.Unmarshal(b, &list); err != nil {
		// What it said is lost, not the sessions: start afresh rather than not at all.
		log.Warn("ended sessions unreadable; starting without them", "path", s.path, "err", err)
		return s, nil
	}
	for _, e := range list {
		s.add(e)
	}
	s.prune(time.Now())
	return s, nil
}

// put remembers e (a later end of the same key replaces the earlier).
func (s *endedStore) put(e endedSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(e)
	s.prune(e.At)
	s.scheduleSave()
}

func (s *endedStore) add(e endedSession) {
	key := sessionKey{e.Tenant, e.ID}
	if i, ok := s.byKey[key]; ok {
		s.drop(i)
	}
	s.list = append(s.list, e)
	s.byKey[key] = len(s.list) - 1
	s.live++
	s.bytes += e.size()
	if s.byTenant[e.Tenant]++; s.byTenant[e.Tenant] > maxEndedPerTenant {
		for i := s.head; i < len(s.list); i++ { // its oldest: near the head, as it churns
			if s.list[i].Tenant == e.Tenant && s.list[i].ID != "" {
				s.drop(i)
				break
			}
		}
	}
}

// drop makes list[i] a hole.
func (s *endedStore) drop(i int) {
	e := s.list[i]
	if e.ID == "" {
		return
	}
	delete(s.byKey, sessionKey{e.Tenant, e.ID})
	if s.byTenant[e.Tenant]--; s.byTenant[e.Tenant] <= 0 {
		delete(s.byTenant, e.Tenant)
	}
	s.live--
	s.bytes -= e.size()
	s.list[i] = endedSession{}
}

// prune forgets, oldest first, what is past the retention or over the bounds, and compacts
// the list when most of it is holes.
func (s *endedStore) prune(now time.Time) {
	cut := now.Add(-s.retention)
	for s.head < len(s.list) {
		e := s.list[s.head]
		if e.ID != "" && !(s.retention > 0 && e.At.Before(cut)) && s.live <= maxEnded && s.bytes <= maxEndedBytes {
			break
		}
		s.drop(s.head)
		s.head++
	}
	if holes := len(s.list) - s.live; holes > 1024 && holes > s.live {
		kept := make([]endedSession, 0, s.live)
		for _, e := range s.list[s.head:] {
			if e.ID != "" {
				kept = append(kept, e)
			}
		}
		s.list, s.head = kept, 0
		clear(s.byKey)
		for i, e := range s.list {
			s.byKey[sessionKey{e.Tenant, e.ID}] = i
		}
	}
}

func (s *endedStore) get(key sessionKey) (endedSession, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.byKey[key]
	if !ok {
		return endedSession{}, false
	}
	e := s.list[i]
	if s.retention > 0 && time.Since(e.At) > s.retention {
		return endedSession{}, false
	}
	return e, true
}

// all returns the ended sessions that keep says to, oldest first.
func (s *endedStore) all(keep func(endedSession) bool) []endedSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []endedSession
	for _, e := range s.list {
		if e.ID != "" && keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func (s *endedStore) scheduleSave() {
	if s.pending {
		return
	}
	s.pending = true
	time.AfterFunc(endedSaveWait, s.save)
}

// save writes the store (temporary file, rename).
func (s *endedStore) save() {
	s.mu.Lock()
	s.pending = false
	list := make([]endedSession, 0, len(s.list))
	for _, e := range s.list {
		if e.ID != "" {
			list = append(list, e)
		}
	}
	s.mu.Unlock()
	if err := writeJSON(s.path, list); err != nil {
		s.log.Warn("ended sessions not saved", "err", err)
	}
}

// flush writes what is pending now (at shutdown).
func (s *endedStore) flush() {
	s.mu.Lock()
	pending := s.pending
	s.mu.Unlock()
	if pending {
		s.save()
	}
}

// writeJSON writes v to path through a temporary file and a rename, readable by root alone.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// view is e as the API shows it.
func (e endedSession) view(withTenant bool) api.Session {
	at := e.At
	v := api.Session{SessionID: e.ID, WorkerID: e.WorkerID, Environment: e.Environment, State: api.SessionEnded,
		Limits: e.Limits, Metadata: e.Metadata, EnvNames: []string{}, CreatedAt: e.CreatedAt,
		LastActivityAt: e.LastActivityAt, EndedAt: &at, EndedReason: e.Reason}
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	if withTenant {
		v.Tenant = e.Tenant
	}
	return v
}
