#!/bin/sh
# Prints the cache key of a worker image: a hash of every file of its recipe.
# usage: images/hash.sh VARIANT [base]
#   base: only what the root filesystem depends on (package list, build-rootfs.sh)
set -eu
cd "$(dirname "$0")"
variant=$1
if [ "${2:-}" = base ]; then
	files="build-rootfs.sh $variant/packages"
else
	files="build-rootfs.sh build.sh hash.sh $(find "$variant" rootfs agent/codebox_agent.py packer -type f -not -name '*_test.go' | LC_ALL=C sort)"
fi
# shellcheck disable=SC2086
sha256sum $files | sha256sum | cut -c1-16
