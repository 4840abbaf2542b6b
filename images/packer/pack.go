package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// epoch is the timestamp of files packed from directories, so that the same recipe gives
// the same layer digest.
var epoch = time.Unix(0, 0).UTC()

type layerSource struct {
	tarPath string // an existing tar, used as it is
	dir     string // or a directory, packed as root-owned files
}

type blob struct {
	desc   ocispec.Descriptor
	diffID digest.Digest // of the uncompressed content; layers only
	path   string        // where the compressed content waits to go into the archive
}

func pack(cfgPath, ref string, sources []layerSource, out string) error {
	var runCfg ocispec.ImageConfig
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := json.Unmarshal(raw, &runCfg); err != nil {
		return fmt.Errorf("parse config %s: %w", cfgPath, err)
	}

	work, err := os.MkdirTemp(filepath.Dir(out), ".packer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var layers []blob
	for i, src := range sources {
		l, err := writeLayer(src, work)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		layers = append(layers, l)
	}

	created := time.Now().UTC()
	img := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   runCfg,
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	for _, l := range layers {
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, l.diffID)
	}
	cfgBlob, cfgDesc, err := jsonBlob(ocispec.MediaTypeImageConfig, img)
	if err != nil {
		return err
	}

	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
	}
	for _, l := range layers {
		manifest.Layers = append(manifest.Layers, l.desc)
	}
	manBlob, manDesc, err := jsonBlob(ocispec.MediaTypeImageManifest, manifest)
	if err != nil {
		return err
	}
	manDesc.Platform = &img.Platform
	manDesc.Annotations = map[string]string{
		// containerd names the imported image after this annotation.
		images.AnnotationImageName: ref,
		ocispec.AnnotationRefName:  refTag(ref),
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manDesc},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}

	tmp := out + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layoutJSON},
		{ocispec.ImageIndexFile, indexJSON},
		{blobPath(cfgDesc.Digest), cfgBlob},
		{blobPath(manDesc.Digest), manBlob},
	} {
		if err := writeTarFile(tw, e.name, int64(len(e.data)), strings.NewReader(string(e.data))); err != nil {
			return err
		}
	}
	for _, l := range layers {
		if err := copyBlob(tw, l); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// refTag is the tag part of a reference ("slim" of "codebox.local/worker:slim").
func refTag(ref string) string {
	if i := strings.LastIndexAny(ref, ":/"); i >= 0 && ref[i] == ':' {
		return ref[i+1:]
	}
	return "latest"
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

func jsonBlob(mediaType string, v any) ([]byte, ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	return b, ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}, nil
}

// writeLayer compresses one layer into work, hashing the uncompressed stream (diff_id) and
// the compressed one (digest) in the same pass.
func writeLayer(src layerSource, work string) (blob, error) {
	f, err := os.CreateTemp(work, "layer-")
	if err != nil {
		return blob{}, err
	}
	defer f.Close()
	compressed := sha256.New()
	counter := &countWriter{}
	enc, err := zstd.NewWriter(io.MultiWriter(f, compressed, counter),
		zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(runtime.NumCPU()))
	if err != nil {
		return blob{}, err
	}
	uncompressed := sha256.New()
	w := io.MultiWriter(enc, uncompressed)
	if src.tarPath != "" {
		in, err := os.Open(src.tarPath)
		if err != nil {
			return blob{}, err
		}
		_, err = io.Copy(w, in)
		in.Close()
		if err != nil {
			return blob{}, fmt.Errorf("compress %s: %w", src.tarPath, err)
		}
	} else if err := tarDir(src.dir, w); err != nil {
		return blob{}, fmt.Errorf("pack %s: %w", src.dir, err)
	}
	if err := enc.Close(); err != nil {
		return blob{}, err
	}
	return blob{
		desc: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerZstd,
			Digest:    digest.NewDigest(digest.SHA256, compressed),
			Size:      counter.n,
		},
		diffID: digest.NewDigest(digest.SHA256, uncompressed),
		path:   f.Name(),
	}, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// tarDir writes dir's tree as a tar whose files are owned by root, with fixed timestamps and
// in lexical order, so the same tree always gives the same bytes.
func tarDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if d.Type()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func writeTarFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	hdr := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := io.Copy(tw, r); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func copyBlob(tw *tar.Writer, b blob) error {
	f, err := os.Open(b.path)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeTarFile(tw, blobPath(b.desc.Digest), b.desc.Size, f)
}
