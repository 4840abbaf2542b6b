// Command packer writes a worker image as an OCI image archive (the layout of the OCI image
// spec, in one tar) that containerd imports or pushes: no Docker involved.
//
// Each layer is either an existing tar (the root filesystem mmdebstrap made) or a directory
// of the project's own files. Layers are compressed with zstd; the manifest records the
// digest of each compressed blob and the image config the diff_id of each uncompressed tar.
//
//	packer -config images/slim/config.json -ref codebox.local/worker:slim-abc \
//	    -layer-tar rootfs.tar -layer-dir staging/ -o worker.oci.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		tars, dirs listFlag
		cfgPath    = flag.String("config", "", "JSON file with the image's run config (OCI ImageConfig)")
		ref        = flag.String("ref", "", "image reference recorded in the archive, e.g. codebox.local/worker:slim")
		out        = flag.String("o", "", "output archive path")
	)
	flag.Var(&tars, "layer-tar", "a tar file to use as the next layer (repeatable)")
	flag.Var(&dirs, "layer-dir", "a directory to pack as the next layer (repeatable; after the -layer-tar layers)")
	flag.Parse()
	if *cfgPath == "" || *ref == "" || *out == "" || len(tars)+len(dirs) == 0 {
		fmt.Fprintln(os.Stderr, "usage: packer -config FILE -ref REF -o OUT (-layer-tar TAR | -layer-dir DIR)...")
		os.Exit(2)
	}
	var sources []layerSource
	for _, t := range tars {
		sources = append(sources, layerSource{tarPath: t})
	}
	for _, d := range dirs {
		sources = append(sources, layerSource{dir: d})
	}
	if err := pack(*cfgPath, *ref, sources, *out); err != nil {
		fmt.Fprintln(os.Stderr, "packer:", err)
		os.Exit(1)
	}
}
