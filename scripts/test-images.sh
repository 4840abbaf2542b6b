#!/bin/bash
# Builds the images the end-to-end tests bring as their own (cached by a hash of this
# script and the packer), and prints them as KEY=archive lines for the tests' environment:
#   CODEBOX_E2E_BYO_ARCHIVE        Debian trixie with python3 and python3-ipython, nothing else:
#                                  no codebox file, no sandbox user, no entrypoint
#   CODEBOX_E2E_NOIPYTHON_ARCHIVE  the same without IPython (a layer that deletes it)
#   CODEBOX_E2E_NOPYTHON_ARCHIVE   the same without python3 on the PATH
# Each archive's reference is codebox.local/e2e-<name>:<hash>.
# usage: scripts/test-images.sh CACHE_DIR
set -eu
cache=$1
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2046 # paths without spaces
hash=$(cd "$root" && sha256sum scripts/test-images.sh images/apt-sources.sh $(find images/packer -name '*.go' -not -name '*_test.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)
mkdir -p "$cache"
rootfs="$cache/rootfs-e2e-byo-$hash.tar"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -s "$rootfs" ]; then
	echo "test-images: building $rootfs" >&2
	mkdir "$work/sources"
	list=$("$root/images/apt-sources.sh" trixie "$work/sources")
	mapfile -t sources <<<"$list"
	# shellcheck disable=SC2016 # the hook's "$1" is the tree, expanded by mmdebstrap
	mmdebstrap --variant=minbase --mode=root --format=tar --aptopt='APT::Install-Recommends "false"' \
		--include=python3,python3-ipython --dpkgopt='path-exclude=/usr/share/doc/*' \
		--customize-hook='rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/* "$1/var/log"/*' \
		trixie "$rootfs.partial" "${sources[@]}" >&2
	mv "$rootfs.partial" "$rootfs"
	find "$cache" -maxdepth 1 -name 'rootfs-e2e-byo-*.tar' ! -name "$(basename "$rootfs")" -delete
fi

# pack NAME [WHITEOUT...]: the rootfs, and a layer deleting each WHITEOUT path.
pack() {
	local name=$1 out="$cache/e2e-$1-$hash.oci.tar"
	shift
	if [ ! -s "$out" ]; then
		local args=(-layer-tar "$rootfs")
		if [ $# -gt 0 ]; then
			local dir="$work/$name"
			for p in "$@"; do
				mkdir -p "$dir/$(dirname "$p")"
				: >"$dir/$(dirname "$p")/.wh.$(basename "$p")"
			done
			args+=(-layer-dir "$dir")
		fi
		echo '{"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}' >"$work/config.json"
		(cd "$root" && go run ./images/packer -config "$work/config.json" -ref "codebox.local/e2e-$name:$hash" "${args[@]}" -o "$out.partial") >&2
		mv "$out.partial" "$out"
		find "$cache" -maxdepth 1 -name "e2e-$name-*.oci.tar" ! -name "$(basename "$out")" -delete
	fi
	echo "$out"
}
echo "CODEBOX_E2E_BYO_ARCHIVE=$(pack byo)"
echo "CODEBOX_E2E_NOIPYTHON_ARCHIVE=$(pack noipython usr/lib/python3/dist-packages/IPython)"
echo "CODEBOX_E2E_NOPYTHON_ARCHIVE=$(pack nopython usr/bin/python3)"
