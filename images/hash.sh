#!/bin/bash
# Prints the cache key of a recipe's image or of one of its layers: a hash of every file that
# goes into it, so each layer is rebuilt only when something under it changed. A recipe is
# a directory (docs/ENVIRONMENTS.md): debian-packages, and optionally customize.sh (with any
# files it reads), npm-packages, python-packages.
# usage: images/hash.sh RECIPE_DIR [base|customize|npm|python]
#   base:      the root filesystem (debian-packages, build-rootfs.sh)
#   customize: base and the recipe's other files but its npm and Python lists
#   npm:       customize and npm-packages
#   python:    npm and python-packages
#   (none):    the whole image: every layer, the builder and the packer
set -euo pipefail
recipe=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$recipe/debian-packages" ] || { echo "hash.sh: $1 is not a recipe: no debian-packages" >&2; exit 2; }

# sums DIR FIND_ARGS...: the sha256 lines of DIR's files that find selects, by name relative
# to DIR (so a key does not depend on where the recipe is), in a stable order.
sums() {
	local dir=$1
	shift
	(cd "$dir" && find . "$@" -type f -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}
key() { sha256sum | cut -c1-16; }

base=$( { sums "$here" \( -path ./build-rootfs.sh -o -path ./apt-sources.sh \); sums "$recipe" -path ./debian-packages; } | key)
customize=$( { echo "$base"; sums "$here" \( -path ./build-stage.sh -o -path ./layertool/main.go \)
	sums "$here/.." \( -path ./go.mod -o -path ./go.sum \)
	sums "$recipe" -not -path ./npm-packages -not -path ./python-packages; } | key)
npm=$( { echo "$customize"; sums "$here" -path ./stage-npm.sh; sums "$recipe" -path ./npm-packages; } | key)
python=$( { echo "$npm"; sums "$here" -path ./stage-python.sh; sums "$recipe" -path ./python-packages; } | key)
case ${2:-} in
base) echo "$base" ;;
customize) echo "$customize" ;;
npm) echo "$npm" ;;
python) echo "$python" ;;
"") { echo "$python"; sums "$here" \( -path ./build.sh -o -path ./hash.sh -o \( -path './packer/*.go' -not -name '*_test.go' \) \); } | key ;;
*) echo "hash.sh: unknown layer $2" >&2; exit 2 ;;
esac
