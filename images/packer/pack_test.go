package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestPackWritesAValidOCIArchive(t *testing.T) {
	dir := t.TempDir()
	// A base layer as mmdebstrap would give it: a tar.
	var base bytes.Buffer
	tw := tar.NewWriter(&base)
	tw.WriteHeader(&tar.Header{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "./etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("base\n"))
	tw.Close()
	basePath := filepath.Join(dir, "base.tar")
	os.WriteFile(basePath, base.Bytes(), 0o644)
	// An overlay directory.
	overlay := filepath.Join(dir, "overlay")
	os.MkdirAll(filepath.Join(overlay, "opt/codebox"), 0o755)
	os.WriteFile(filepath.Join(overlay, "opt/codebox/agent.py"), []byte("print('hi')\n"), 0o644)
	os.Symlink("agent.py", filepath.Join(overlay, "opt/codebox/link.py"))
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"User":"1000:1000","Cmd":["/bin/true"],"WorkingDir":"/sandbox"}`), 0o644)

	out := filepath.Join(dir, "img.oci.tar")
	src := []layerSource{{tarPath: basePath}, {dir: overlay}}
	if err := pack(cfg, "codebox.local/worker:test", src, out); err != nil {
		t.Fatal(err)
	}

	files := readTar(t, out)
	for name, data := range files {
		if strings.HasPrefix(name, "blobs/sha256/") {
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != strings.TrimPrefix(name, "blobs/sha256/") {
				t.Errorf("blob %s has digest %x", name, sum)
			}
		}
	}
	var index ocispec.Index
	mustJSON(t, files["index.json"], &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != "codebox.local/worker:test" ||
		index.Manifests[0].Annotations[ocispec.AnnotationRefName] != "test" {
		t.Fatalf("index = %+v", index)
	}
	var man ocispec.Manifest
	mustJSON(t, files[blobPath(index.Manifests[0].Digest)], &man)
	var img ocispec.Image
	mustJSON(t, files[blobPath(man.Config.Digest)], &img)
	if img.Config.User != "1000:1000" || img.Config.WorkingDir != "/sandbox" || img.OS != "linux" {
		t.Fatalf("config = %+v", img)
	}
	if len(man.Layers) != 2 || len(img.RootFS.DiffIDs) != 2 {
		t.Fatalf("layers %d, diff_ids %d", len(man.Layers), len(img.RootFS.DiffIDs))
	}
	for i, l := range man.Layers {
		compressed := files[blobPath(l.Digest)]
		if int64(len(compressed)) != l.Size || l.MediaType != ocispec.MediaTypeImageLayerZstd {
			t.Fatalf("layer %d: size %d vs %d, type %s", i, len(compressed), l.Size, l.MediaType)
		}
		dec, err := zstd.NewReader(bytes.NewReader(compressed))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(dec)
		dec.Close()
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(plain); "sha256:"+hex.EncodeToString(sum[:]) != img.RootFS.DiffIDs[i].String() {
			t.Fatalf("layer %d diff_id mismatch", i)
		}
		if i == 0 && !bytes.Equal(plain, base.Bytes()) {
			t.Fatalf("base layer altered")
		}
		if i == 1 {
			entries := readTarBytes(t, plain)
			if string(entries["opt/codebox/agent.py"]) != "print('hi')\n" {
				t.Fatalf("overlay layer entries: %v", keys(entries))
			}
		}
	}

	// Same directory, same layer: the overlay's digest does not depend on file times.
	later := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(overlay, "opt/codebox/agent.py"), later, later)
	out2 := filepath.Join(dir, "img2.oci.tar")
	if err := pack(cfg, "codebox.local/worker:test", src, out2); err != nil {
		t.Fatal(err)
	}
	var index2 ocispec.Index
	files2 := readTar(t, out2)
	mustJSON(t, files2["index.json"], &index2)
	var man2 ocispec.Manifest
	mustJSON(t, files2[blobPath(index2.Manifests[0].Digest)], &man2)
	if man2.Layers[1].Digest != man.Layers[1].Digest {
		t.Fatalf("overlay layer not reproducible")
	}
}

func TestRefTag(t *testing.T) {
	for ref, want := range map[string]string{
		"codebox.local/worker:slim-abc": "slim-abc",
		"localhost:5000/worker":         "latest",
		"worker:1":                      "1",
	} {
		if got := refTag(ref); got != want {
			t.Errorf("refTag(%q) = %q, want %q", ref, got, want)
		}
	}
}

func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return readTarBytes(t, b)
}

func readTarBytes(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out[h.Name] = data
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %q", err, b)
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}
