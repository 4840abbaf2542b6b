#!/bin/sh
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
set -eu
recipe=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$recipe/debian-packages" ] || { echo "hash.sh: $1 is not a recipe: no debian-packages" >&2; exit 2; }
# The recipe's files (names relative to it, so the key does not depend on where it is).
files() { (cd "$recipe" && find . -type f "$@" -not -name '*.pyc' | LC_ALL=C sort); }
base=$( { (cd "$here" && sha256sum build-rootfs.sh apt-sources.sh); (cd "$recipe" && sha256sum ./debian-packages); } | sha256sum | cut -c1-16)
customize=$( { echo "$base"; (cd "$here" && sha256sum build-stage.sh layertool/main.go)
	# shellcheck disable=SC2046 # names without spaces
	(cd "$recipe" && sha256sum $(files -not -name npm-packages -not -name python-packages)); } | sha256sum | cut -c1-16)
npm=$( { echo "$customize"; (cd "$here" && sha256sum stage-npm.sh); [ ! -f "$recipe/npm-packages" ] || (cd "$recipe" && sha256sum ./npm-packages); } | sha256sum | cut -c1-16)
python=$( { echo "$npm"; (cd "$here" && sha256sum stage-python.sh); [ ! -f "$recipe/python-packages" ] || (cd "$recipe" && sha256sum ./python-packages); } | sha256sum | cut -c1-16)
case ${2:-} in
base) echo "$base" ;;
customize) echo "$customize" ;;
npm) echo "$npm" ;;
python) echo "$python" ;;
"")
	# shellcheck disable=SC2046 # names without spaces
	{ echo "$python"; (cd "$here" && sha256sum build.sh hash.sh $(find packer -type f -name '*.go' -not -name '*_test.go' | LC_ALL=C sort)); } | sha256sum | cut -c1-16 ;;
*) echo "hash.sh: unknown layer $2" >&2; exit 2 ;;
esac
