package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// Image is the worker image, ready to make workers from.
type Image struct{ img client.Image }

// Name is the image's reference.
func (i *Image) Name() string { return i.img.Name() }

// EnsureImage makes sure ref is in the namespace and unpacked, and returns it: present, it
// is used; absent with an archive, the archive is imported (Import + Unpack: the Transfer
// API does not exist on containerd 1.6); absent otherwise, it is pulled.
func (r *Runtime) EnsureImage(ctx context.Context, ref, archive string, log *slog.Logger) (*Image, error) {
	img, err := r.client.GetImage(ctx, ref)
	switch {
	case err == nil:
		log.Info("worker image present", "ref", ref)
	case !errdefs.IsNotFound(err):
		return nil, fmt.Errorf("look up image %s: %w", ref, err)
	case archive != "":
		start := time.Now()
		if img, err = r.importArchive(ctx, ref, archive); err != nil {
			return nil, err
		}
		log.Info("worker image imported", "ref", ref, "archive", archive, "duration", time.Since(start))
	default:
		start := time.Now()
		if img, err = r.pull(ctx, ref); err != nil {
			return nil, err
		}
		log.Info("worker image pulled", "ref", ref, "duration", time.Since(start))
	}
	unpacked, err := img.IsUnpacked(ctx, Snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check unpack of %s: %w", ref, err)
	}
	if !unpacked {
		start := time.Now()
		if err := img.Unpack(ctx, Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", ref, err)
		}
		log.Info("worker image unpacked", "ref", ref, "duration", time.Since(start))
	}
	return &Image{img}, nil
}

func (r *Runtime) importArchive(ctx context.Context, ref, archive string) (client.Image, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, fmt.Errorf("open image archive: %w", err)
	}
	defer f.Close()
	imported, err := r.client.Import(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", archive, err)
	}
	for _, im := range imported {
		if im.Name == ref {
			return client.NewImage(r.client, im), nil
		}
	}
	// An archive of exactly one image may be named differently from the flag (an operator
	// re-tagging); name it as asked rather than fail.
	if len(imported) != 1 {
		names := make([]string, 0, len(imported))
		for _, im := range imported {
			names = append(names, im.Name)
		}
		return nil, fmt.Errorf("archive %s holds images %v, not %s", archive, names, ref)
	}
	im := images.Image{Name: ref, Target: imported[0].Target}
	created, err := r.client.ImageService().Create(ctx, im)
	if err != nil {
		return nil, fmt.Errorf("name imported image %s: %w", ref, err)
	}
	return client.NewImage(r.client, created), nil
}

// resolver reaches registries: plain HTTP on loopback (tests, a local mirror), TLS elsewhere.
func resolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
}

func (r *Runtime) pull(ctx context.Context, ref string) (client.Image, error) {
	img, err := r.client.Pull(ctx, ref, client.WithResolver(resolver()), client.WithPullUnpack,
		client.WithPullSnapshotter(Snapshotter))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// Push pushes the image ref in this namespace to a registry as target (a loopback registry
// in the tests).
func (r *Runtime) Push(ctx context.Context, ref, target string) error {
	img, err := r.client.GetImage(ctx, ref)
	if err != nil {
		return fmt.Errorf("look up image %s: %w", ref, err)
	}
	if err := r.client.Push(ctx, target, img.Target(), client.WithResolver(resolver())); err != nil {
		return fmt.Errorf("push %s as %s: %w", ref, target, err)
	}
	return nil
}

// PruneOthers deletes every image of the namespace but keep (the worker images of earlier
// recipes), letting containerd collect their content and snapshots.
func (r *Runtime) PruneOthers(ctx context.Context, keep string) ([]string, error) {
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var deleted []string
	for _, img := range imgs {
		if img.Name == keep {
			continue
		}
		if err := r.client.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()); err != nil {
			return deleted, fmt.Errorf("delete image %s: %w", img.Name, err)
		}
		deleted = append(deleted, img.Name)
	}
	return deleted, nil
}
