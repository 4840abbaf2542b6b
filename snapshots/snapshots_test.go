package snapshots

import (
	"errors"
	"os"
	"testing"
	"time"
)

func take(size int64) func(string) (time.Duration, error) {
	return func(dst string) (time.Duration, error) {
		return time.Millisecond, os.WriteFile(dst, make([]byte, size), 0o600)
	}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Create(Meta{ID: "one", Tenant: "a", Created: time.Now()}, 0, take(4096))
	if err != nil || m.FreezeMS != 1 || m.Stored == 0 {
		t.Fatalf("create: %+v %v", m, err)
	}
	if _, err := s.Create(Meta{ID: "one", Tenant: "a"}, 0, take(1)); !errors.Is(err, ErrExists) {
		t.Fatalf("a taken id: %v", err)
	}
	if _, err := s.Create(Meta{ID: "one", Tenant: "b"}, 0, take(1)); err != nil {
		t.Fatalf("another tenant's id of the same name: %v", err)
	}
	s.Delete("b", "one")
	if _, err := s.Create(Meta{ID: "../x", Tenant: "a"}, 0, take(1)); !errors.Is(err, ErrBadID) {
		t.Fatalf("a bad id: %v", err)
	}
	if _, err := s.Create(Meta{ID: "bad", Tenant: "a"}, 0, func(string) (time.Duration, error) { return 0, errors.New("disk full") }); err == nil {
		t.Fatal("a failed copy made a snapshot")
	}
	if _, err := s.Get("a", "bad"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the failed one: %v", err)
	}
	if _, err := s.Create(Meta{ID: "big", Tenant: "a"}, 0, take(2<<20)); !errors.Is(err, ErrQuota) {
		t.Fatalf("over the bytes: %v", err)
	}
	if _, err := s.Create(Meta{ID: "reserved", Tenant: "a"}, 2<<20, take(1)); !errors.Is(err, ErrQuota) {
		t.Fatalf("a copy that could take more than is left: %v", err)
	}
	s.Create(Meta{ID: "two", Tenant: "a", Created: time.Now()}, 0, take(1))
	if _, err := s.Create(Meta{ID: "three", Tenant: "a"}, 0, take(1)); !errors.Is(err, ErrQuota) {
		t.Fatalf("over the count: %v", err)
	}
	if _, err := s.Get("b", "one"); !errors.Is(err, ErrNotFound) {
		t.Fatal("another tenant's snapshot was found")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("left in the directory: %v", entries)
	}
	again, err := Open(dir, 2, 1<<20)
	if err != nil || len(again.List("a")) != 2 || again.List("a")[0].ID != "one" {
		t.Fatalf("reopened: %v %+v", err, again.List("a"))
	}
	if err := again.Delete("a", "one"); err != nil {
		t.Fatal(err)
	}
	if err := again.Delete("a", "one"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted twice: %v", err)
	}
	if _, err := os.Stat(again.Image("a", "one")); !os.IsNotExist(err) {
		t.Fatal("the deleted snapshot's image is still there")
	}
}
