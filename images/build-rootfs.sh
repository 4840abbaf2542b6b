#!/bin/sh
# Builds the base root filesystem of a worker image as a tar, from Debian packages, with
# mmdebstrap, from the mirror in the host's apt sources (no mirror host is named in this project).
# usage: build-rootfs.sh OUT.tar PACKAGES_FILE...
set -eu
out=$1
shift
# The images' Debian release is the recipe's choice, not the host's: trixie's Node.js 20 is
# supported upstream (bookworm's 18 is not) and its Python is 3.13.
suite=trixie

# The mirror is the host's: its active apt source files, with the host's release names
# (bookworm, bookworm-updates, bookworm-security) changed to $suite. mmdebstrap pastes a
# MIRROR argument that is an existing file into the chroot's sources (deb822 when the name
# ends in .sources).
host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$host" ] || { echo "build-rootfs: /etc/os-release names no Debian release" >&2; exit 1; }
srcdir=$(mktemp -d)
trap 'rm -rf "$srcdir"' EXIT
sources=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] || continue
	grep -Eq "(^|[[:space:]])$host(-updates|-security)?([[:space:]]|\$)" "$f" || continue
	copy="$srcdir/$(basename "$f")"
	sed -E "/^(Suites:|deb(-src)?[[:space:]])/ s/\b$host(-updates|-security|-backports)?\b/$suite\1/g" "$f" >"$copy"
	sources="$sources $copy"
done
[ -n "$sources" ] || { echo "build-rootfs: no apt source for $host on this host to take the mirror from" >&2; exit 1; }

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
