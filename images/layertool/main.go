// Command layertool builds the layers of a worker image that come after its root
// filesystem: it applies layer tars to a directory, and writes what an overlayfs upper
// directory holds as an OCI layer tar. Both jobs are containerd's own code (pkg/archive and
// continuity's overlay diff), so whiteouts, opaque directories, owners and xattrs come out
// the way containerd will read them back.
//
//	layertool apply DIR LAYER.tar...     unpack layers, in order, into DIR
//	layertool diff LOWER UPPER OUT.tar   the changes in UPPER (an overlayfs upperdir over LOWER)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/continuity/fs"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "layertool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx := context.Background()
	switch {
	case len(args) >= 3 && args[0] == "apply":
		for _, layer := range args[2:] {
			if err := apply(ctx, args[1], layer); err != nil {
				return err
			}
		}
		return nil
	case len(args) == 4 && args[0] == "diff":
		return diff(ctx, args[1], args[2], args[3])
	}
	return fmt.Errorf("usage: layertool apply DIR LAYER.tar... | layertool diff LOWER UPPER OUT.tar")
}

func apply(ctx context.Context, dir, layer string) error {
	f, err := os.Open(layer)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := archive.Apply(ctx, dir, f); err != nil {
		return fmt.Errorf("apply %s to %s: %w", layer, dir, err)
	}
	return nil
}

// diff writes OUT atomically: a partial tar must never pass for a cached layer.
func diff(ctx context.Context, lower, upper, out string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".layer-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	cw := archive.NewChangeWriter(tmp, upper)
	if err := fs.DiffDirChanges(ctx, lower, upper, fs.DiffSourceOverlayFS, cw.HandleChange); err != nil {
		return fmt.Errorf("diff %s over %s: %w", upper, lower, err)
	}
	if err := cw.Close(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
