// Package volumes owns the named volumes (SPEC 3.14): an ext4 image per volume under
// <state-dir>/volumes, mounted once on the host, and mounted into a session's worker at a
// directory of its disk as an idmapped mount through the worker's own user namespace, so
// that its files belong to whichever worker's user has it (on the image they belong to the
// sandbox user's uid, 1000). A volume is read-write in one session at a time or read-only in
// any number; it outlives sessions and restarts; it is the tenant's, as /sandbox is.
package volumes

import (
	"context"
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
	"golang.org/x/sys/unix"
)

// Use is a session's mount of a volume.
type Use struct {
	Session  string `json:"session"` // the owner key of the session (its tenant and id)
	ID       string `json:"id"`      // the session's id, for the API
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// Volume is one named volume.
type Volume struct {
	Name    string    `json:"name"`
	Tenant  string    `json:"tenant"`
	SizeMB  int       `json:"size_mb"`
	Created time.Time `json:"created"`
	Uses    []Use     `json:"uses,omitempty"`
	// Stored is what its image takes on the host, in bytes.
	Stored int64 `json:"-"`
}

// Errors the daemon maps to its answers.
var (
	ErrNotFound = errors.New("no such volume")
	ErrExists   = errors.New("a volume has that name")
	ErrInUse    = errors.New("the volume is in use")
	ErrQuota    = errors.New("over a volume quota")
	ErrBadName  = errors.New("a volume name is 1 to 64 of a-z A-Z 0-9 . _ -, not starting with a dot")
)

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,63}$`)

// ValidName reports whether name can name a volume.
func ValidName(name string) bool { return nameRe.MatchString(name) }

// Owner is the uid (and gid) a volume's files belong to on its image: the sandbox user's,
// as every worker's user namespace maps it.
const Owner = 1000

// Store is the host's volumes.
type Store struct {
	dir      string
	maxCount int   // per tenant
	maxBytes int64 // all volumes' sizes

	mu   sync.Mutex
	vols map[string]*Volume // by key
	// busy are volumes being made or deleted (their file system work is done without mu).
	busy map[string]*Volume
}

func key(tenant, name string) string {
	h := sha256.Sum256([]byte(tenant + "\x00" + name))
	return hex.EncodeToString(h[:12])
}

func (s *Store) image(k string) string { return filepath.Join(s.dir, k+".img") }
func (s *Store) meta(k string) string  { return filepath.Join(s.dir, k+".json") }

// MountPoint is where volume k is mounted on the host.
func (s *Store) mountPoint(k string) string { return filepath.Join(s.dir, "mnt", k) }

// Open reads the volumes under dir (made if missing) and mounts each on the host.
func Open(dir string, maxCount int, maxBytes int64) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "mnt"), 0o700); err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	s := &Store{dir: dir, maxCount: maxCount, maxBytes: maxBytes, vols: map[string]*Volume{}, busy: map[string]*Volume{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	for _, e := range entries {
		k, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || k == "" {
			continue
		}
		var v Volume
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || json.Unmarshal(b, &v) != nil || key(v.Tenant, v.Name) != k {
			continue
		}
		if err := s.mountHost(k); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		v.Stored = blockdev.Allocated(s.image(k))
		s.vols[k] = &v
	}
	return s, nil
}

func (s *Store) mountHost(k string) error {
	mp := s.mountPoint(k)
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return err
	}
	return blockdev.MountImage(s.image(k), mp)
}

// Create makes tenant's volume name of sizeMB, empty. The file system is made and mounted
// without the store's lock: other volumes' calls do not wait for it.
func (s *Store) Create(ctx context.Context, tenant, name string, sizeMB int) (*Volume, error) {
	if !ValidName(name) {
		return nil, ErrBadName
	}
	k := key(tenant, name)
	s.mu.Lock()
	if _, ok := s.vols[k]; ok || s.busy[k] != nil {
		s.mu.Unlock()
		return nil, ErrExists
	}
	n, total := 0, int64(0)
	for _, set := range []map[string]*Volume{s.vols, s.busy} {
		for _, v := range set {
			total += int64(v.SizeMB) << 20
			if v.Tenant == tenant {
				n++
			}
		}
	}
	if n >= s.maxCount {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: this key has %d volumes, the most one may (--max-volumes): delete one first", ErrQuota, n)
	}
	if total+int64(sizeMB)<<20 > s.maxBytes {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: volumes may take %d MB on this host (--max-volume-mb), %d MB are taken", ErrQuota, s.maxBytes>>20, total>>20)
	}
	v := &Volume{Name: name, Tenant: tenant, SizeMB: sizeMB, Created: time.Now().UTC()}
	s.busy[k] = v
	s.mu.Unlock()
	err := s.make(ctx, k, v)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, k)
	if err != nil {
		return nil, err
	}
	v.Stored = blockdev.Allocated(s.image(k))
	s.vols[k] = v
	c := *v
	return &c, nil
}

func (s *Store) make(ctx context.Context, k string, v *Volume) error {
	if err := blockdev.MakeImage(ctx, s.image(k), v.SizeMB, Owner); err != nil {
		return err
	}
	if err := s.mountHost(k); err != nil {
		os.Remove(s.image(k))
		return err
	}
	// The image's root came out of mkfs with lost+found; the tenant's volume starts empty.
	os.Remove(filepath.Join(s.mountPoint(k), "lost+found"))
	if err := s.saveLocked(k, v); err != nil {
		blockdev.Unmount(s.mountPoint(k))
		os.Remove(s.image(k))
		return err
	}
	return nil
}

func (s *Store) saveLocked(k string, v *Volume) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := s.meta(k) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.meta(k))
}

// Get is tenant's volume name.
func (s *Store) Get(tenant, name string) (*Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vols[key(tenant, name)]
	if !ok {
		return nil, ErrNotFound
	}
	c := *v
	c.Uses = slices.Clone(v.Uses)
	return &c, nil
}

// List is tenant's volumes, by name.
func (s *Store) List(tenant string) []Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Volume
	for _, v := range s.vols {
		if v.Tenant == tenant {
			c := *v
			c.Uses = slices.Clone(v.Uses)
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Volume) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Delete removes tenant's volume name, which no session may be using. Its unmount (which
// flushes what the volume holds) is done without the store's lock.
func (s *Store) Delete(tenant, name string) error {
	k := key(tenant, name)
	s.mu.Lock()
	v, ok := s.vols[k]
	if !ok {
		s.mu.Unlock()
		return ErrNotFound
	}
	if len(v.Uses) > 0 {
		s.mu.Unlock()
		return fmt.Errorf("%w: session %s has it at %s", ErrInUse, v.Uses[0].ID, v.Uses[0].Path)
	}
	delete(s.vols, k)
	s.busy[k] = v
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.busy, k)
		s.mu.Unlock()
	}()
	os.Remove(s.meta(k)) // first: a stop half way forgets it rather than half keeps it
	if err := blockdev.Unmount(s.mountPoint(k)); err != nil {
		return err
	}
	os.Remove(s.mountPoint(k))
	return os.Remove(s.image(k))
}

// Attach mounts tenant's volume name for session u into target (an O_PATH descriptor of an
// empty directory on the session's disk), idmapped through the user namespace of the
// worker's process pid. Read-write: no other session may have it; read-only: none may have
// it read-write.
func (s *Store) Attach(tenant, name string, u Use, target *os.File, pid int) error {
	k := key(tenant, name)
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vols[k]
	if !ok {
		return ErrNotFound
	}
	for _, o := range v.Uses {
		if !u.ReadOnly || !o.ReadOnly {
			how := "read-write"
			if o.ReadOnly {
				how = "read-only"
			}
			return fmt.Errorf("%w: session %s has it %s (read-write is one session's at a time, read-only any number's)", ErrInUse, o.ID, how)
		}
	}
	if err := idmappedMount(s.mountPoint(k), target, pid, u.ReadOnly); err != nil {
		return err
	}
	v.Uses = append(v.Uses, u)
	return s.saveLocked(k, v)
}

// idmappedMount mounts a copy of the mount at src onto target, its owners seen through the
// user namespace of process pid, read-only if ro.
func idmappedMount(src string, target *os.File, pid int, ro bool) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("clone the volume's mount: %w", err)
	}
	defer unix.Close(tree)
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		return fmt.Errorf("the worker's user namespace: %w", err)
	}
	defer ns.Close()
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC,
		Userns_fd: uint64(ns.Fd())}
	if ro {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("idmap the volume's mount: %w", err)
	}
	if err := unix.MoveMount(tree, "", int(target.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount the volume: %w", err)
	}
	return nil
}

// Release forgets session's uses of any volume (its worker, and its mounts with it, are
// gone or going).
func (s *Store) Release(session string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.vols {
		n := len(v.Uses)
		v.Uses = slices.DeleteFunc(v.Uses, func(u Use) bool { return u.Session == session })
		if len(v.Uses) != n {
			s.saveLocked(k, v)
		}
	}
}

// Keep forgets the uses of sessions live does not name (after a restart).
func (s *Store) Keep(live func(session string) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.vols {
		n := len(v.Uses)
		v.Uses = slices.DeleteFunc(v.Uses, func(u Use) bool { return !live(u.Session) })
		if len(v.Uses) != n {
			s.saveLocked(k, v)
		}
	}
}

// Close unmounts the volumes from the host (a session's mount of one stays while its worker
// runs); Open mounts them again.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for k := range s.vols {
		errs = append(errs, blockdev.Unmount(s.mountPoint(k)))
	}
	return errors.Join(errs...)
}

// Root is where tenant's volume name is on the host (for the file calls).
func (s *Store) Root(tenant, name string) string { return s.mountPoint(key(tenant, name)) }
