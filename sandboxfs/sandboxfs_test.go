package sandboxfs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCleanDirAndSplitFile(t *testing.T) {
	good := map[string]string{"": ".", "/sandbox": ".", "/sandbox/": ".", "/sandbox/a": "a", "/sandbox//a/b/": "a/b"}
	for in, want := range good {
		if got, err := CleanDir(in); err != nil || got != want {
			t.Errorf("CleanDir(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"/etc", "/sandboxx", "sandbox", "/sandbox/../etc", "/sandbox/a/..", "/sandbox/./a",
		"/sandbox/a\\b", "/sandbox/a\x00", "/", "../sandbox"} {
		if got, err := CleanDir(bad); !errors.Is(err, ErrBadPath) {
			t.Errorf("CleanDir(%q) = %q, %v; want ErrBadPath", bad, got, err)
		}
	}
	if d, n, err := SplitFile("/sandbox/data/a.csv"); err != nil || d != "data" || n != "a.csv" {
		t.Errorf("SplitFile = %q %q %v", d, n, err)
	}
	for _, bad := range []string{"/sandbox/", "/sandbox", "/sandbox/a/", "/sandbox/../x", "/etc/passwd", "/sandbox//a", "/sandbox/a\\b"} {
		if _, _, err := SplitFile(bad); !errors.Is(err, ErrBadPath) {
			t.Errorf("SplitFile(%q): %v; want ErrBadPath", bad, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a\\b", "a\x00b", strings.Repeat("n", 256)} {
		if err := CheckName(bad); !errors.Is(err, ErrBadPath) {
			t.Errorf("CheckName(%q): %v", bad, err)
		}
	}
}

func FuzzCleanDir(f *testing.F) {
	for _, s := range []string{"/sandbox/a/b", "/sandbox/../x", "/sandbox//", "/sandbox/\x00", "/sandbox/a\\..\\b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rel, err := CleanDir(p)
		if err != nil {
			return
		}
		if rel == "." {
			return
		}
		if strings.HasPrefix(rel, "/") || strings.ContainsAny(rel, "\\\x00") {
			t.Fatalf("CleanDir(%q) = %q", p, rel)
		}
		for _, c := range strings.Split(rel, "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("CleanDir(%q) = %q has component %q", p, rel, c)
			}
		}
		if dir, name, err := SplitFile(p + "/f"); err == nil && (filepath.Join(dir, name) != filepath.Join(rel, "f")) {
			t.Fatalf("SplitFile(%q) = %q %q", p+"/f", dir, name)
		}
	})
}

// sandbox makes a disk-like directory with the traps user code could plant.
func sandbox(t *testing.T) (*Root, string) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("host secret"), 0o600)
	os.Symlink(secret, filepath.Join(dir, "link"))                  // a file symlink
	os.Symlink(filepath.Dir(secret), filepath.Join(dir, "dirlink")) // a directory symlink
	os.Symlink("/proc/self/root/etc", filepath.Join(dir, "magic"))  // through a magic link
	os.Mkdir(filepath.Join(dir, "data"), 0o755)
	os.WriteFile(filepath.Join(dir, "data", "real.txt"), []byte("real"), 0o644)
	r, err := Open(dir, os.Getuid(), os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, secret
}

func TestSymlinksAreNeverFollowed(t *testing.T) {
	r, secret := sandbox(t)
	for _, c := range []struct{ dir, name string }{{".", "link"}, {"dirlink", "secret"}, {"magic", "passwd"}} {
		if f, _, err := r.OpenFile(c.dir, c.name, 1<<20); err == nil {
			b, _ := io.ReadAll(f)
			f.Close()
			t.Errorf("read %s/%s through a link: %q", c.dir, c.name, b)
		}
		if _, err := r.Write(c.dir, "new", strings.NewReader("x"), 10); c.dir != "." && err == nil {
			t.Errorf("wrote into %s through a link", c.dir)
		}
	}
	if err := r.Remove(".", "link"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("removing a symlink: %v", err)
	}
	if err := r.Remove("dirlink", "secret"); err == nil {
		t.Errorf("removed through a directory symlink")
	}
	if _, err := r.List(context.Background(), "dirlink", 0, 0); err == nil {
		t.Errorf("listed through a directory symlink")
	}
	// Writing to the name of a symlink is refused; the link and its target stay.
	if _, err := r.Write(".", "link", strings.NewReader("mine"), 10); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("writing over a symlink: %v", err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "host secret" {
		t.Fatalf("the symlink's target was written: %q", b)
	}
	if l, err := os.Readlink(filepath.Join(r.fd.Name(), "link")); err != nil || l != secret {
		t.Fatalf("the symlink changed: %q %v", l, err)
	}
}

func TestWriteIsAtomicAndLimited(t *testing.T) {
	r, _ := sandbox(t)
	n, err := r.Write("new/sub", "a.txt", strings.NewReader("hello"), 10)
	if err != nil || n != 5 {
		t.Fatalf("write: %d %v", n, err)
	}
	f, st, err := r.OpenFile("new/sub", "a.txt", 10)
	if err != nil || st.Size() != 5 {
		t.Fatalf("open: %v %v", st, err)
	}
	f.Close()
	if _, err := r.Write("data", "real.txt", strings.NewReader(strings.Repeat("x", 11)), 10); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
	page, err := r.List(context.Background(), "data", 0, 0)
	if err != nil || page.Truncated {
		t.Fatal(page, err)
	}
	entries := page.Entries
	if len(entries) != 1 || entries[0].Name != "real.txt" || entries[0].Size != 4 {
		t.Fatalf("after a failed write: %+v %v (the old file must stay, no temporary left)", entries, err)
	}
	all, _ := os.ReadDir(filepath.Join(r.fd.Name(), "data"))
	if len(all) != 1 {
		t.Fatalf("temporary files left: %v", all)
	}
	root, _ := r.List(context.Background(), ".", 0, 0)
	types := map[string]string{}
	for _, e := range root.Entries {
		types[e.Name] = e.Type
	}
	if types["link"] != "symlink" || types["dirlink"] != "symlink" || types["data"] != "directory" || types["new"] != "directory" {
		t.Fatalf("listing: %v", types)
	}
	if err := r.Remove("new/sub", "a.txt"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.OpenFile("new/sub", "a.txt", 10); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after remove: %v", err)
	}
}
