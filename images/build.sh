#!/bin/bash
# Builds the worker image of a recipe unless the cache already holds it, and prints the
# environment entry that serves it (for codeboxd's --environments file) on stdout.
# usage: images/build.sh RECIPE_DIR OUT.oci.tar REF
#
# A recipe is a directory (docs/ENVIRONMENTS.md) of:
#   debian-packages   Debian packages of the root filesystem (mmdebstrap), required
#   customize.sh      optional: run as root in the image, with the recipe at its argument
#   npm-packages      optional: global npm packages (the image needs npm)
#   python-packages   optional: pip packages from PIP_INDEX_URL (the image needs python3-pip)
# Each becomes a layer of its own, cached by a hash of what goes into it (images/hash.sh):
# a change to the Python list rebuilds the Python layer alone. The agent is no part of an
# image: codeboxd mounts it into every worker.
set -eu
recipe=$(cd "$1" && pwd)
out=$2
ref=$3
here=$(cd "$(dirname "$0")" && pwd)
cache=$(dirname "$out")
name=$(basename "$recipe")
mkdir -p "$cache"
[[ $name =~ ^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$ ]] || { echo "image: the recipe's directory name $name is not an environment name (a-z 0-9 . _ -)" >&2; exit 2; }
[ -f "$recipe/debian-packages" ] || { echo "image: $recipe is not a recipe: no debian-packages" >&2; exit 2; }
case $out$ref in *[\"\\]*) echo "image: the archive's path and reference may not hold quotes or backslashes" >&2; exit 2 ;; esac
# Older builds of a name are the name, a dash and exactly 16 hex digits: another recipe's
# name with this one as a prefix is not one of them.
hex16='[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'

# has LIST: the recipe has a list file with at least one package.
has() { [ -f "$recipe/$1" ] && awk '!/^[[:space:]]*#/ && NF { found = 1 } END { exit !found }' "$recipe/$1"; }

entry() {
	printf '{"name": "%s", "image": "%s", "archive": "%s"}\n' "$name" "$ref" "$out"
}

if [ -s "$out" ]; then
	echo "image: $out is up to date" >&2
	entry
	exit 0
fi

# layer NAME HASH CMD ARGS...: makes $cache/NAME-HASH.tar by running CMD PATH ARGS... unless
# it is cached, drops older builds of NAME, and prints the path.
layer() {
	lname=$1
	path="$cache/$lname-$2.tar"
	cmd=$3
	shift 3
	if [ ! -s "$path" ]; then
		echo "image: building layer $path" >&2
		start=$(date +%s)
		"$cmd" "$path" "$@" >&2
		echo "image: layer $lname built in $(($(date +%s) - start)) s" >&2
		# Older recipes' layers of this name are dead weight now.
		find "$cache" -maxdepth 1 -name "$lname-$hex16.tar" ! -name "$(basename "$path")" -delete
	fi
	echo "$path"
}

hash() { "$here/hash.sh" "$recipe" "$1"; }
rootfs=$(layer "rootfs-$name" "$(hash base)" "$here/build-rootfs.sh" "$recipe/debian-packages")
layers=(-layer-tar "$rootfs")
below=("$rootfs")
stage() { # stage LAYER SCRIPT
	local path
	path=$(layer "layer-$name-$1" "$(hash "$1")" "$here/build-stage.sh" "$2" "$recipe" "${below[@]}")
	layers+=(-layer-tar "$path")
	below+=("$path")
}
[ ! -f "$recipe/customize.sh" ] || stage customize "$recipe/customize.sh"
! has npm-packages || stage npm "$here/stage-npm.sh"
! has python-packages || stage python "$here/stage-python.sh"

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
# What the image was made from, for whoever looks (images/capabilities.py reads the lists).
mkdir -p "$staging/opt/codebox/recipe"
cp -r "$recipe/." "$staging/opt/codebox/recipe/"
chmod -R u=rwX,go=rX "$staging"
env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/home/sandbox", "LANG=C.UTF-8"'
! has npm-packages || env="$env, \"NODE_PATH=/usr/local/lib/node_modules\""
cat >"$staging.config.json" <<CONFIG
{"User": "1000:1000", "Env": [$env], "WorkingDir": "/sandbox",
 "Labels": {"org.opencontainers.image.title": "codebox worker ($name)"}}
CONFIG
trap 'rm -rf "$staging" "$staging.config.json"' EXIT

start=$(date +%s)
(cd "$here/.." && go run ./images/packer -config "$staging.config.json" -ref "$ref" \
	"${layers[@]}" -layer-dir "$staging" -o "$out") >&2
echo "image: packed $out ($(du -h "$out" | cut -f1)) in $(($(date +%s) - start)) s" >&2
# The image imported from an older archive serves on: codeboxd reads an archive only when
# the image is not in containerd yet.
find "$cache" -maxdepth 1 -name "worker-$name-$hex16.oci.tar" ! -name "$(basename "$out")" -delete
entry
