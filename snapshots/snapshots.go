// Package snapshots owns the snapshots of sessions' disks kept on the host (SPEC 3.14):
// each a directory <state-dir>/snapshots/<id> holding the disk's image and what the session
// was (meta.json), made whole or not at all, read again at start, listed by tenant, and
// bounded in count (per tenant) and in the bytes they take on the host (in all). Copying a
// disk is blockdev's; deciding who may is the daemon's.
package snapshots

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/codebox/codebox/blockdev"
)

// Meta is what a snapshot was taken of.
type Meta struct {
	ID          string            `json:"id"`
	Tenant      string            `json:"tenant"`
	Session     string            `json:"session"`
	Created     time.Time         `json:"created"`
	Environment string            `json:"environment"`
	CPU         float64           `json:"cpu"`
	MemoryMB    int               `json:"memory_mb"`
	DiskMB      int               `json:"disk_mb"`
	Pids        int               `json:"pids"`
	Network     []string          `json:"network,omitempty"`
	Packages    bool              `json:"packages,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	FreezeMS    float64           `json:"freeze_ms"`
	// UIDBase starts the host uid range of the worker it was taken in: its files' owners.
	UIDBase int `json:"uid_base"`
	// Stored is what its image takes on the host (a sparse file's blocks), in bytes.
	Stored int64 `json:"-"`
}

// Errors the daemon maps to its answers.
var (
	ErrNotFound = errors.New("no such snapshot")
	ErrExists   = errors.New("a snapshot has that id")
	ErrQuota    = errors.New("over a snapshot quota")
	ErrBadID    = errors.New("a snapshot id is 1 to 64 of a-z A-Z 0-9 . _ -, not starting with a dot")
)

var idRe = regexp.MustCompile(`^[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,63}$`)

// ValidID reports whether id can name a snapshot.
func ValidID(id string) bool { return idRe.MatchString(id) }

// Store is the host's snapshots.
type Store struct {
	dir      string
	maxCount int   // per tenant
	maxBytes int64 // all snapshots' images on the host

	mu       sync.Mutex
	snaps    map[string]*Meta  // by dirName(tenant, id)
	pending  map[string]string // those being made: their tenant
	reserved int64             // bytes the copies being made may take
	stored   int64
}

// dirName is the directory of tenant's snapshot id: ids are each tenant's own.
func dirName(tenant, id string) string {
	h := sha256.Sum256([]byte(tenant + "\x00" + id))
	return hex.EncodeToString(h[:12])
}

// Open reads the snapshots under dir (made if missing) and drops what a stop left half made.
func Open(dir string, maxCount int, maxBytes int64) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	s := &Store{dir: dir, maxCount: maxCount, maxBytes: maxBytes, snaps: map[string]*Meta{}, pending: map[string]string{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.RemoveAll(p)
			continue
		}
		var m Meta
		b, err := os.ReadFile(filepath.Join(p, "meta.json"))
		if err != nil || json.Unmarshal(b, &m) != nil || dirName(m.Tenant, m.ID) != e.Name() || !ValidID(m.ID) {
			continue // not one of ours, or damaged: left for the operator to look at
		}
		m.Stored = blockdev.Allocated(filepath.Join(p, "disk.img"))
		s.snaps[e.Name()] = &m
		s.stored += m.Stored
	}
	return s, nil
}

// Image is the disk image of tenant's snapshot id.
func (s *Store) Image(tenant, id string) string {
	return filepath.Join(s.dir, dirName(tenant, id), "disk.img")
}

// Create makes snapshot m.ID for m.Tenant: take copies the disk to the path it is given
// and says how long the source was frozen. The snapshot appears only once whole; a failure
// leaves nothing. reserve is the most the copy can take (the disk's size): it counts
// against the bytes quota while the copy is made.
func (s *Store) Create(m Meta, reserve int64, take func(dst string) (time.Duration, error)) (*Meta, error) {
	if !ValidID(m.ID) {
		return nil, ErrBadID
	}
	k := dirName(m.Tenant, m.ID)
	s.mu.Lock()
	if _, ok := s.snaps[k]; ok || s.pending[k] != "" {
		s.mu.Unlock()
		return nil, ErrExists
	}
	if n := s.countLocked(m.Tenant); n >= s.maxCount {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: this key has %d snapshots, the most one may (--max-snapshots): delete one first", ErrQuota, n)
	}
	if s.stored+s.reserved+reserve > s.maxBytes {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: snapshots take %d MB of the host's %d MB (--max-snapshot-mb), copies under way %d MB, this one up to %d MB more",
			ErrQuota, s.stored>>20, s.maxBytes>>20, s.reserved>>20, reserve>>20)
	}
	s.pending[k] = m.Tenant
	s.reserved += reserve
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, k)
		s.reserved -= reserve
		s.mu.Unlock()
	}()

	tmp, err := os.MkdirTemp(s.dir, ".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	froze, err := take(filepath.Join(tmp, "disk.img"))
	if err != nil {
		return nil, err
	}
	m.FreezeMS = float64(froze.Microseconds()) / 1000
	m.Stored = blockdev.Allocated(filepath.Join(tmp, "disk.img"))
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(tmp, "meta.json"), b); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stored+m.Stored > s.maxBytes {
		return nil, fmt.Errorf("%w: this snapshot takes %d MB, past the host's %d MB for snapshots (--max-snapshot-mb)", ErrQuota, m.Stored>>20, s.maxBytes>>20)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, k)); err != nil {
		return nil, err
	}
	s.snaps[k] = &m
	s.stored += m.Stored
	c := m
	return &c, nil
}

func (s *Store) countLocked(tenant string) int {
	n := 0
	for _, m := range s.snaps {
		if m.Tenant == tenant {
			n++
		}
	}
	for _, t := range s.pending {
		if t == tenant {
			n++
		}
	}
	return n
}

// Get is tenant's snapshot id.
func (s *Store) Get(tenant, id string) (*Meta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.snaps[dirName(tenant, id)]
	if !ok {
		return nil, ErrNotFound
	}
	c := *m
	return &c, nil
}

// List is tenant's snapshots, oldest first.
func (s *Store) List(tenant string) []Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Meta
	for _, m := range s.snaps {
		if m.Tenant == tenant {
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b Meta) int { return a.Created.Compare(b.Created) })
	return out
}

// Delete removes tenant's snapshot id. Sessions made from it keep their disks (copies).
func (s *Store) Delete(tenant, id string) error {
	k := dirName(tenant, id)
	s.mu.Lock()
	m, ok := s.snaps[k]
	if !ok {
		s.mu.Unlock()
		return ErrNotFound
	}
	delete(s.snaps, k)
	s.stored -= m.Stored
	s.mu.Unlock()
	// Renamed away first: a stop half way leaves a temporary directory, removed at start.
	gone := filepath.Join(s.dir, ".tmp-gone-"+k)
	if err := os.Rename(filepath.Join(s.dir, k), gone); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

func writeSynced(file string, b []byte) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
