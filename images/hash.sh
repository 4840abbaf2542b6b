#!/bin/sh
# Prints the cache key of a worker image or of one of its layers: a hash of every recipe
# file that goes into it, so each layer is rebuilt only when something under it changed.
# usage: images/hash.sh VARIANT [base|npm|python]
#   base:   the root filesystem (package lists, build-rootfs.sh)
#   npm:    full only, the global npm packages over base
#   python: full only, the Python libraries over npm
#   (none): the whole image: every layer, the agent, the image's files, the packer
set -eu
cd "$(dirname "$0")"
variant=$1
case $variant in
slim) base="build-rootfs.sh slim/packages" ;;
full) base="build-rootfs.sh slim/packages full/packages" ;;
*) echo "hash.sh: unknown variant $variant" >&2; exit 2 ;;
esac
npm="$base build-stage.sh layertool/main.go full/stage-npm.sh full/npm-packages"
python="$npm full/stage-python.sh full/python-packages full/pypi-packages"
case ${2:-} in
base) files=$base ;;
npm) files=$npm ;;
python) files=$python ;;
*) files="build-rootfs.sh build.sh hash.sh $(find "$variant" rootfs agent packer -type f -not -name '*_test.go' -not -name 'test_*' -not -name '*.pyc' | LC_ALL=C sort)"
   [ "$variant" = full ] && files="$python $files" ;;
esac
# shellcheck disable=SC2086
sha256sum $files | sha256sum | cut -c1-16
