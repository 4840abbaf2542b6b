#!/bin/bash
# Builds a worker image archive unless the cache already holds one for this recipe.
# usage: images/build.sh VARIANT OUT.oci.tar REF
# The root filesystem (the slow mmdebstrap step) and, for the full image, the npm and Python
# layers above it are cached separately, each keyed by the recipe files under it
# (images/hash.sh), so a change to the agent or the packer re-packs in seconds and a change
# to the Python list rebuilds only the Python layer.
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

# layer NAME HASH CMD ARGS...: makes $cache/NAME-HASH.tar by running CMD PATH ARGS... unless
# it is cached, drops older builds of NAME, and prints the path.
layer() {
	name=$1
	path="$cache/$name-$2.tar"
	cmd=$3
	shift 3
	if [ ! -s "$path" ]; then
		echo "image: building layer $path" >&2
		start=$(date +%s)
		"$cmd" "$path" "$@" >&2
		echo "image: layer $name built in $(($(date +%s) - start)) s" >&2
		# Older recipes' layers of this name are dead weight now.
		find "$cache" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$path")" -delete
	fi
	echo "$path"
}

packages="$here/slim/packages"
[ "$variant" = slim ] || packages="$packages $here/$variant/packages"
# shellcheck disable=SC2086 # paths without spaces
rootfs=$(layer "rootfs-$variant" "$("$here/hash.sh" "$variant" base)" "$here/build-rootfs.sh" $packages)
layers=(-layer-tar "$rootfs")
if [ "$variant" = full ]; then
	# Layers in the order of how often they change: system tools, npm globals, Python.
	npm=$(layer "layer-full-npm" "$("$here/hash.sh" full npm)" \
		"$here/build-stage.sh" "$here/full/stage-npm.sh" "$rootfs")
	python=$(layer "layer-full-python" "$("$here/hash.sh" full python)" \
		"$here/build-stage.sh" "$here/full/stage-python.sh" "$rootfs" "$npm")
	layers+=(-layer-tar "$npm" -layer-tar "$python")
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cp -a "$here/rootfs/." "$staging/"
mkdir -p "$staging/opt/codebox"
cp "$here/agent/codebox_agent.py" "$here/agent/codebox_languages.py" "$here/agent/codebox_js.js" "$staging/opt/codebox/"
chmod -R u=rwX,go=rX "$staging"

start=$(date +%s)
(cd "$here/.." && go run ./images/packer -config "$here/$variant/config.json" -ref "$ref" \
	"${layers[@]}" -layer-dir "$staging" -o "$out")
echo "image: packed $out ($(du -h "$out" | cut -f1)) in $(($(date +%s) - start)) s" >&2
find "$cache" -maxdepth 1 -name "worker-$variant-*.oci.tar" ! -name "$(basename "$out")" -delete
