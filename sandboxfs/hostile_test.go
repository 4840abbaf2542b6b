package sandboxfs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What user code can plant on its disk to wedge or bloat the daemon. Each open must come
// back at once with a clear error; each listing must hold at most a page.

// quickly fails the test if f does not return within a few seconds: a blocking open would
// hang for ever (a FIFO with no writer) or 45 s (a lease).
func quickly(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked", what)
	}
}

func TestOnlyRegularFilesOpenAndNothingBlocks(t *testing.T) {
	r, _ := sandbox(t)
	dir := r.fd.Name()
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"fifo": "a FIFO", "sock": "a socket", "null": "a character device", "data": "a directory"} {
		quickly(t, "opening "+name, func() {
			f, _, err := r.OpenFile(".", name, 1<<20)
			if err == nil {
				f.Close()
				t.Errorf("%s opened", name)
				return
			}
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "/sandbox/"+name) {
				t.Errorf("%s: %v, want ErrNotRegular naming it as %s", name, err, want)
			}
		})
	}
	quickly(t, "removing the FIFO", func() {
		if err := r.Remove(".", "fifo"); !errors.Is(err, ErrNotRegular) {
			t.Errorf("remove fifo: %v", err)
		}
	})
}

// A sparse file claims a terabyte and holds nothing: its size is refused before a byte is
// read.
func TestSparseFileOverTheLimitIsRefusedAtOnce(t *testing.T) {
	r, _ := sandbox(t)
	p := filepath.Join(r.fd.Name(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil {
		f.Close()
		t.Fatalf("make a 1 TiB sparse file: %v", err)
	}
	f.Close()
	_, _, err = r.OpenFile(".", "sparse", 100<<20)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "1099511627776 bytes") {
		t.Fatalf("open: %v, want ErrTooLarge with the size", err)
	}
}

// A write lease (F_SETLEASE) makes every open for reading wait up to lease-break-time (45 s)
// for its holder; a non-blocking open fails at once instead.
func TestLeasedFileIsBusyNotBlocking(t *testing.T) {
	r, _ := sandbox(t)
	p := filepath.Join(r.fd.Name(), "leased")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	holder, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := unix.FcntlInt(holder.Fd(), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		t.Fatalf("take a write lease: %v", err)
	}
	quickly(t, "opening a leased file", func() {
		f, _, err := r.OpenFile(".", "leased", 10)
		if err == nil {
			f.Close()
			t.Fatal("a leased file opened without waiting: the lease was not in the way")
		}
		if !errors.Is(err, ErrBusy) {
			t.Fatalf("open: %v, want ErrBusy", err)
		}
	})
}

// Before: 100,000 long names cost ~148 MiB of daemon memory in one listing.
func TestListingIsPagedAndBounded(t *testing.T) {
	r, _ := sandbox(t)
	dir := filepath.Join(r.fd.Name(), "many")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 30_000
	long := strings.Repeat("n", 200)
	for i := 0; i < n; i++ {
		if err := os.Link(target, filepath.Join(dir, fmt.Sprintf("%s-%06d", long, i))); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	offset, pages := 0, 0
	var peak uint64
	for {
		var page *Page
		var err error
		heap := retainedBy(func() { page, err = r.List(context.Background(), "many", offset, 0) })
		peak = max(peak, heap)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page.Entries) > MaxListEntries {
			t.Fatalf("a page of %d entries", len(page.Entries))
		}
		for _, e := range page.Entries {
			if seen[e.Name] {
				t.Fatalf("%s listed twice", e.Name)
			}
			seen[e.Name] = true
		}
		if !page.Truncated {
			break
		}
		if page.Next != offset+len(page.Entries) {
			t.Fatalf("next offset %d after %d+%d", page.Next, offset, len(page.Entries))
		}
		offset = page.Next
	}
	if len(seen) != n+1 || pages != 4 {
		t.Fatalf("%d entries in %d pages, want %d in 4", len(seen), pages, n+1)
	}
	// A page of 10,000 entries with 207-byte names: about 3 MiB.
	if peak > 8<<20 {
		t.Fatalf("a page held %d MiB", peak>>20)
	}
	t.Logf("%d entries in %d pages; a page holds at most %d KiB", len(seen), pages, peak>>10)
	if p, err := r.List(context.Background(), "many", 0, 5); err != nil || len(p.Entries) != 5 || !p.Truncated || p.Next != 5 {
		t.Fatalf("limit 5: %+v %v", p, err)
	}
	if p, err := r.List(context.Background(), "many", n+10, 0); err != nil || len(p.Entries) != 0 || p.Truncated {
		t.Fatalf("offset past the end: %+v %v", p, err)
	}
}

func retainedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc < before.HeapAlloc {
		return 0
	}
	return after.HeapAlloc - before.HeapAlloc
}
