package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// A real overlayfs: changes made through it come out as a layer that, applied to the
// lower tree, gives the merged tree, deletions included.
func TestDiffOfOverlayAppliesBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount overlayfs")
	}
	tmp := t.TempDir()
	lower, upper, work, merged := filepath.Join(tmp, "lower"), filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"), filepath.Join(tmp, "merged")
	for _, d := range []string{lower, upper, work, merged, filepath.Join(lower, "d"), filepath.Join(lower, "gone")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(lower, "kept"), "same")
	write(t, filepath.Join(lower, "changed"), "old")
	write(t, filepath.Join(lower, "d", "x"), "deleted")
	write(t, filepath.Join(lower, "d", "y"), "stays")
	write(t, filepath.Join(lower, "gone", "z"), "whole directory removed")

	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(merged, unix.MNT_DETACH)
		}
	})
	write(t, filepath.Join(merged, "changed"), "new")
	write(t, filepath.Join(merged, "added"), "fresh")
	must(t, os.Remove(filepath.Join(merged, "d", "x")))
	must(t, os.RemoveAll(filepath.Join(merged, "gone")))
	must(t, unix.Unmount(merged, 0))
	mounted = false

	out := filepath.Join(tmp, "layer.tar")
	must(t, run([]string{"diff", lower, upper, out}))
	names := tarNames(t, out)
	for _, want := range []string{"changed", "added", "d/.wh.x", ".wh.gone"} {
		if !slices.Contains(names, want) {
			t.Errorf("layer lacks %s: %v", want, names)
		}
	}
	if slices.Contains(names, "kept") {
		t.Errorf("layer carries an unchanged file: %v", names)
	}

	// Applied to a copy of the lower tree, the layer gives what the overlay showed.
	target := filepath.Join(tmp, "target")
	must(t, os.CopyFS(target, os.DirFS(lower)))
	must(t, run([]string{"apply", target, out}))
	for path, want := range map[string]string{"kept": "same", "changed": "new", "added": "fresh", "d/y": "stays"} {
		if got, err := os.ReadFile(filepath.Join(target, path)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	for _, path := range []string{"d/x", "gone"} {
		if _, err := os.Lstat(filepath.Join(target, path)); !os.IsNotExist(err) {
			t.Errorf("%s survived the layer: %v", path, err)
		}
	}
}

func TestUsage(t *testing.T) {
	if err := run([]string{"diff", "only-one"}); err == nil {
		t.Fatal("a short diff command was accepted")
	}
	if err := run([]string{"apply", t.TempDir(), filepath.Join(t.TempDir(), "missing.tar")}); err == nil {
		t.Fatal("a missing layer was applied")
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(s), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tarNames(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, filepath.Clean(h.Name))
	}
}
