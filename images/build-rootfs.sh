#!/bin/sh
# Builds the base root filesystem of a worker image as a tar, from Debian packages, with
# mmdebstrap and the host's own apt sources (no mirror host is named in this project).
# usage: build-rootfs.sh OUT.tar PACKAGES_FILE...
set -eu
out=$1
shift
suite=bookworm

# The host's active Debian source files for $suite. mmdebstrap pastes a MIRROR argument that
# is an existing file into the chroot's sources list.
sources=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] || continue
	if grep -Eq "(^|[[:space:]])$suite(-updates|-security)?([[:space:]]|\$)" "$f"; then
		sources="$sources $f"
	fi
done
[ -n "$sources" ] || { echo "build-rootfs: no apt source for $suite on this host" >&2; exit 1; }

include=$(cat "$@" | grep -v '^#' | grep -v '^[[:space:]]*$' | sort -u | paste -sd, -)

tmp="$out.partial"
rm -f "$tmp"
# shellcheck disable=SC2086 # $sources is a list of paths without spaces
# shellcheck disable=SC2016 # the hooks' "$1" is the tree, expanded by mmdebstrap
mmdebstrap --variant=minbase --mode=root --format=tar \
	--aptopt='APT::Install-Recommends "false"' \
	--include="$include" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/include/boost/*' \
	--customize-hook='chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/bash sandbox' \
	--customize-hook='mkdir -p "$1/sandbox" && chown 1000:1000 "$1/sandbox"' \
	--customize-hook='mkdir -p "$1/opt/codebox/mplcache" && chroot "$1" env MPLCONFIGDIR=/opt/codebox/mplcache MPLBACKEND=agg python3 -c "import matplotlib.pyplot"' \
	--customize-hook='rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/* "$1/var/log"/*' \
	"$suite" "$tmp" $sources
mv "$tmp" "$out"
