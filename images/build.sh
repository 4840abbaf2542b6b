#!/bin/sh
# Builds a worker image archive unless the cache already holds one for this recipe.
# usage: images/build.sh VARIANT OUT.oci.tar REF
# The root filesystem (the slow mmdebstrap step) is cached separately, keyed by the package
# list only, so a change to the agent or the packer re-packs in seconds.
set -eu
variant=$1
out=$2
ref=$3
here=$(cd "$(dirname "$0")" && pwd)
cache=$(dirname "$out")
mkdir -p "$cache"

if [ -s "$out" ]; then
	echo "image: $out is up to date" >&2
	exit 0
fi

base_hash=$("$here/hash.sh" "$variant" base)
rootfs="$cache/rootfs-$variant-$base_hash.tar"
if [ ! -s "$rootfs" ]; then
	echo "image: building root filesystem $rootfs (mmdebstrap, a few minutes)" >&2
	start=$(date +%s)
	"$here/build-rootfs.sh" "$here/$variant/packages" "$rootfs"
	echo "image: root filesystem built in $(($(date +%s) - start)) s" >&2
	# Root filesystems of older recipes of this variant are dead weight now.
	find "$cache" -maxdepth 1 -name "rootfs-$variant-*.tar" ! -name "$(basename "$rootfs")" -delete
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cp -a "$here/rootfs/." "$staging/"
mkdir -p "$staging/opt/codebox"
cp "$here/agent/codebox_agent.py" "$staging/opt/codebox/"
chmod -R u=rwX,go=rX "$staging"

start=$(date +%s)
(cd "$here/.." && go run ./images/packer -config "$here/$variant/config.json" -ref "$ref" \
	-layer-tar "$rootfs" -layer-dir "$staging" -o "$out")
echo "image: packed $out ($(du -h "$out" | cut -f1)) in $(($(date +%s) - start)) s" >&2
find "$cache" -maxdepth 1 -name "worker-$variant-*.oci.tar" ! -name "$(basename "$out")" -delete
