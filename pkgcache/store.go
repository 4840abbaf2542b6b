package pkgcache

import (
	"container/list"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// store keeps files by their hash in one directory, at most max bytes, the least recently
// used out first. A file is written to a temporary name, its hash checked, then renamed:
// a file in the store is always whole and the one its index named.
type store struct {
	dir       string
	max       int64
	sizeGauge prometheus.Gauge

	mu    sync.Mutex
	files map[string]*list.Element // of *entry, in lru
	lru   *list.List               // least recently used first
	total int64
}

type entry struct {
	hash string
	size int64
	used time.Time
}

var hashName = regexp.MustCompile(`^([0-9a-f]{64}|[0-9a-f]{128})$`)

func openStore(dir string, max int64) (*store, error) {
	if max <= 0 {
		return nil, errors.New("pkgcache: the cache's size must be more than 0")
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("package cache: %w", err)
	}
	s := &store{dir: dir, max: max, files: map[string]*list.Element{}, lru: list.New(),
		sizeGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "codebox_package_cache_size_bytes", Help: "Bytes of package files the cache holds."})}
	// A download a stop cut short left its temporary file.
	if tmp, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, e := range tmp {
			os.Remove(filepath.Join(dir, "tmp", e.Name()))
		}
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("package cache: %w", err)
	}
	var found []*entry
	for _, de := range des {
		if !hashName.MatchString(de.Name()) || !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue
		}
		found = append(found, &entry{hash: de.Name(), size: info.Size(), used: info.ModTime()})
	}
	// Their order of use, as far as the files' times tell it.
	slices.SortFunc(found, func(a, b *entry) int { return a.used.Compare(b.used) })
	for _, e := range found {
		s.files[e.hash] = s.lru.PushBack(e)
		s.total += e.size
	}
	s.evictLocked(0)
	s.sizeGauge.Set(float64(s.total))
	return s, nil
}

func (s *store) has(h string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[h] != nil
}

// open returns the file of hash h and its size, and counts it used.
func (s *store) open(h string) (*os.File, int64, error) {
	s.mu.Lock()
	el := s.files[h]
	var size int64
	if el != nil {
		s.lru.MoveToBack(el)
		size = el.Value.(*entry).size
	}
	s.mu.Unlock()
	if el == nil {
		return nil, 0, os.ErrNotExist
	}
	f, err := os.Open(filepath.Join(s.dir, h))
	if err != nil {
		return nil, 0, err
	}
	// The use survives a restart, roughly: the order of eviction after one.
	now := time.Now()
	os.Chtimes(filepath.Join(s.dir, h), now, now)
	return f, size, nil
}

// put reads r (at most max bytes) into the store under h, when its algo hash is h.
func (s *store) put(h, algo string, r io.Reader, max int64) error {
	if !hashName.MatchString(h) {
		return fmt.Errorf("not a hash: %q", h)
	}
	var sum hash.Hash
	switch algo {
	case "sha256":
		sum = sha256.New()
	case "sha512":
		sum = sha512.New()
	default:
		return fmt.Errorf("hash %q is not one the cache checks", algo)
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "fill-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(io.MultiWriter(tmp, sum), r)
	if err == nil {
		err = tmp.Sync() // whole on disk before its name says it is there
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return fmt.Errorf("download: %w", err)
	case n > max:
		return fmt.Errorf("the file is over %d MiB", max>>20)
	case n > s.max:
		return fmt.Errorf("the file (%d MiB) is larger than the whole cache", n>>20)
	case hex.EncodeToString(sum.Sum(nil)) != h:
		return errHashMismatch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evictLocked(n)
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, h)); err != nil {
		return err
	}
	if old := s.files[h]; old != nil {
		s.total -= old.Value.(*entry).size
		s.lru.Remove(old)
	}
	s.files[h] = s.lru.PushBack(&entry{hash: h, size: n, used: time.Now()})
	s.total += n
	s.sizeGauge.Set(float64(s.total))
	return nil
}

// evictLocked removes the least recently used files until room more bytes fit.
func (s *store) evictLocked(room int64) {
	for s.total+room > s.max && s.lru.Len() > 0 {
		e := s.lru.Remove(s.lru.Front()).(*entry)
		os.Remove(filepath.Join(s.dir, e.hash))
		s.total -= e.size
		delete(s.files, e.hash)
	}
	s.sizeGauge.Set(float64(s.total))
}
